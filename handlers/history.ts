/**
 * `history`: `{"action":"history","since":"<cursor>","limit":<n>}` replays the caller's room from
 * the persisted history, oldest first, as ordinary message frames (and tombstone frames for numbers
 * that hold nothing), then `{"type":"history-end","cursor":…,"more":true|false,"epoch":…}`.
 * Without `since`, the latest `limit` events. With `since` = the last cursor a client has, it gets
 * exactly what it missed; a page stops before a number that is still being written, with `more`
 * and `retryAfterMs`.
 */
import { deliver } from "./shared/broadcaster";
import { connectionsStoreFromEnv, createDocumentClient } from "./shared/connections";
import { ENV, requireEnv } from "./shared/env";
import { ClientErrorCode, describeError, isChatError } from "./shared/errors";
import type { WebSocketEvent, WebSocketHandler } from "./shared/events";
import { log } from "./shared/log";
import { createManagement } from "./shared/management";
import { CURSOR_PATTERN, isTombstone, messageStoreFromEnv, StoredEvent } from "./shared/messages";
import { errorFrame, historyEndFrame, MessageFrame, parseBody, TombstoneFrame, validateHistoryRequest } from "./shared/protocol";

/** History posts only to its caller, in order: one socket. */
const HISTORY_SOCKETS = 1;

export function historyHandlerFactory(): WebSocketHandler<WebSocketEvent> {
  const doc = createDocumentClient();
  const store = connectionsStoreFromEnv(doc);
  const messages = messageStoreFromEnv(doc);
  const management = createManagement(requireEnv(ENV.managementEndpoint), HISTORY_SOCKETS);

  return async (event, context) => {
    const { connectionId } = event.requestContext;
    const requestId = context.awsRequestId;
    const refuse = async (code: ClientErrorCode, message: string) => {
      await deliver(management, connectionId, errorFrame(code, message));
      log("warn", "history refused", { connectionId, requestId, code, reason: message });
      return { statusCode: 200 };
    };

    const parsed = parseBody(event.body);
    if (!parsed.ok) return refuse("invalid_json", "the body must be a JSON object");
    let request;
    try {
      request = validateHistoryRequest(parsed.value, CURSOR_PATTERN);
    } catch (err) {
      if (!isChatError(err)) throw err;
      return refuse(err.code as ClientErrorCode, err.message);
    }

    let page;
    try {
      const caller = await store.get(connectionId);
      if (!caller) return refuse("unknown_connection", "this connection is not registered; reconnect");
      page = await messages.history(caller.room, request.since, request.limit);
    } catch (err) {
      log("error", "history failed", { connectionId, requestId, error: describeError(err) });
      return refuse("unavailable", "history is unavailable; try again");
    }

    // In order, one at a time: a client replays them as they come.
    for (const event of page.events) {
      const delivery = await deliver(management, connectionId, JSON.stringify(frameOf(event, page.epoch ?? "")));
      if (delivery.outcome !== "delivered") {
        log("warn", "history interrupted", { connectionId, requestId, outcome: delivery.outcome, cursor: event.cursor });
        return { statusCode: 200 };
      }
    }
    await deliver(management, connectionId, historyEndFrame(page.cursor, page.more, page.epoch, page.retryAfterMs));
    log("info", "history", { connectionId, requestId, since: request.since, sent: page.events.length, cursor: page.cursor, more: page.more });
    return { statusCode: 200 };
  };
}

/** The frame a stored event is replayed as. Messages stored before epochs existed get the room's. */
export function frameOf(event: StoredEvent, epoch: string): MessageFrame | TombstoneFrame {
  if (isTombstone(event)) return { type: "tombstone", room: event.room, cursor: event.cursor, epoch: event.epoch };
  return { type: "message", room: event.room, from: event.from, message: event.message, ts: event.ts, id: event.id, cursor: event.cursor, epoch: event.epoch ?? epoch };
}
