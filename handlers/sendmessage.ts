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
 * The `edit` and `delete` routes come here too: each is a new event in the room's sequence naming
 * the cursor of the sender's own message, stored in one transaction with the checks on that message
 * (shared/messages.ts), acknowledged and fanned out like a message.
 *
 * Back-pressure: a message that waited in API Gateway's and Lambda's queues longer than
 * MAX_QUEUED_MS (the room, or the stage, is taking more than it can) is refused at once as
 * `unavailable` with `retryAfterMs`, before any write, so latency stays bounded at any offered rate
 * and the sender resends it with the same `id` when the hint has passed.
 */
import { randomUUID } from "crypto";
import { deliver } from "./shared/broadcaster";
import { isDeadline, timeBudget } from "./shared/budget";
import { budgetFromEnv, ConnectionRecord, connectionsStoreFromEnv, createDocumentClient } from "./shared/connections";
import { ENV, RANGES, requireEnv, requireIntEnv } from "./shared/env";
import { ChatError, chatError, ClientErrorCode, describeError, isChatError } from "./shared/errors";
import type { WebSocketEvent, WebSocketHandler, WebSocketResult } from "./shared/events";
import type { SpreadStats } from "./shared/fanout";
import { log } from "./shared/log";
import { createManagement } from "./shared/management";
import { APPEND_BUDGET_MS, Appended, CURSOR_PATTERN, cursorOf, EPOCH_LENGTH, eventFrame, isTombstone, MAX_EDITS, MessageStore, messageStoreFromEnv, NewMessage, StoredMessage, TargetCheck } from "./shared/messages";
import { ackFrame, API_MESSAGE_BYTES, errorFrame, parseBody, utf8Bytes, validateClientId, validateFrameSize, validateMessage, validateTarget } from "./shared/protocol";
import { createPublish } from "./shared/publish";

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
  const editWindowMs = requireIntEnv(ENV.editWindowMs, RANGES.editWindowMs.min, RANGES.editWindowMs.max);
  const rateLimit = budgetFromEnv();
  const doc = createDocumentClient();
  const store = connectionsStoreFromEnv(doc);
  const history = messageStoreFromEnv(doc);
  const management = createManagement(requireEnv(ENV.managementEndpoint), concurrency);
  const publish = createPublish({
    store,
    management,
    concurrency,
    chunkSize: requireIntEnv(ENV.fanoutChunkSize, RANGES.fanoutChunkSize.min, RANGES.fanoutChunkSize.max),
    fanoutFunction: requireEnv(ENV.fanoutFunction),
    region: requireEnv("AWS_REGION"),
  });

  return async (event, context) => {
    const started = Date.now();
    const budget = timeBudget(context, started);
    const { connectionId: senderId, messageId, requestTimeEpoch } = event.requestContext;
    const requestId = context.awsRequestId;

    // Read first, refused only after the budget is spent: a flood of bad frames costs its sender too.
    const read = readRequest(event.body, maxMessageBytes);
    // Every refusal names the client's id once it is known valid.
    const refuse = async (code: ClientErrorCode, message: string, retryAfterMs?: number): Promise<WebSocketResult> => {
      const delivery = await deliver(management, senderId, errorFrame(code, message, read.clientId, retryAfterMs));
      log("warn", "message refused", { connectionId: senderId, requestId, code, reason: message, clientId: read.clientId, retryAfterMs, reply: delivery.outcome });
      return { statusCode: 200 };
    };

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
    if ("problem" in read) return refuse(read.problem.code, read.problem.message);

    const draft: NewMessage = { room: sender.room, id: messageId ?? randomUUID(), from: { name: sender.name }, ts: requestTimeEpoch ?? started, ...read.event, ...(read.clientId ? { clientId: read.clientId } : {}) };
    // The outgoing event's size is known before anything is stored (cursor and epoch have fixed
    // lengths). Within RANGES.maxMessageBytes this never refuses: the server's escaping of the text
    // is never longer than the sender's, and the envelopes differ by a few hundred bytes (a test
    // measures the worst case); kept so that no range can store what @connections cannot post.
    if (utf8Bytes(JSON.stringify(eventFrame({ ...draft, cursor: cursorOf(0), expiresAt: 0 }, EPOCH_PLACEHOLDER))) > API_MESSAGE_BYTES) {
      return refuse("message_too_large", `the message does not fit in one ${API_MESSAGE_BYTES}-byte PostToConnection payload once wrapped; nothing was stored`);
    }
    // A busy room may take a while to append to; half the time left stays for the fan-out and reply.
    const deadline = Date.now() + Math.min(APPEND_BUDGET_MS, (budget.deadline - Date.now()) / 2);
    let stored;
    try {
      stored = await budget.step("the append", appendChecked(history, draft, sender, { editWindowMs, now: started }, deadline));
    } catch (err) {
      if (isChatError(err) && isClientCode(err.code)) return refuse(err.code, err.message);
      log("error", "message not persisted", { connectionId: senderId, requestId, room: sender.room, error: describeError(err) });
      return refuse("unavailable", "the message was not stored; send it again (with the same id, it is stored once)", MIN_RETRY_AFTER_MS);
    }
    const storedAt = Date.now();
    if (read.clientId) {
      try {
        await budget.step("the ack", deliver(management, senderId, ackFrame(read.clientId, stored.cursor, stored.epoch)));
      } catch (err) {
        // Stored, unacknowledged: the sender resends after its ack timeout and is acknowledged then.
        log("error", "ack cut short by the time budget", { connectionId: senderId, requestId, room: sender.room, clientId: read.clientId, cursor: stored.cursor, error: describeError(err) });
        return { statusCode: 200 };
      }
    }
    if (stored.duplicate) {
      log("info", "duplicate acknowledged", { connectionId: senderId, requestId, room: sender.room, clientId: read.clientId, cursor: stored.cursor });
      return { statusCode: 200 };
    }

    const data = JSON.stringify(eventFrame({ ...draft, cursor: stored.cursor, epoch: stored.epoch, expiresAt: 0 }, stored.epoch));
    let stats: SpreadStats;
    try {
      stats = await budget.step("the fan-out", publish({ room: sender.room, cursor: stored.cursor, data, exclude: senderId, until: budget.deadline, requestId }));
    } catch (err) {
      // The message is stored: members who missed it get it from `history`.
      log("error", isDeadline(err) ? "fan-out cut short by the time budget" : "fan-out aborted", { connectionId: senderId, requestId, room: sender.room, cursor: stored.cursor, error: describeError(err) });
      return refuse("unavailable", "the message is stored but may not have reached everyone live; they will get it from history");
    }

    // Where the time went: queued before this run, the rate-limit step, the append, the ack and fan-out.
    const ms = { queued: queuedMs, admit: admittedAt - started, append: storedAt - admittedAt, deliver: Date.now() - storedAt };
    log("info", draft.type ?? "message", { connectionId: senderId, requestId, room: sender.room, id: draft.id, cursor: stored.cursor, ...stats, ms });
    return { statusCode: 200 };
  };
}

