import assert from "node:assert/strict";
import { requestTokens, TOKEN_WINDOW_MS } from "../../local/transactions";

/** requestTokens with a clock the test moves, and a count of how often it was read. */
function tokens() {
  const clock = { ms: 1_700_000_000_000, reads: 0 };
  const verdictOf = requestTokens(() => {
    clock.reads++;
    return clock.ms;
  });
  const request = (token: string, item = "a") => verdictOf({ ClientRequestToken: token, TransactItems: [{ Put: { TableName: "t", Item: { k: { S: item } } } }] });
  /** Runs a transaction through to its end; returns what the caller would answer. */
  const apply = (token: string, item = "a", applied = true) => {
    const verdict = request(token, item);
    if (verdict.run) verdict.done(applied);
    return verdict;
  };
  return { clock, request, apply };
}

const typeOf = (verdict: ReturnType<ReturnType<typeof tokens>["request"]>) => (verdict.run ? "run" : String((verdict.body as { __type?: string }).__type ?? verdict.status).split("#").pop());

describe("local TransactWriteItems ClientRequestToken (requestTokens)", () => {
  it("answers a repeat within the window as done, refuses other parameters, and one still running", () => {
    const t = tokens();
    const first = t.request("tok");
    assert.equal(typeOf(t.request("tok")), "TransactionInProgressException");
    assert.equal(typeOf(t.request("tok", "b")), "IdempotentParameterMismatchException");
    assert.ok(first.run);
    first.done(true);
    assert.deepEqual(t.request("tok"), { run: false, status: 200, body: {} });
    assert.equal(typeOf(t.request("tok", "b")), "IdempotentParameterMismatchException");
  });

  it("evaluates a repeat of a cancelled transaction again", () => {
    const t = tokens();
    t.apply("tok", "a", false);
    assert.equal(typeOf(t.request("tok", "b")), "run");
  });

  it("forgets a token when the window after its completion has passed, not before", () => {
    const t = tokens();
    t.apply("tok");
    t.clock.ms += TOKEN_WINDOW_MS - 1;
    assert.equal(typeOf(t.request("tok", "b")), "IdempotentParameterMismatchException", "1 ms before the window ends");
    t.clock.ms += 1;
    assert.equal(typeOf(t.apply("tok", "b")), "run", "at the window's end: another request under the same token is new");
    assert.equal(typeOf(t.request("tok", "a")), "IdempotentParameterMismatchException", "and is remembered in turn");
  });

  it("keeps the window per token when the clock is set back (an expired entry behind a live one)", () => {
    const t = tokens();
    t.apply("early");
    t.clock.ms -= 60_000;
    t.apply("late-but-earlier");
    t.clock.ms += TOKEN_WINDOW_MS;
    assert.equal(typeOf(t.request("late-but-earlier", "b")), "run", "expired, though behind a live entry");
    assert.equal(typeOf(t.request("early", "b")), "IdempotentParameterMismatchException", "60 s of its window left");
  });

  it("reads the clock once per request however many tokens it holds (no scan of them all)", () => {
    const t = tokens();
    for (let i = 0; i < 5000; i++) t.apply(`tok-${i}`);
    t.clock.ms += TOKEN_WINDOW_MS / 2;
    t.clock.reads = 0;
    t.request("another");
    assert.equal(t.clock.reads, 1);
  });
});
