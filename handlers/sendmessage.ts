/**
 * `sendmessage`: validates the text (and the optional client `id`), applies the sender's rate
 * limit, persists the message in the room's history, acknowledges it when an `id` was given, then
 * delivers it to every other member of the room. A repeated `id` is acknowledged again and
 * neither stored nor delivered twice. Members come from a paginated Query on the room index
 * (never a Scan); posts go out with bounded concurrency over a keep-alive pool; 429/5xx are
 * retried; a 410 removes that member's record. A room larger than one chunk is spread over
 * parallel `fanout` runs (shared/fanout.ts): this function delivers the first chunk itself.
 * Problems the sender can act on come back as `{"type":"error",…}` frames, never as API Gateway's
 * "Internal server error".
 *
 * Back-pressure: a message that waited in API Gateway's and Lambda's queues longer than
 * MAX_QUEUED_MS (the room, or the stage, is taking more than it can) is refused at once as
 * `unavailable` with `retryAfterMs`, before any write, so latency stays bounded at any offered rate
 * and the sender resends it with the same `id` when the hint has passed.
 */
import { randomUUID } from "crypto";
import { deliver, memberBroadcast, onePage } from "./shared/broadcaster";
import { isDeadline, timeBudget } from "./shared/budget";
import { budgetFromEnv, connectionsStoreFromEnv, createDocumentClient } from "./shared/connections";
import { ENV, RANGES, requireEnv, requireIntEnv } from "./shared/env";
import { ClientErrorCode, describeError, isChatError } from "./shared/errors";
import type { WebSocketEvent, WebSocketHandler, WebSocketResult } from "./shared/events";
import { log } from "./shared/log";
import { createManagement } from "./shared/management";
import { createDispatch, SpreadStats, spread } from "./shared/fanout";
import { APPEND_BUDGET_MS, cursorOf, EPOCH_LENGTH, messageStoreFromEnv } from "./shared/messages";
import { ackFrame, errorFrame, MAX_FRAME_BYTES, MessageFrame, parseBody, utf8Bytes, validateClientId, validateMessage } from "./shared/protocol";

/** A message older than this when its run starts is refused as `unavailable` (see above). */
export const MAX_QUEUED_MS = 1_500;
/** The `retryAfterMs` hint, bounded: at least this… */
const MIN_RETRY_AFTER_MS = 500;
/** …and at most this. */
const MAX_RETRY_AFTER_MS = 5_000;
const EPOCH_PLACEHOLDER = "e".repeat(EPOCH_LENGTH);

