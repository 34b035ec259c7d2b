import assert from "node:assert/strict";
import { apiMessageDollars, costTable, monthlyCost, PROD, SIZES } from "../../scripts/monthly-cost";

describe("the monthly cost model", () => {
  it("counts every delivery as an API Gateway message: R + 1 a chat message and R a typing signal in a room of R", () => {
    const { apiMessages, invocations } = monthlyCost({ people: 1, hoursPerDay: 2, days: 1, messagesPerDay: 10, roomSize: 10 });
    // 10 messages × (11 + 10), and one connection's join and leave to 10 members.
    assert.equal(apiMessages, 10 * 21 + 2 * 10);
    assert.equal(invocations, 10 * 2 + 5);
  });

  it("bills messages past the first billion of a month at the lower price", () => {
    assert.equal(apiMessageDollars(1e9), 1_000);
    assert.ok(Math.abs(apiMessageDollars(2e9) - 1_800) < 1e-6);
  });

  it("charges arm64 20% less per GB-second than x86_64, and the same per request", () => {
    const usage = SIZES["a large service"];
    const arm = monthlyCost(usage, PROD).dollars.lambda;
    const x86 = monthlyCost(usage, { ...PROD, architecture: "x86_64" }).dollars.lambda;
    const requests = monthlyCost(usage).invocations * 0.2e-6;
    assert.ok(Math.abs((arm - requests) / (x86 - requests) - 0.8) < 1e-4);
  });

  it("prints one row a size, each with a total that is the sum of its parts", () => {
    const lines = costTable().split("\n");
    assert.equal(lines.length, 2 + Object.keys(SIZES).length);
    for (const usage of Object.values(SIZES)) {
      const { dollars } = monthlyCost(usage);
      assert.ok(Math.abs(dollars.total - (dollars.apiMessages + dollars.connectionMinutes + dollars.lambda + dollars.dynamodb + dollars.alarms)) < 1e-9);
    }
  });
});
