/**
 * Delivery: one post with retries (`deliver`), and a fan-out over a room with a fixed number of
 * concurrent posts (`broadcast`). Delivery is at least once per live recipient: a retried 5xx may
 * have reached the client already, which is why every message frame carries a server `id`.
 */
import { describeError } from "./errors";
import { log } from "./log";
import { classifyFailure, FailureKind, Management } from "./management";
import type { ConnectionsStore } from "./connections";

export type Outcome = "delivered" | "gone" | "failed";

export interface RetryPolicy {
  /** Total attempts, the first included. */
  attempts: number;
  baseDelayMs: number;
  maxDelayMs: number;
}

export const DEFAULT_RETRY: RetryPolicy = { attempts: 4, baseDelayMs: 40, maxDelayMs: 800 };

export interface Delivery {
  outcome: Outcome;
  attempts: number;
  /** Why the last attempt failed, for the log; absent when delivered. */
  failure?: FailureKind;
  error?: string;
}

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/** Posts once, retrying 429, 5xx and network errors with exponential backoff and full jitter. */
export async function deliver(management: Management, connectionId: string, data: string, policy: RetryPolicy = DEFAULT_RETRY): Promise<Delivery> {
  for (let attempt = 1; ; attempt++) {
    try {
      await management.post(connectionId, data);
      return { outcome: "delivered", attempts: attempt };
    } catch (err) {
      const failure = classifyFailure(err);
      const error = `${(err as Error)?.name}: ${(err as Error)?.message}`;
      if (failure === "gone") return { outcome: "gone", attempts: attempt, failure, error };
      if (failure !== "retryable" || attempt >= policy.attempts) return { outcome: "failed", attempts: attempt, failure, error };
      const ceiling = Math.min(policy.maxDelayMs, policy.baseDelayMs * 2 ** (attempt - 1));
      await sleep(Math.random() * ceiling);
    }
  }
}

export interface FanoutStats {
  recipients: number;
  delivered: number;
  stale: number;
  failed: number;
}

export interface BroadcastOptions {
  /** Pages of connection ids, as the store's paginated Query yields them. */
  pages: AsyncIterable<string[]>;
  /** Never posted to: the sender. */
  exclude: string;
  data: string;
  concurrency: number;
  management: Management;
  /** Called once per recipient that answered 410, to remove its stale record. */
  onGone(connectionId: string): Promise<void>;
  /** Called once per recipient that could not be reached after retries. */
  onFailed?(connectionId: string, delivery: Delivery): void;
  retry?: RetryPolicy;
  /** Epoch ms after which no new post starts (the caller's time budget): the rest get it from history. */
  until?: number;
}

async function* recipientsOf(pages: AsyncIterable<string[]>, exclude: string): AsyncGenerator<string, void, undefined> {
  for await (const page of pages) {
    for (const id of page) if (id !== exclude) yield id;
  }
}

/**
 * Sends `data` to every recipient with at most `concurrency` posts in flight. Workers pull from
 * one shared iterator, so pages are fetched only as fast as they are delivered and memory stays
 * flat whatever the room size. One recipient's failure never stops the others. If reading the
 * room fails part-way, the posts already started finish first, then the error is thrown.
 */
export async function broadcast(options: BroadcastOptions): Promise<FanoutStats> {
  const stats: FanoutStats = { recipients: 0, delivered: 0, stale: 0, failed: 0 };
  const recipients = recipientsOf(options.pages, options.exclude);
  // Bound once: the worker runs per recipient (serialized code; aws-http.ts, createSigner).
  const { Date } = globalThis;
  const deliverOne = deliver;

  async function worker(): Promise<void> {
    for (;;) {
      if (options.until !== undefined && Date.now() >= options.until) return;
      const next = await recipients.next();
      if (next.done) return;
      stats.recipients++;
      const delivery = await deliverOne(options.management, next.value, options.data, options.retry);
      if (delivery.outcome === "delivered") {
        stats.delivered++;
      } else if (delivery.outcome === "gone") {
        stats.stale++;
        await options.onGone(next.value);
      } else {
        stats.failed++;
        options.onFailed?.(next.value, delivery);
      }
    }
  }

  const results = await Promise.allSettled(Array.from({ length: options.concurrency }, worker));
  const rejected = results.find((r): r is PromiseRejectedResult => r.status === "rejected");
  if (rejected) throw rejected.reason;
  return stats;
}

export type MemberBroadcast = (pages: AsyncIterable<string[]>, exclude: string, data: string, until?: number) => Promise<FanoutStats>;

/**
 * `broadcast` with the handlers' policy: a 410 removes that member's record unless it connected
 * within CONNECT_GRACE_MS (a member whose `$connect` is still running also answers 410; it gets the
 * message from `history`); a failure is logged.
 */
export function memberBroadcast(management: Management, concurrency: number, store: Pick<ConnectionsStore, "removeStale">): MemberBroadcast {
  return (pages, exclude, data, until) =>
    broadcast({
      pages,
      exclude,
      data,
      until,
      concurrency,
      management,
      async onGone(connectionId) {
        try {
          if (!(await store.removeStale(connectionId, Date.now()))) log("info", "410, record kept: connected too recently to be stale, or already gone", { connectionId });
        } catch (err) {
          log("warn", "stale record not removed", { connectionId, error: describeError(err) });
        }
      },
      onFailed(connectionId, delivery) {
        log("warn", "delivery failed", { connectionId, attempts: delivery.attempts, failure: delivery.failure, error: delivery.error });
      },
    });
}

/** One page, for delivering a list already in hand. */
export async function* onePage(connectionIds: string[]): AsyncGenerator<string[], void, undefined> {
  yield connectionIds;
}
