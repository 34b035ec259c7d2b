/**
 * `members`: `{"action":"members","after":<name>?}` answers the caller's room's members, sorted by
 * name, with how many connections each holds, `MEMBERS_PAGE` names a frame (`next` names where the
 * next page starts). The names come from the room index itself (keyed by room and name), so no
 * second projection has to be kept in step. A room above the presence limit answers with a count
 * of connections only (`members: null`): listing it costs a read per connection per request.
 */
import { connectionsStoreFromEnv } from "./shared/connections";
import { callerRoute } from "./shared/caller";
import { ENV, RANGES, requireIntEnv } from "./shared/env";
import type { WebSocketEvent, WebSocketHandler } from "./shared/events";
import { MembersFrame, validateMembersRequest } from "./shared/protocol";

/** Names per members frame: 100 names of at most 32 characters stay far below one frame. */
export const MEMBERS_PAGE = 100;
/**
 * A big room is counted up to this many connections, reading at most READ_PER_LIVE times as many
 * index entries (connections.ts; expired records are read before they are filtered out): about 100
 * read units when none has expired (10,000 entries of about 85 bytes, keys and expiresAt, at 0.5
 * RCU per 4 KB), 200 at most.
 */
export const MEMBERS_COUNT_CAP = 10_000;

export function membersHandlerFactory(): WebSocketHandler<WebSocketEvent> {
  const limit = requireIntEnv(ENV.presenceLimit, RANGES.presenceLimit.min, RANGES.presenceLimit.max);
  return callerRoute("members", ["invalid_members"], (doc) => {
    const store = connectionsStoreFromEnv(doc);
    return async (caller, body, time) => {
      const { after } = validateMembersRequest(body);
      const { room } = caller;
      let frame: MembersFrame;
      if ((await time.step("counting the room", store.roomCount(room, limit + 1))) > limit) {
        // Counted up to MEMBERS_COUNT_CAP: a count that large means "at least", and costs a bounded read.
        frame = { type: "members", room, members: null, count: await time.step("counting the room", store.roomCount(room, MEMBERS_COUNT_CAP)), next: null };
      } else {
        frame = { type: "members", room, ...(await time.step("listing the room", store.roomNames(room, after, MEMBERS_PAGE))) };
      }
      return JSON.stringify(frame);
    };
  });
}
