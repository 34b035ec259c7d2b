/**
 * `history`: `{"action":"history","since":"<cursor>","limit":<n>}` replays the caller's room from
 * the persisted history, oldest first, as ordinary message frames (and tombstone frames for numbers
 * that hold nothing), then `{"type":"history-end","cursor":…,"more":true|false,"epoch":…}`.
 * Without `since`, the latest `limit` events. With `since` = the last cursor a client has, it gets
 * exactly what it missed; a page stops before a number that is still being written, with `more`
 * and `retryAfterMs`.
 *
 * A replay that has started always ends with `history-end` while the caller is connected: an event
 * @connections refuses (too large for one frame, e.g. stored before today's size check) is replayed
 * as a `tombstone` frame with `"reason":"undeliverable"`; a post that keeps failing, or the time
 * budget running out, ends the page early with `more:true` and `retryAfterMs`.
 *
 * Cost: the request spends one unit of the caller's budget up front (refused with `rate_limited`
 * when there is none left) and then one more per HISTORY_BYTES_PER_UNIT of frames it returns.
 */
import { deliver } from "./shared/broadcaster";
import { timeBudget } from "./shared/budget";
import { budgetFromEnv, budgetSpent, connectionsStoreFromEnv, createDocumentClient } from "./shared/connections";
import { ENV, requireEnv } from "./shared/env";
import { ClientErrorCode, describeError, isChatError } from "./shared/errors";
import type { WebSocketEvent, WebSocketHandler } from "./shared/events";
import { log } from "./shared/log";
import { createManagement, Management } from "./shared/management";
import { CURSOR_PATTERN, cursorOf, eventFrame, HistoryPage, messageStoreFromEnv } from "./shared/messages";
import { errorFrame, HistoryRequest, historyEndFrame, parseBody, TombstoneFrame, utf8Bytes, validateHistoryRequest } from "./shared/protocol";

/** History posts only to its caller, in order: one socket. */
const HISTORY_SOCKETS = 1;
/** A page costs one budget unit more per this many bytes of frames (a message's worst case is about 2 per unit)… */
export const HISTORY_BYTES_PER_UNIT = 65_536;
/** …and is charged up front one unit per this many events it asks for (refunded by nothing: a floor). */
export const HISTORY_EVENTS_PER_UNIT = 50;
/** The retry hint when a page ended early because posting failed or time ran out. */
const CUT_SHORT_RETRY_MS = 1_000;

