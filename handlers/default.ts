/**
 * `$default`: everything that matched no other route. `{"action":"echo","data":…}` (the second
 * seed's protocol) is answered with the text frame `Echo: <data>`; anything else gets a usage
 * frame with the caller's own connection info, as the tutorial's DefaultHandler does.
 * Every frame spends one unit of the caller's budget (the one sendmessage and history spend), so
 * a burst of echoes or junk is refused with `rate_limited` like a burst of messages.
 */
import { deliver } from "./shared/broadcaster";
import { timeBudget } from "./shared/budget";
import type { Context } from "aws-lambda";
import { budgetFromEnv, budgetSpent, connectionsStoreFromEnv } from "./shared/connections";
import { ENV, requireEnv } from "./shared/env";
import { describeError } from "./shared/errors";
import type { WebSocketEvent, WebSocketHandler } from "./shared/events";
import { log } from "./shared/log";
import { ConnectionInfo, createManagement } from "./shared/management";
import { echoText, errorFrame, parseBody, UsageReason, usageFrame } from "./shared/protocol";

/** `$default` posts only to its caller, so a small socket pool is plenty. */
const DEFAULT_ROUTE_SOCKETS = 4;

type Reason = UsageReason | "echo" | "invalid_data" | "rate_limited" | "unknown_connection" | "unavailable";

export function defaultHandlerFactory(): WebSocketHandler<WebSocketEvent> {
  const management = createManagement(requireEnv(ENV.managementEndpoint), DEFAULT_ROUTE_SOCKETS);
  const store = connectionsStoreFromEnv();
  const budget = budgetFromEnv();

  /** The answer to one frame: a refusal when the budget says so, else echo or usage. */
  async function answer(event: WebSocketEvent, context: Context, started: number): Promise<{ reason: Reason; reply: string }> {
    const { connectionId } = event.requestContext;
    let admission;
    try {
      admission = await timeBudget(context, started).step("the rate-limit step", store.admit(connectionId, started, budget));
    } catch (err) {
      log("error", "caller lookup failed", { connectionId, requestId: context.awsRequestId, error: describeError(err) });
      return { reason: "unavailable", reply: errorFrame("unavailable", "the request could not be answered; try again", undefined, 1_000) };
    }
    if (!admission.record) return { reason: "unknown_connection", reply: errorFrame("unknown_connection", "this connection is not registered; reconnect") };
    if (!admission.allowed) return { reason: "rate_limited", reply: errorFrame("rate_limited", budgetSpent(budget), undefined, admission.retryAfterMs) };

    const parsed = parseBody(event.body);
    if (parsed.ok && parsed.value.action === "echo") {
      const data = parsed.value.data;
      return typeof data === "string"
        ? { reason: "echo", reply: echoText(data) }
        : { reason: "invalid_data", reply: errorFrame("invalid_data", "echo needs a string in data") };
    }
    const reason = !parsed.ok ? parsed.reason : parsed.value.action === undefined ? "missing_action" : "unknown_action";
    let info: ConnectionInfo = {};
    try {
      info = await management.getConnection(connectionId);
    } catch (err) {
      log("warn", "GetConnection failed", { connectionId, error: describeError(err) });
    }
    return { reason, reply: usageFrame(reason, { connectionId, ...info }) };
  }

  return async (event, context) => {
    const { connectionId } = event.requestContext;
    const { reason, reply } = await answer(event, context, Date.now());
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