export function sendMessageHandlerFactory(): WebSocketHandler<WebSocketEvent> {
  const maxMessageBytes = requireIntEnv(ENV.maxMessageBytes, RANGES.maxMessageBytes.min, RANGES.maxMessageBytes.max);
  const concurrency = requireIntEnv(ENV.fanoutConcurrency, RANGES.fanoutConcurrency.min, RANGES.fanoutConcurrency.max);
  const rateLimit = budgetFromEnv();
  const doc = createDocumentClient();
  const store = connectionsStoreFromEnv(doc);
  const history = messageStoreFromEnv(doc);
  const chunkSize = requireIntEnv(ENV.fanoutChunkSize, RANGES.fanoutChunkSize.min, RANGES.fanoutChunkSize.max);
  const management = createManagement(requireEnv(ENV.managementEndpoint), concurrency);
  const deliverToMembers = memberBroadcast(management, concurrency, store);
  const dispatch = createDispatch(requireEnv(ENV.fanoutFunction), requireEnv("AWS_REGION"));

  return async (event, context) => {
    const started = Date.now();
    const budget = timeBudget(context, started);
    const { connectionId: senderId, messageId, requestTimeEpoch } = event.requestContext;
    const requestId = context.awsRequestId;

    // Set once the client's id is known valid: every refusal after that names it.
    let clientId: string | undefined;
    async function refuse(code: ClientErrorCode, message: string, retryAfterMs?: number): Promise<WebSocketResult> {
      const delivery = await deliver(management, senderId, errorFrame(code, message, clientId, retryAfterMs));
      log("warn", "message refused", { connectionId: senderId, requestId, code, reason: message, clientId, retryAfterMs, reply: delivery.outcome });
      return { statusCode: 200 };
    }

    // Read first, refused only after the budget is spent: a flood of bad frames costs its sender too.
    const read = readMessage(event.body, maxMessageBytes);
    clientId = read.clientId;

    const queuedMs = requestTimeEpoch === undefined ? 0 : started - requestTimeEpoch;
    if (queuedMs > MAX_QUEUED_MS) {
      const retryAfterMs = Math.round(Math.min(MAX_RETRY_AFTER_MS, Math.max(MIN_RETRY_AFTER_MS, queuedMs)));
      return refuse("unavailable", `the room is busier than it can take (this message waited ${queuedMs} ms); nothing was stored: send it again`, retryAfterMs);
    }

    let admission;
    try {
      admission = await budget.step("the rate-limit step", store.admit(senderId, started, rateLimit));
    } catch (err) {
      log("error", "sender lookup failed", { connectionId: senderId, requestId, error: describeError(err) });
      return refuse("unavailable", "the message could not be sent; nothing was stored: try again", MIN_RETRY_AFTER_MS);
    }
    const admittedAt = Date.now();
    const sender = admission.record;
    if (!sender) return refuse("unknown_connection", "this connection is not registered; reconnect");
    if (!admission.allowed) {
      return refuse("rate_limited", `more than ${rateLimit.messages} requests in ${rateLimit.windowSeconds} s; this one was not sent`, admission.retryAfterMs);
    }
    if (!("text" in read)) return refuse(read.problem.code, read.problem.message);
    const text = read.text;

    const ts = requestTimeEpoch ?? started;
    const id = messageId ?? randomUUID();
    // The frame's size is known before anything is stored: cursor and epoch have fixed lengths.
    const draft: MessageFrame = { type: "message", room: sender.room, from: { name: sender.name }, message: text, ts, id, cursor: cursorOf(0), epoch: EPOCH_PLACEHOLDER };
    if (utf8Bytes(JSON.stringify(draft)) > MAX_FRAME_BYTES) {
      // Reachable only at the edge: a body near API Gateway's 128 KB limit (escaped control characters
      // count 6 bytes each there) plus the envelope; refused before it is stored, so never half-sent.
      return refuse("message_too_large", `the message does not fit in one ${MAX_FRAME_BYTES}-byte frame once wrapped; nothing was stored`);
    }
    // A busy room may take a while to append to; half the time left stays for the fan-out and reply.
    const deadline = Date.now() + Math.min(APPEND_BUDGET_MS, (budget.deadline - Date.now()) / 2);
    let stored;
    try {
      stored = await budget.step("the append", history.append({ room: sender.room, id, from: { name: sender.name }, message: text, ts, ...(clientId ? { clientId } : {}) }, deadline));
    } catch (err) {
      log("error", "message not persisted", { connectionId: senderId, requestId, room: sender.room, error: describeError(err) });
      return refuse("unavailable", "the message was not stored; send it again (with the same id, it is stored once)", MIN_RETRY_AFTER_MS);
    }
    const storedAt = Date.now();
    if (clientId) {
      try {
        await budget.step("the ack", deliver(management, senderId, ackFrame(clientId, stored.cursor, stored.epoch)));
      } catch (err) {
        // Stored, unacknowledged: the sender resends after its ack timeout and is acknowledged then.
        log("error", "ack cut short by the time budget", { connectionId: senderId, requestId, room: sender.room, clientId, cursor: stored.cursor, error: describeError(err) });
        return { statusCode: 200 };
      }
    }
    if (stored.duplicate) {
      log("info", "duplicate acknowledged", { connectionId: senderId, requestId, room: sender.room, clientId, cursor: stored.cursor });
      return { statusCode: 200 };
    }

    const data = JSON.stringify({ ...draft, cursor: stored.cursor, epoch: stored.epoch });

    let stats: SpreadStats;
    try {
      stats = await budget.step("the fan-out", spread({
        pages: store.roomMembers(sender.room),
        exclude: senderId,
        room: sender.room,
        cursor: stored.cursor,
        data,
        chunkSize,
        // No post starts after the budget: a fan-out cut short must not go on posting in the background.
        deliver: (ids) => deliverToMembers(onePage(ids), senderId, data, budget.deadline),
        dispatch,
        onDispatchFailed(chunk, err) {
          log("warn", "fan-out hand-off failed; delivering that chunk here", { requestId, room: sender.room, cursor: stored.cursor, chunk, error: describeError(err) });
        },
      }));
    } catch (err) {
      // The message is stored: members who missed it get it from `history`.
      log("error", isDeadline(err) ? "fan-out cut short by the time budget" : "fan-out aborted", { connectionId: senderId, requestId, room: sender.room, cursor: stored.cursor, error: describeError(err) });
      return refuse("unavailable", "the message is stored but may not have reached everyone live; they will get it from history");
    }

    // Where the time went: queued before this run, the rate-limit step, the append, the ack and fan-out.
    const ms = { queued: queuedMs, admit: admittedAt - started, append: storedAt - admittedAt, deliver: Date.now() - storedAt };
    log("info", "message", { connectionId: senderId, requestId, room: sender.room, id, cursor: stored.cursor, ...stats, ms });
    return { statusCode: 200 };
  };
}

type ReadMessage = { clientId?: string; text: string } | { clientId?: string; problem: { code: ClientErrorCode; message: string } };

/** The message and client id a body carries, or what is wrong with it (the id is kept once valid, to name it in refusals). */
function readMessage(body: string | undefined, maxMessageBytes: number): ReadMessage {
  const parsed = parseBody(body);
  if (!parsed.ok) return { problem: { code: "invalid_json", message: "the body must be a JSON object" } };
  let clientId: string | undefined;
  try {
    clientId = validateClientId(parsed.value.id);
    return { clientId, text: validateMessage(parsed.value.message, maxMessageBytes) };
  } catch (err) {
    if (!isChatError(err)) throw err;
    return { clientId, problem: { code: err.code as ClientErrorCode, message: err.message } };
  }
}