export function historyHandlerFactory(): WebSocketHandler<WebSocketEvent> {
  const doc = createDocumentClient();
  const store = connectionsStoreFromEnv(doc);
  const messages = messageStoreFromEnv(doc);
  const management = createManagement(requireEnv(ENV.managementEndpoint), HISTORY_SOCKETS);
  const budgetLimit = budgetFromEnv();

  return async (event, context) => {
    const started = Date.now();
    const time = timeBudget(context, started);
    const { connectionId } = event.requestContext;
    const requestId = context.awsRequestId;
    const refuse = async (code: ClientErrorCode, message: string, retryAfterMs?: number) => {
      await deliver(management, connectionId, errorFrame(code, message, undefined, retryAfterMs));
      log("warn", "history refused", { connectionId, requestId, code, reason: message, retryAfterMs });
      return { statusCode: 200 };
    };

    // Read first, refused only after the budget is spent: a flood of bad requests costs its sender too.
    const read = readRequest(event.body);
    // Charged up front by what it may return (at least 1), then by what it did return.
    const upfront = "request" in read ? 1 + Math.ceil(read.request.limit / HISTORY_EVENTS_PER_UNIT) : 1;

    let page: HistoryPage;
    let frames: string[];
    try {
      const admission = await time.step("the rate-limit step", store.admit(connectionId, started, budgetLimit, upfront));
      if (!admission.record) return refuse("unknown_connection", "this connection is not registered; reconnect");
      if (!admission.allowed) return refuse("rate_limited", budgetSpent(budgetLimit), admission.retryAfterMs);
      if (!("request" in read)) return refuse(read.problem.code, read.problem.message);
      page = await time.step("reading history", messages.history(admission.record.room, read.request.since, read.request.limit, read.request.epoch));
      frames = page.events.map((stored) => JSON.stringify(eventFrame(stored, page.epoch ?? "")));
      const bytes = frames.reduce((sum, frame) => sum + utf8Bytes(frame), 0);
      await time.step("charging the page", store.charge(connectionId, started, budgetLimit, Math.floor(bytes / HISTORY_BYTES_PER_UNIT) - (upfront - 1)));
    } catch (err) {
      log("error", "history failed", { connectionId, requestId, error: describeError(err) });
      return refuse("unavailable", "history is unavailable; try again", CUT_SHORT_RETRY_MS);
    }

    const request = read.request;
    // Where a page cut short resumes: `since`, or just before a latest page's first event.
    const start = (page.epoch === request.epoch || request.epoch === undefined ? request.since : undefined) ?? (page.events.length > 0 ? cursorOf(Number(page.events[0].cursor) - 1) : page.cursor);
    const replay = await replayPage(management, connectionId, page, frames, time.deadline, start);
    if (replay.outcome === "gone") {
      log("warn", "history interrupted: the caller is gone", { connectionId, requestId, sent: replay.sent });
      return { statusCode: 200 };
    }
    const cutShort = replay.outcome !== "complete";
    const end = cutShort ? historyEndFrame(replay.cursor, true, page.epoch, CUT_SHORT_RETRY_MS) : historyEndFrame(page.cursor, page.more, page.epoch, page.retryAfterMs);
    await deliver(management, connectionId, end);
    log(cutShort ? "warn" : "info", cutShort ? "history cut short" : "history", {
      connectionId, requestId, since: request.since, sent: replay.sent, cursor: cutShort ? replay.cursor : page.cursor, more: cutShort || page.more, outcome: replay.outcome, undeliverable: replay.undeliverable,
    });
    return { statusCode: 200 };
  };
}

interface Replay {
  outcome: "complete" | "gone" | "failed" | "out_of_time";
  /** The last cursor the caller got (as a message or a tombstone): where a cut-short page resumes. */
  cursor: string | null;
  sent: number;
  undeliverable: string[];
}

/**
 * Posts a page's frames in order, one at a time (a client replays them as they come). A frame
 * @connections refuses as too large becomes an `undeliverable` tombstone, so one such message
 * can never block a room's replay.
 */
async function replayPage(management: Management, connectionId: string, page: HistoryPage, frames: string[], deadline: number, since: string | null): Promise<Replay> {
  const replay: Replay = { outcome: "complete", cursor: since, sent: 0, undeliverable: [] };
  for (const [i, stored] of page.events.entries()) {
    if (Date.now() > deadline) return { ...replay, outcome: "out_of_time" };
    let delivery = await deliver(management, connectionId, frames[i]);
    if (delivery.failure === "too_large") {
      replay.undeliverable.push(stored.cursor);
      const standIn: TombstoneFrame = { type: "tombstone", room: stored.room, cursor: stored.cursor, epoch: stored.epoch ?? page.epoch ?? "", reason: "undeliverable" };
      delivery = await deliver(management, connectionId, JSON.stringify(standIn));
    }
    if (delivery.outcome === "gone") return { ...replay, outcome: "gone" };
    if (delivery.outcome !== "delivered") return { ...replay, outcome: "failed" };
    replay.cursor = stored.cursor;
    replay.sent++;
  }
  return replay;
}

/** The request a body carries, or what is wrong with it. */
function readRequest(body: string | undefined): { request: HistoryRequest } | { problem: { code: ClientErrorCode; message: string } } {
  const parsed = parseBody(body);
  if (!parsed.ok) return { problem: { code: "invalid_json", message: "the body must be a JSON object" } };
  try {
    return { request: validateHistoryRequest(parsed.value, CURSOR_PATTERN) };
  } catch (err) {
    if (!isChatError(err)) throw err;
    return { problem: { code: err.code as ClientErrorCode, message: err.message } };
  }
}
