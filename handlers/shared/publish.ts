/**
 * Fanning a stored event out to its room: what sendmessage (messages, edits, deletes) and presence
 * (joins, leaves) share. The room is read page by page from its index; the first chunk of members is
 * posted here, every further chunk is handed to `fanout` (shared/fanout.ts). An event that misses a
 * member live is still in history, so a fan-out failure is logged, never retried by the caller.
 */
import { memberBroadcast, onePage } from "./broadcaster";
import type { ConnectionsStore } from "./connections";
import { describeError } from "./errors";
import { createDispatch, SpreadStats, spread } from "./fanout";
import { log } from "./log";
import type { Management } from "./management";

export interface Publication {
  room: string;
  cursor: string;
  /** The frame, as every member receives it. */
  data: string;
  /** A connection not to post to (the sender), or "" for none. */
  exclude: string;
  /** Epoch ms after which no post starts (the caller's time budget). */
  until: number;
  requestId: string;
}

export type Publish = (publication: Publication) => Promise<SpreadStats>;

export interface PublishOptions {
  store: Pick<ConnectionsStore, "roomMembers" | "removeStale">;
  management: Management;
  concurrency: number;
  chunkSize: number;
  fanoutFunction: string;
  region: string;
}

export function createPublish(options: PublishOptions): Publish {
  const deliverToMembers = memberBroadcast(options.management, options.concurrency, options.store);
  const dispatch = createDispatch(options.fanoutFunction, options.region);
  return ({ room, cursor, data, exclude, until, requestId }) =>
    spread({
      pages: options.store.roomMembers(room),
      exclude,
      room,
      cursor,
      data,
      chunkSize: options.chunkSize,
      // No post starts after the budget: a fan-out cut short must not go on posting in the background.
      deliver: (ids) => deliverToMembers(onePage(ids), exclude, data, until),
      dispatch,
      onDispatchFailed(chunk, err) {
        log("warn", "fan-out hand-off failed; delivering that chunk here", { requestId, room, cursor, chunk, error: describeError(err) });
      },
    });
}
