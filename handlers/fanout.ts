/**
 * `fanout`: delivers one chunk of a large room's message, handed over by `sendmessage` with an
 * asynchronous Invoke (see shared/fanout.ts). Posts with bounded concurrency and the same retries
 * as sendmessage; a 410 removes that member's record. Delivery failures are logged, not thrown:
 * a thrown error would make Lambda run the whole chunk again. A malformed event is refused with a
 * log line and no retry.
 */
import { FanoutStats, memberBroadcast, onePage } from "./shared/broadcaster";
import { connectionsStoreFromEnv } from "./shared/connections";
import { ENV, RANGES, requireEnv, requireIntEnv } from "./shared/env";
import { describeError } from "./shared/errors";
import type { Context } from "./shared/events";
import { parseFanoutEvent } from "./shared/fanout";
import { log } from "./shared/log";
import { createManagement } from "./shared/management";

export type FanoutResult = (FanoutStats & { room: string; cursor: string }) | { refused: string };

export function fanoutHandlerFactory(): (event: unknown, context: Context) => Promise<FanoutResult> {
  const concurrency = requireIntEnv(ENV.fanoutConcurrency, RANGES.fanoutConcurrency.min, RANGES.fanoutConcurrency.max);
  const deliverToMembers = memberBroadcast(createManagement(requireEnv(ENV.managementEndpoint), concurrency), concurrency, connectionsStoreFromEnv());

  return async (raw, context) => {
    const started = Date.now();
    let event;
    try {
      event = parseFanoutEvent(raw);
    } catch (err) {
      log("error", "fan-out event refused", { requestId: context.awsRequestId, error: describeError(err) });
      return { refused: (err as Error).message };
    }
    const stats = await deliverToMembers(onePage(event.connectionIds), "", event.data);
    log("info", "fan-out chunk", { requestId: context.awsRequestId, room: event.room, cursor: event.cursor, ...stats, ms: Date.now() - started });
    return { room: event.room, cursor: event.cursor, ...stats };
  };
}
