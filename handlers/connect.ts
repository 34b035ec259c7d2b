/**
 * `$connect`: validates the optional `room` and `name` query parameters and records the
 * connection. A bad parameter refuses the handshake with 400 and writes nothing. When the
 * $connect authorizer ran, the stored name is the verified one from its context.
 */
import { connectionsStoreFromEnv, expiresAtFor } from "./shared/connections";
import { describeError, isChatError } from "./shared/errors";
import type { ConnectEvent, WebSocketHandler } from "./shared/events";
import { log } from "./shared/log";
import { parseIdentity } from "./shared/protocol";

export function connectHandlerFactory(): WebSocketHandler<ConnectEvent> {
  const store = connectionsStoreFromEnv();

  return async (event, context) => {
    const { connectionId, connectedAt } = event.requestContext;
    let identity;
    try {
      // With the authorizer on, the name is the one its token proved; a `name` parameter is ignored.
      const verified = event.requestContext.authorizer?.name;
      const { name: _ignored, ...query } = event.queryStringParameters ?? {};
      const { name: _ignoredToo, ...multi } = event.multiValueQueryStringParameters ?? {};
      identity = verified
        ? { ...parseIdentity(query, multi), name: verified }
        : parseIdentity(event.queryStringParameters, event.multiValueQueryStringParameters);
    } catch (err) {
      if (!isChatError(err)) throw err;
      log("warn", "connect refused", { connectionId, code: err.code, reason: err.message });
      return {
        statusCode: err.status,
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ type: "error", code: err.code, message: err.message }),
      };
    }

    try {
      await store.put({ connectionId, ...identity, connectedAt, expiresAt: expiresAtFor(connectedAt) });
    } catch (err) {
      log("error", "connect failed", { connectionId, requestId: context.awsRequestId, error: describeError(err) });
      return { statusCode: 500 };
    }
    log("info", "connected", { connectionId, room: identity.room, name: identity.name });
    return { statusCode: 200 };
  };
}
