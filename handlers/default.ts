/**
 * `$default`: everything that matched no other route. `{"action":"echo","data":…}` (the second
 * seed's protocol) is answered with the text frame `Echo: <data>`; anything else gets a usage
 * frame with the caller's own connection info, as the tutorial's DefaultHandler does.
 */
import { deliver } from "./shared/broadcaster";
import { ENV, requireEnv } from "./shared/env";
import { describeError } from "./shared/errors";
import type { WebSocketEvent, WebSocketHandler } from "./shared/events";
import { log } from "./shared/log";
import { ConnectionInfo, createManagement } from "./shared/management";
import { echoText, errorFrame, parseBody, UsageReason, usageFrame } from "./shared/protocol";

/** `$default` posts only to its caller, so a small socket pool is plenty. */
const DEFAULT_ROUTE_SOCKETS = 4;

export function defaultHandlerFactory(): WebSocketHandler<WebSocketEvent> {
  const management = createManagement(requireEnv(ENV.managementEndpoint), DEFAULT_ROUTE_SOCKETS);

  return async (event, context) => {
    const { connectionId } = event.requestContext;
    const parsed = parseBody(event.body);

    let reply: string;
    let reason: UsageReason | "echo" | "invalid_data";
    if (parsed.ok && parsed.value.action === "echo") {
      const data = parsed.value.data;
      reason = typeof data === "string" ? "echo" : "invalid_data";
      reply = typeof data === "string" ? echoText(data) : errorFrame("invalid_data", "echo needs a string in data");
    } else {
      reason = !parsed.ok ? parsed.reason : parsed.value.action === undefined ? "missing_action" : "unknown_action";
      let info: ConnectionInfo = {};
      try {
        info = await management.getConnection(connectionId);
      } catch (err) {
        log("warn", "GetConnection failed", { connectionId, error: describeError(err) });
      }
      reply = usageFrame(reason, { connectionId, ...info });
    }

    const delivery = await deliver(management, connectionId, reply);
    log(delivery.outcome === "delivered" ? "info" : "warn", "default route", {
      connectionId,
      requestId: context.awsRequestId,
      reason,
      outcome: delivery.outcome,
      attempts: delivery.attempts,
      error: delivery.error,
    });
    return { statusCode: 200 };
  };
}
