/**
 * Time budgets: every handler answers its caller before Lambda's timeout, so a slow dependency
 * ends in a documented `{"type":"error","code":"unavailable",…}` frame and one log line, never in
 * API Gateway's "Internal server error".
 *
 * The budget is the invocation's remaining time minus a reserve kept for that last answer. A step
 * that overruns it is abandoned (its promise is left to settle on its own): the DynamoDB client's
 * request timeout and the post retries bound how long that can be, and a resend with the same
 * client id is stored once, so an abandoned append that completes later is never a duplicate. (A
 * message sent without an id has no such guarantee, here or anywhere: the page always sends one.)
 * On Lambda, work abandoned this way is frozen with the instance and may finish at its next run.
 */
import type { Context } from "aws-lambda";
import { chatError, isChatError } from "./errors";

/** At most this much of the remaining time is kept for the final answer… */
export const MAX_ANSWER_RESERVE_MS = 1_500;
/** …and at most this share of it (a short timeout still leaves most of it for the work). */
const ANSWER_RESERVE_SHARE = 0.25;

export interface TimeBudget {
  /** Epoch milliseconds by which the work must be done. */
  readonly deadline: number;
  /** Runs one step, failing with a `deadline` ChatError when the budget runs out first. */
  step<T>(name: string, work: Promise<T>): Promise<T>;
}

export function timeBudget(context: Pick<Context, "getRemainingTimeInMillis">, now = Date.now()): TimeBudget {
  const remaining = context.getRemainingTimeInMillis();
  const deadline = now + remaining - Math.min(MAX_ANSWER_RESERVE_MS, remaining * ANSWER_RESERVE_SHARE);
  return {
    deadline,
    step(name, work) {
      const left = deadline - Date.now();
      let timer: NodeJS.Timeout | undefined;
      const expired = new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(chatError("deadline", `${name} did not finish within the function's time budget`, 503)), Math.max(0, left));
      });
      return Promise.race([work, expired]).finally(() => clearTimeout(timer));
    },
  };
}

export function isDeadline(err: unknown): boolean {
  return isChatError(err) && err.code === "deadline";
}
