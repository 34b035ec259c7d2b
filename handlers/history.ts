/**
 * `history`: `{"action":"history","since":"<cursor>","limit":<n>}` replays the caller's room from
 * the persisted history, oldest first, as ordinary message frames, then
 * `{"type":"history-end","cursor":…,"more":true|false}`. Without `since`, the latest `limit`
 * messages. With `since` = the last cursor a client has, it gets exactly what it missed.
 */
import { deliver } from "./shared/broadcaster";
import { connectionsStoreFromEnv, createDocumentClient } from "./shared/connections";
import { ENV, requireEnv } from "./shared/env";
import { ClientErrorCode, describeError, isChatError } from "./shared/errors";
import type { WebSocketEvent, WebSocketHandler } from "./shared/events";
import { log } from "./shared/log";
import { createManagement } from "./shared/management";
import { CURSOR_PATTERN, messageStoreFromEnv } from "./shared/messages";
import { errorFrame, historyEndFrame, MessageFrame, parseBody, validateHistoryRequest } from "./shared/protocol";

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
    for (const m of page.messages) {
      const frame: MessageFrame = { type: "message", room: m.room, from: m.from, message: m.message, ts: m.ts, id: m.id, cursor: m.cursor };
      const delivery = await deliver(management, connectionId, JSON.stringify(frame));
      if (delivery.outcome !== "delivered") {
        log("warn", "history interrupted", { connectionId, requestId, outcome: delivery.outcome, cursor: m.cursor });
        return { statusCode: 200 };
      }
    }
    await deliver(management, connectionId, historyEndFrame(page.cursor, page.more));
    log("info", "history", { connectionId, requestId, since: request.since, sent: page.messages.length, cursor: page.cursor, more: page.more });
    return { statusCode: 200 };
  };
}
