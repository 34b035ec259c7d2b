/**
 * `$disconnect`: removes the connection's record. Idempotent, and best effort by nature: API
 * Gateway may never send it, which is why records also carry a TTL.
 */
import { timeBudget } from "./shared/budget";
import { connectionsStoreFromEnv } from "./shared/connections";
import { describeError } from "./shared/errors";
import type { DisconnectEvent, WebSocketHandler } from "./shared/events";
import { log } from "./shared/log";

export function disconnectHandlerFactory(): WebSocketHandler<DisconnectEvent> {
  const store = connectionsStoreFromEnv();

  return async (event, context) => {
    const { connectionId, disconnectStatusCode, disconnectReason } = event.requestContext;
    try {
      await timeBudget(context).step("removing the record", store.remove(connectionId));
    } catch (err) {
      // The TTL removes the record within hours; a stale record is also removed by the next
      // broadcast that gets 410 for it. Nothing else can be done for a closed connection.
      log("error", "disconnect cleanup failed", { connectionId, requestId: context.awsRequestId, error: describeError(err) });
      return { statusCode: 500 };
    }
    log("info", "disconnected", { connectionId, code: disconnectStatusCode, reason: disconnectReason });
    return { statusCode: 200 };
  };
}
