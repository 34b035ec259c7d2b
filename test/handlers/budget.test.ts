import assert from "node:assert/strict";
import { broadcast } from "../../handlers/shared/broadcaster";
import { isDeadline, MAX_ANSWER_RESERVE_MS, timeBudget } from "../../handlers/shared/budget";

const remaining = (ms: number) => ({ getRemainingTimeInMillis: () => ms });

describe("time budgets (handlers/shared/budget.ts)", () => {
  it("keeps a reserve for the last answer: at most 1.5 s, at most a quarter of the time left", () => {
    assert.equal(timeBudget(remaining(29_000), 0).deadline, 29_000 - MAX_ANSWER_RESERVE_MS);
    assert.equal(timeBudget(remaining(2_000), 0).deadline, 1_500);
  });

  it("passes a step's result through, and must fail a step that outruns the budget with a deadline error naming it", async () => {
    const budget = timeBudget(remaining(40));
    assert.equal(await budget.step("quick", Promise.resolve(7)), 7);
    const never = new Promise<never>(() => undefined);
    await assert.rejects(budget.step("the append", never), (err: unknown) => isDeadline(err) && /the append did not finish/.test((err as Error).message));
  });

  it("passes a step's own failure through unchanged", async () => {
    await assert.rejects(timeBudget(remaining(10_000)).step("x", Promise.reject(new Error("boom"))), /^Error: boom$/);
  });
});

describe("a broadcast within a time budget", () => {
  const management = (posted: string[]) => ({ post: async (id: string) => void posted.push(id), getConnection: async () => ({}) });
  async function* pages() {
    yield ["a", "b", "c"];
  }

  it("must start no post once `until` has passed (a fan-out cut short stops, instead of posting on in the background)", async () => {
    const posted: string[] = [];
    const stats = await broadcast({ pages: pages(), exclude: "", data: "x", concurrency: 1, management: management(posted), onGone: async () => undefined, until: Date.now() - 1 });
    assert.deepEqual([posted, stats.recipients], [[], 0]);
    await broadcast({ pages: pages(), exclude: "", data: "x", concurrency: 1, management: management(posted), onGone: async () => undefined, until: Date.now() + 60_000 });
    assert.deepEqual(posted, ["a", "b", "c"]);
  });
});
