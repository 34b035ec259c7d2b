/**
 * `$connect`: validates the optional `room` and `name` query parameters and records the
 * connection. A bad parameter refuses the handshake with 400 and writes nothing. When the
 * $connect authorizer ran, the stored name is the verified one from its context, the room must be
 * one its token allows (403 `room_not_allowed`; the authorizer checks it too: defence in depth),
 * and the name may hold at most MAX_CONNECTIONS_PER_NAME connections (429 `too_many_connections`).
 */
import { timeBudget } from "./shared/budget";
import { connectionsStoreFromEnv, expiresAtFor } from "./shared/connections";
import { ENV, RANGES, requireIntEnv } from "./shared/env";
import { chatError, describeError, isChatError } from "./shared/errors";
import type { ConnectEvent, WebSocketHandler } from "./shared/events";
import { log } from "./shared/log";
import { parseIdentity } from "./shared/protocol";

export function connectHandlerFactory(): WebSocketHandler<ConnectEvent> {
  const store = connectionsStoreFromEnv();
  // Set by the program only when auth is on: guests' names prove nothing, so they are not capped.
  const perNameCap = process.env[ENV.maxConnectionsPerName] === undefined
    ? undefined
    : requireIntEnv(ENV.maxConnectionsPerName, RANGES.maxConnectionsPerName.min, RANGES.maxConnectionsPerName.max);

  return async (event, context) => {
    const { connectionId, connectedAt } = event.requestContext;
    const authorizer = event.requestContext.authorizer;
    const time = timeBudget(context);
    const expiresAt = expiresAtFor(connectedAt);
    let identity;
    let place: string | undefined;
    try {
      identity = identityOf(event);
      // The token's rooms, as the authorizer passed them on ("" = any room).
      const allowed = authorizer?.rooms ? authorizer.rooms.split(",") : undefined;
      if (allowed && !allowed.includes(identity.room)) throw chatError("room_not_allowed", `this token does not allow room "${identity.room}"`, 403);
      if (authorizer?.name && perNameCap !== undefined) {
        place = await time.step("taking one of the name's places", store.takePlace(identity.name, connectionId, expiresAt, connectedAt, perNameCap));
        if (!place) throw chatError("too_many_connections", `"${identity.name}" already has ${perNameCap} open connections; close one first`, 429);
      }
    } catch (err) {
      if (!isChatError(err)) throw err;
      log("warn", "connect refused", { connectionId, code: err.code, reason: err.message });
      // A store that failed or ran out of time is the service's fault: 503, documented as `unavailable`.
      const code = err.code === "store_unavailable" || err.code === "deadline" ? "unavailable" : err.code;
      return {
        statusCode: code === "unavailable" ? 503 : err.status,
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ type: "error", code, message: err.message }),
      };
    }

    try {
      await time.step("recording the connection", store.put({ connectionId, ...identity, connectedAt, expiresAt, ...(place ? { place } : {}) }));
    } catch (err) {
      log("error", "connect failed", { connectionId, requestId: context.awsRequestId, error: describeError(err) });
      // Best effort: a place left held expires with the connection it was taken for.
      if (place) await store.freePlace(place, connectionId).catch(() => undefined);
      return { statusCode: 500 };
    }
    log("info", "connected", { connectionId, room: identity.room, name: identity.name });
    return { statusCode: 200 };
  };
}

/** The room and name to record. With the authorizer on, the name is the one its token proved; a `name` parameter is ignored. */
function identityOf(event: ConnectEvent): { room: string; name: string } {
  const verified = event.requestContext.authorizer?.name;
  if (!verified) return parseIdentity(event.queryStringParameters, event.multiValueQueryStringParameters);
  const { name: _ignored, ...query } = event.queryStringParameters ?? {};
  const { name: _ignoredToo, ...multi } = event.multiValueQueryStringParameters ?? {};
  return { ...parseIdentity(query, multi), name: verified };
}
