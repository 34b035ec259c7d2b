/**
 * `typing`: `{"action":"typing"}` posts `{"type":"typing","room","from":{"name"}}` to the other
 * members of the caller's room. Ephemeral: never stored, never acknowledged, never answered.
 * One signal per connection per TYPING_INTERVAL_MS passes (a conditional write on the caller's
 * record, which also proves the caller is registered); the surplus, and every signal in a room
 * above the presence limit, is dropped silently: a late or missing "is typing" harms nobody, and
 * in a big room each signal would cost one post per member.
 */
import { memberBroadcast, onePage } from "./shared/broadcaster";
import { timeBudget } from "./shared/budget";
import { connectionsStoreFromEnv } from "./shared/connections";
import { ENV, RANGES, requireEnv, requireIntEnv } from "./shared/env";
import { describeError } from "./shared/errors";
import type { WebSocketEvent, WebSocketHandler } from "./shared/events";
import { log } from "./shared/log";
import { createManagement } from "./shared/management";
import { typingFrame } from "./shared/protocol";

/** Posts in flight at once: a room here is at most the presence limit. */
const TYPING_CONCURRENCY = 16;

function dropped(connectionId: string, requestId: string, outcome: "too_soon" | "over_presence_limit") {
  log("info", "typing", { connectionId, requestId, outcome });
  return { statusCode: 200 };
}

export function typingHandlerFactory(): WebSocketHandler<WebSocketEvent> {
  const store = connectionsStoreFromEnv();
  const intervalMs = requireIntEnv(ENV.typingIntervalMs, RANGES.typingIntervalMs.min, RANGES.typingIntervalMs.max);
  const limit = requireIntEnv(ENV.presenceLimit, RANGES.presenceLimit.min, RANGES.presenceLimit.max);
  const deliverToMembers = memberBroadcast(createManagement(requireEnv(ENV.managementEndpoint), TYPING_CONCURRENCY), TYPING_CONCURRENCY, store);

  return async (event, context) => {
    const started = Date.now();
    const time = timeBudget(context, started);
    const { connectionId } = event.requestContext;
    try {
      const caller = await time.step("the typing limit", store.allowTyping(connectionId, started, intervalMs));
      // Dropped: too soon after the last one, or not registered. One line each: a page sends at most one per interval.
      if (!caller) return dropped(connectionId, context.awsRequestId, "too_soon");
      // One page of at most limit + 1 connections: more than the limit means a big room, dropped.
      const first = await time.step("reading the room", store.roomMembers(caller.room, limit + 1).next());
      const members = first.done ? [] : first.value;
      if (members.length > limit) return dropped(connectionId, context.awsRequestId, "over_presence_limit");
      const stats = await time.step("posting", deliverToMembers(onePage(members), connectionId, typingFrame(caller.room, caller.name), time.deadline));
      log("info", "typing", { connectionId, requestId: context.awsRequestId, outcome: "sent", room: caller.room, ...stats, ms: Date.now() - started });
    } catch (err) {
      // Ephemeral: nobody waits for it, nothing is owed. Logged for the operator only.
      log("warn", "typing not delivered", { connectionId, requestId: context.awsRequestId, error: describeError(err) });
    }
    return { statusCode: 200 };
  };
}