/** What a body asks to store: a message, or an edit or delete of the sender's message at `target`. */
type RequestedEvent = { type?: "edit" | "delete"; message?: string; target?: string };
type ReadRequest = { clientId?: string; event: RequestedEvent } | { clientId?: string; problem: { code: ClientErrorCode; message: string } };

/** The event a body asks for, or what is wrong with it (the id is kept once valid, to name it in refusals). */
function readRequest(body: string | undefined, maxMessageBytes: number): ReadRequest {
  const parsed = parseBody(body);
  if (!parsed.ok) return { problem: { code: "invalid_json", message: "the body must be a JSON object" } };
  const { action, id, message, cursor } = parsed.value;
  let clientId: string | undefined;
  try {
    clientId = validateClientId(id);
    if (action === "delete") return { clientId, event: { type: "delete", target: validateTarget(cursor, CURSOR_PATTERN) } };
    const target = action === "edit" ? validateTarget(cursor, CURSOR_PATTERN) : undefined;
    const text = validateMessage(message);
    validateFrameSize(body ?? "", maxMessageBytes);
    return { clientId, event: target === undefined ? { message: text } : { type: "edit", target, message: text } };
  } catch (err) {
    if (!isChatError(err)) throw err;
    return { clientId, problem: { code: err.code as ClientErrorCode, message: err.message } };
  }
}

// An array, not a Set: Pulumi's closure serializer turns a captured Set into a plain object
// (seen on @pulumi/pulumi 3.270: "Set.prototype.has called on incompatible receiver").
const TARGET_REFUSALS: readonly string[] = ["not_found", "not_author", "edit_window_passed", "message_deleted", "too_many_edits"];
const isClientCode = (code: ChatError["code"]): code is ClientErrorCode => TARGET_REFUSALS.includes(code);

/**
 * Appends the event; an edit or delete first checks the message it names, and again if that
 * message changed while the event was being stored (a concurrent edit or delete): the second
 * look gives the refusal, or the append is tried once more.
 */
export async function appendChecked(history: MessageStore, draft: NewMessage, sender: ConnectionRecord, rules: { editWindowMs: number; now: number }, deadline: number): Promise<Appended> {
  if (!draft.type) return history.append(draft, deadline);
  for (let look = 1; ; look++) {
    let check: TargetCheck;
    try {
      check = targetCheck(await history.event(sender.room, String(draft.target)), draft, sender, rules);
    } catch (refusal) {
      // A resend of an edit or delete that was applied (its ack was lost) finds the message changed
      // by it: acknowledged again with the same cursor, as a resent message is, not refused.
      const applied = draft.clientId ? await history.claimed(sender.room, sender.name, draft.clientId) : undefined;
      if (applied) return applied;
      throw refusal;
    }
    try {
      return await history.append(draft, deadline, check);
    } catch (err) {
      if (!(isChatError(err) && err.code === "target_changed") || look >= 2) throw err;
    }
  }
}

/** The checks an edit or delete must pass on the message it names, or the refusal. */
export function targetCheck(target: StoredMessage | undefined, draft: NewMessage, sender: ConnectionRecord, rules: { editWindowMs: number; now: number }): TargetCheck {
  const expired = target !== undefined && target.expiresAt <= Math.floor(rules.now / 1000);
  if (!target || isTombstone(target) || target.type !== undefined || expired) {
    throw chatError("not_found", `no message at cursor ${draft.target} in room ${sender.room}`, 404);
  }
  if (target.from.name !== sender.name) throw chatError("not_author", `only ${target.from.name} can ${draft.type} that message`, 403);
  if (target.deleted) throw chatError("message_deleted", "that message was deleted", 409);
  const edits = target.edits ?? [];
  if (draft.type === "delete") return { cursor: target.cursor, author: sender.name, edits };
  const sentSince = rules.now - rules.editWindowMs;
  if (target.ts < sentSince) throw chatError("edit_window_passed", `messages can be edited for ${Math.round(rules.editWindowMs / 60_000)} minutes after sending`, 403);
  if (edits.length >= MAX_EDITS) throw chatError("too_many_edits", `a message can be edited at most ${MAX_EDITS} times`, 409);
  return { cursor: target.cursor, author: sender.name, edits, sentSince };
}
