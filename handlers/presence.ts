/**
 * `presence`: turns the connections table's stream into `join` and `leave` events in each room's
 * sequence, stored and fanned out like messages. Every way a connection ends passes here: a
 * `$disconnect`, a record removed as stale after a 410, and one the table's TTL expired (the
 * stream carries TTL deletions too), so replay after a reconnect shows who came and went, in order
 * with the messages. Invoked by an event source mapping with a filter (INSERT of a record with a
 * room, REMOVE of one), so rate-limit updates and name places never reach it.
 *
 * Exactly once per connection and kind: the event's client id is `join.<connectionId>` or
 * `leave.<connectionId>`, so a batch Lambda retries is acknowledged as a duplicate, not stored
 * again. Records of one item come in order (one shard per key range), so a connection's leave is
 * never stored before its join. A failed append fails the batch (Lambda retries it, bisecting);
 * a failed fan-out is only logged: members get the event from `history`.
 *
 * Above the presence limit (connections in the room), joins and leaves are neither stored nor
 * fanned out: each would cost one post per member, so a room of n members churning pays n² posts.
 */
import type { DynamoDBRecord, DynamoDBStreamEvent } from "aws-lambda";
import { timeBudget, TimeBudget } from "./shared/budget";
import { connectionsStoreFromEnv, createDocumentClient } from "./shared/connections";
import { ENV, RANGES, requireEnv, requireIntEnv } from "./shared/env";
import { describeError } from "./shared/errors";
import type { Context } from "./shared/events";
import { log } from "./shared/log";
import { createManagement } from "./shared/management";
import { eventFrame, messageStoreFromEnv, NewMessage } from "./shared/messages";
import { createPublish } from "./shared/publish";

export interface PresenceResult {
  stored: number;
  duplicates: number;
  /** Not recorded: the room was above the presence limit. */
  overLimit: number;
  /** Not a join or leave (the mapping's filter should have kept these away). */
  ignored: number;
}

/** A join or leave read from one stream record. */
export interface PresenceChange {
  type: "join" | "leave";
  room: string;
  name: string;
  connectionId: string;
  /** When the change happened, epoch ms (the record's approximate creation time). */
  ts: number;
  /** The stream record's id: the event's server id. */
  id: string;
}

/** The join or leave a stream record stands for, or undefined for any other change. */
export function presenceChange(record: DynamoDBRecord): PresenceChange | undefined {
  const image = record.eventName === "INSERT" ? record.dynamodb?.NewImage : record.eventName === "REMOVE" ? record.dynamodb?.OldImage : undefined;
  const room = image?.room?.S;
  const name = image?.name?.S;
  const connectionId = image?.connectionId?.S;
  if (!room || !name || !connectionId) return undefined;
  // A join happened when the connection did (connectedAt, ms); a leave when the record went (the
  // stream's time, whole seconds).
  const seconds = record.dynamodb?.ApproximateCreationDateTime;
  const connectedAt = Number(image?.connectedAt?.N);
  const ts = record.eventName === "INSERT" && Number.isFinite(connectedAt) ? connectedAt : seconds === undefined ? Date.now() : Math.round(seconds * 1000);
  return {
    type: record.eventName === "INSERT" ? "join" : "leave",
    room,
    name,
    connectionId,
    ts,
    id: record.eventID ?? `${record.eventName}-${connectionId}`,
  };
}

export function presenceHandlerFactory(): (event: DynamoDBStreamEvent, context: Context) => Promise<PresenceResult> {
  const limit = requireIntEnv(ENV.presenceLimit, RANGES.presenceLimit.min, RANGES.presenceLimit.max);
  const concurrency = requireIntEnv(ENV.fanoutConcurrency, RANGES.fanoutConcurrency.min, RANGES.fanoutConcurrency.max);
  const doc = createDocumentClient();
  const store = connectionsStoreFromEnv(doc);
  const history = messageStoreFromEnv(doc);
  const publish = createPublish({
    store,
    management: createManagement(requireEnv(ENV.managementEndpoint), concurrency),
    concurrency,
    chunkSize: requireIntEnv(ENV.fanoutChunkSize, RANGES.fanoutChunkSize.min, RANGES.fanoutChunkSize.max),
    fanoutFunction: requireEnv(ENV.fanoutFunction),
    region: requireEnv("AWS_REGION"),
  });

  /** Stores one change and fans it out; returns what became of it. */
  async function record(change: PresenceChange, time: TimeBudget, requestId: string): Promise<keyof PresenceResult> {
    if ((await time.step("counting the room", store.roomCount(change.room, limit + 1))) > limit) return "overLimit";
    const event: NewMessage = { room: change.room, type: change.type, id: change.id, from: { name: change.name }, ts: change.ts, clientId: `${change.type}.${change.connectionId}` };
    const stored = await time.step(`storing the ${change.type}`, history.append(event));
    if (stored.duplicate) return "duplicates";
    const data = JSON.stringify(eventFrame({ ...event, cursor: stored.cursor, epoch: stored.epoch, expiresAt: 0 }, stored.epoch));
    try {
      await time.step("the fan-out", publish({ room: change.room, cursor: stored.cursor, data, exclude: "", until: time.deadline, requestId }));
    } catch (err) {
      log("warn", "presence fan-out cut short; members get it from history", { requestId, room: change.room, cursor: stored.cursor, error: describeError(err) });
    }
    return "stored";
  }

  return async (event, context) => {
    const time = timeBudget(context);
    const result: PresenceResult = { stored: 0, duplicates: 0, overLimit: 0, ignored: 0 };
    // One room's changes in stream order; rooms side by side.
    const byRoom = new Map<string, PresenceChange[]>();
    for (const r of event.Records ?? []) {
      const change = presenceChange(r);
      if (!change) result.ignored++;
      else byRoom.set(change.room, [...(byRoom.get(change.room) ?? []), change]);
    }
    const rooms = await Promise.allSettled(
      [...byRoom.values()].map(async (changes) => {
        for (const change of changes) result[await record(change, time, context.awsRequestId)]++;
      }),
    );
    log("info", "presence", { requestId: context.awsRequestId, records: event.Records?.length ?? 0, ...result });
    const failed = rooms.find((r): r is PromiseRejectedResult => r.status === "rejected");
    // Lambda retries the batch; what was stored is acknowledged as a duplicate the second time.
    if (failed) throw failed.reason;
    return result;
  };
}
