/**
 * Spreading a large room's fan-out over parallel Lambda instances. `sendmessage` delivers the
 * first chunk of recipients itself and hands every further chunk to the `fanout` function with an
 * asynchronous Invoke (InvocationType Event), so a room of 20,000 is served by about 20 instances
 * at once instead of one: on Lambda, CPU is a share of one core per instance, and one instance
 * posting 20,000 times is CPU-bound. A room that fits in one chunk never leaves sendmessage.
 *
 * Nothing is lost when a hand-off fails: a chunk whose Invoke is refused is delivered by
 * sendmessage itself. Lambda retries a failed `fanout` run (FunctionEventInvokeConfig), so a
 * recipient may get a frame twice after a crash; frames carry the message `id` and `cursor`.
 */
import { createAwsClient, serviceEndpoint } from "./aws-http";
import { chatError } from "./errors";
import type { FanoutStats } from "./broadcaster";
import { utf8Bytes } from "./protocol";

/** What sendmessage hands to one `fanout` run. */
export interface FanoutEvent {
  kind: "chat.fanout";
  room: string;
  cursor: string;
  /** The frame to post, as sent to every member. */
  data: string;
  connectionIds: string[];
}

/**
 * The asynchronous Invoke payload limit was 256 KB until late 2025 (now 1 MB); chunks stay under
 * the old one so they fit everywhere. Source: https://docs.aws.amazon.com/lambda/latest/api/API_Invoke.html
 */
export const MAX_CHUNK_PAYLOAD_BYTES = 256 * 1024;
const ENVELOPE_BYTES = 512;

/** Validates an event meant for `fanout`; anything else is refused with a clear message. */
export function parseFanoutEvent(event: unknown): FanoutEvent {
  const e = event as Partial<FanoutEvent> | null;
  const valid =
    typeof e === "object" &&
    e !== null &&
    e.kind === "chat.fanout" &&
    typeof e.room === "string" &&
    typeof e.cursor === "string" &&
    typeof e.data === "string" &&
    Array.isArray(e.connectionIds) &&
    e.connectionIds.every((id) => typeof id === "string" && id.length > 0 && id.length <= 128);
  if (!valid) throw chatError("invalid_data", "not a fan-out event: expected {kind:'chat.fanout', room, cursor, data, connectionIds[]}", 400);
  return e as FanoutEvent;
}

export type Dispatch = (event: FanoutEvent) => Promise<void>;

/** Invoke with InvocationType Event, at Lambda's endpoint as the SDKs resolve it. */
export function createDispatch(functionName: string, region: string): Dispatch {
  const request = createAwsClient({ service: "lambda", region, maxSockets: 16, timeoutMs: 5_000 });
  const url = new URL(`${serviceEndpoint("lambda", region)}/2015-03-31/functions/${encodeURIComponent(functionName)}/invocations`);
  return async (event) => {
    await request("POST", url, JSON.stringify(event), { "x-amz-invocation-type": "Event", "content-type": "application/json" });
  };
}

export interface SpreadOptions {
  pages: AsyncIterable<string[]>;
  /** Never posted to: the sender. */
  exclude: string;
  room: string;
  cursor: string;
  data: string;
  /** Recipients per chunk at most (fewer when the payload limit says so). */
  chunkSize: number;
  deliver(connectionIds: string[]): Promise<FanoutStats>;
  dispatch: Dispatch;
  /** Told about each chunk whose hand-off failed (it is then delivered here instead). */
  onDispatchFailed?(chunk: number, err: unknown): void;
}

export interface SpreadStats extends FanoutStats {
  /** Chunks handed to `fanout` (their deliveries are counted there, not here). */
  dispatched: number;
  handedRecipients: number;
}

/**
 * Reads the room page by page, cuts the recipients into chunks, delivers the first here and
 * dispatches the rest as they fill. Resolves when local deliveries and hand-offs have ended; if
 * reading the room fails part-way, what started still finishes, then the error is thrown.
 */
export async function spread(options: SpreadOptions): Promise<SpreadStats> {
  const budget = MAX_CHUNK_PAYLOAD_BYTES - ENVELOPE_BYTES - utf8Bytes(JSON.stringify(options.data)) - utf8Bytes(options.room) - options.cursor.length;
  if (budget < 1_000) throw chatError("message_too_large", "the frame leaves no room for recipients in a fan-out chunk", 400);
  const stats: SpreadStats = { recipients: 0, delivered: 0, stale: 0, failed: 0, dispatched: 0, handedRecipients: 0 };
  const work: Promise<void>[] = [];
  let chunks = 0;
  let chunk: string[] = [];
  let bytes = 0;

  const local = (ids: string[]) =>
    options.deliver(ids).then((s) => {
      stats.recipients += s.recipients;
      stats.delivered += s.delivered;
      stats.stale += s.stale;
      stats.failed += s.failed;
    });

  const flush = () => {
    const ids = chunk;
    const index = chunks++;
    chunk = [];
    bytes = 0;
    if (index === 0) {
      work.push(local(ids));
      return;
    }
    const event: FanoutEvent = { kind: "chat.fanout", room: options.room, cursor: options.cursor, data: options.data, connectionIds: ids };
    work.push(
      options.dispatch(event).then(
        () => {
          stats.dispatched++;
          stats.handedRecipients += ids.length;
        },
        (err) => {
          options.onDispatchFailed?.(index, err);
          return local(ids);
        },
      ),
    );
  };

  let readError: unknown;
  try {
    for await (const page of options.pages) {
      for (const id of page) {
        if (id === options.exclude) continue;
        const size = utf8Bytes(id) + 3; // quotes and comma
        if (chunk.length >= options.chunkSize || bytes + size > budget) flush();
        chunk.push(id);
        bytes += size;
      }
    }
  } catch (err) {
    readError = err;
  }
  if (chunk.length) flush();
  await Promise.all(work);
  if (readError) throw readError;
  return stats;
}
