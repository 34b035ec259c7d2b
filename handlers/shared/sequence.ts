/**
 * The rules of a room's sequence, as pure functions: which numbers a history page may pass over.
 *
 * Numbers are taken from an atomic counter before the event is stored, so for a moment a number
 * can be taken but not yet stored (its sender is still writing it), and a sender that dies in that
 * moment leaves it empty for good. A missing number is **settled** once a later number of the same
 * epoch was taken more than the grace ago: every sender is bound by its function timeout, which
 * the grace exceeds, so the taker of the missing number has stopped. History passes over settled
 * numbers only (writing a tombstone under each, so a writer slower than any timeout still cannot
 * fill it), and stops at the first unsettled one, saying `more` so the client asks again.
 */

/** The fields of a stored item the rules read. */
export interface SequencedItem {
  cursor: string;
  /** When its number was taken (epoch ms); older items lack it and fall back to `ts`. */
  numberedAt?: number;
  ts?: number;
  /** TTL, epoch seconds. An expired item is settled but no longer sent. */
  expiresAt?: number;
}

export interface SettledPage<T extends SequencedItem> {
  /** What to send, in order: items and the numbers to tombstone, interleaved. */
  steps: ({ kind: "item"; item: T } | { kind: "tombstone"; seq: number; numberedAt: number })[];
  /** The last number settled by this page (the client's new cursor); `since` when none. */
  last: number;
  /** Stopped at a number that may still be written: ask again shortly. */
  pending: boolean;
  /** Stopped because the page is full. */
  full: boolean;
}

/**
 * Walks `items` (ascending, one epoch, each numbered above `since`) and decides what a page sends.
 * `limit` counts the steps sent; a run of more than `maxTombstones` settled numbers in a row is
 * passed over without tombstones (it can only be expired history: see messages.ts).
 */
export function settlePage<T extends SequencedItem>(
  items: T[],
  since: number,
  opts: { limit: number; nowMs: number; graceMs: number; maxTombstones: number; numberOf: (cursor: string) => number },
): SettledPage<T> {
  const steps: SettledPage<T>["steps"] = [];
  let expected = since + 1;
  const nowSeconds = Math.floor(opts.nowMs / 1000);
  for (const item of items) {
    const seq = opts.numberOf(item.cursor);
    if (seq < expected) continue; // not expected from a well-formed query; never sent twice
    if (seq > expected) {
      const numberedAt = item.numberedAt ?? item.ts ?? opts.nowMs;
      if (opts.nowMs - numberedAt <= opts.graceMs) return { steps, last: expected - 1, pending: true, full: false };
      const run = seq - expected;
      if (run <= opts.maxTombstones) {
        for (let missing = expected; missing < seq; missing++) {
          if (steps.length >= opts.limit) return { steps, last: missing - 1, pending: false, full: true };
          steps.push({ kind: "tombstone", seq: missing, numberedAt });
        }
      }
      expected = seq;
    }
    const expired = item.expiresAt !== undefined && item.expiresAt <= nowSeconds;
    if (!expired) {
      if (steps.length >= opts.limit) return { steps, last: expected - 1, pending: false, full: true };
      steps.push({ kind: "item", item });
    }
    expected = seq + 1;
  }
  return { steps, last: expected - 1, pending: false, full: false };
}
