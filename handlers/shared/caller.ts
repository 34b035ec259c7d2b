/**
 * Routes that answer only their caller (`members`, `read`): spend one unit of the caller's budget,
 * read the body, compute one frame, post it back. A refusal is an error frame with a stable code;
 * a store that fails is `unavailable` with a retry hint, never API Gateway's "Internal server error".
 */
import { deliver } from "./broadcaster";
import { timeBudget, TimeBudget } from "./budget";
import { budgetFromEnv, budgetSpent, ConnectionRecord, connectionsStoreFromEnv, createDocumentClient } from "./connections";
import type { DocumentClient } from "./dynamodb";
import { ENV, requireEnv } from "./env";
import { ClientErrorCode, describeError, isChatError } from "./errors";
import type { WebSocketEvent, WebSocketHandler } from "./events";
import { log } from "./log";
import { createManagement } from "./management";
import { errorFrame, parseBody } from "./protocol";

/** One caller's answer; throws a ChatError with a client code to refuse. */
export type Answer = (caller: ConnectionRecord, body: Record<string, unknown>, time: TimeBudget) => Promise<string>;

/** The retry hint when the store failed. */
const RETRY_MS = 1_000;

/** A handler for route `route` whose answer `answerFor(doc)` builds once per instance. */
export function callerRoute(route: string, codes: readonly ClientErrorCode[], answerFor: (doc: DocumentClient) => Answer): WebSocketHandler<WebSocketEvent> {
  const doc = createDocumentClient();
  const store = connectionsStoreFromEnv(doc);
  const management = createManagement(requireEnv(ENV.managementEndpoint), 1);
  const budget = budgetFromEnv();
  const answer = answerFor(doc);
  const known = new Set<string>(codes);

  async function reply(event: WebSocketEvent, time: TimeBudget, started: number): Promise<{ frame: string; code?: string }> {
    const { connectionId } = event.requestContext;
    const admission = await time.step("the rate-limit step", store.admit(connectionId, started, budget));
    if (!admission.record) return { code: "unknown_connection", frame: errorFrame("unknown_connection", "this connection is not registered; reconnect") };
    if (!admission.allowed) return { code: "rate_limited", frame: errorFrame("rate_limited", budgetSpent(budget), undefined, admission.retryAfterMs) };
    const parsed = parseBody(event.body);
    if (!parsed.ok) return { code: "invalid_json", frame: errorFrame("invalid_json", "the body must be a JSON object") };
    try {
      return { frame: await answer(admission.record, parsed.value, time) };
    } catch (err) {
      if (isChatError(err) && known.has(err.code)) return { code: err.code, frame: errorFrame(err.code as ClientErrorCode, err.message) };
      throw err;
    }
  }

  return async (event, context) => {
    const started = Date.now();
    const { connectionId } = event.requestContext;
    let answered: { frame: string; code?: string };
    try {
      answered = await reply(event, timeBudget(context, started), started);
    } catch (err) {
      log("error", `${route} failed`, { connectionId, requestId: context.awsRequestId, error: describeError(err) });
      answered = { code: "unavailable", frame: errorFrame("unavailable", `${route} is unavailable; try again`, undefined, RETRY_MS) };
    }
    const delivery = await deliver(management, connectionId, answered.frame);
    log(answered.code ? "warn" : "info", answered.code ? `${route} refused` : route, { connectionId, requestId: context.awsRequestId, code: answered.code, reply: delivery.outcome, ms: Date.now() - started });
    return { statusCode: 200 };
  };
}
