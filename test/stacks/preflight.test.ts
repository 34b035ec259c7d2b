import assert from "node:assert/strict";
import { stackConfig } from "../../local/program";
import { plannedReservations, reservedConcurrencyProblems, UNRESERVED_MINIMUM } from "../../stacks/preflight";
import { parseSettings, SettingKey } from "../../stacks/settings";

const settingsOf = (stack: string, replace: Partial<Record<SettingKey, string>> = {}) => {
  const config = stackConfig(stack);
  return parseSettings("ws-chat", (key) => replace[key] ?? config[`ws-chat:${key}`]);
};

describe("the reserved-concurrency preflight (pure)", () => {
  it("plans prod's 800 over 11 functions, and nothing on dev", () => {
    const prod = plannedReservations(settingsOf("prod"));
    assert.deepEqual([Object.keys(prod).length, Object.values(prod).reduce((a, b) => a + b, 0)], [11, 800]);
    assert.deepEqual(plannedReservations(settingsOf("dev")), {});
  });

  it("must not count the authorizer's reservation without auth, which creates no authorizer", () => {
    assert.equal(plannedReservations(settingsOf("dev", { reservedConcurrencyAuthorizer: "50" })).authorizer, undefined);
    assert.equal(plannedReservations(settingsOf("dev", { reservedConcurrencyAuthorizer: "50", authEnabled: "true" })).authorizer, 50);
  });

  it("needs the reservations plus the 100 Lambda keeps unreserved, and nothing when nothing is reserved", () => {
    const check = (reservations: Record<string, number>, quota: number) => reservedConcurrencyProblems({ stack: "s", region: "eu-west-1", reservations, quota });
    assert.equal(UNRESERVED_MINIMUM, 100);
    assert.deepEqual(check({}, 10), []);
    assert.deepEqual(check({ typing: 5 }, 105), []);
    assert.deepEqual(check({ typing: 5 }, 104), [
      "s reserves 5 concurrent executions over 1 function; your account's concurrency quota in eu-west-1 is 104; Lambda keeps 100 unreserved; " +
        "ask for quota L-B99A9384 ≥ 105 (Service Quotas: aws service-quotas request-service-quota-increase --service-code lambda --quota-code L-B99A9384 " +
        "--desired-value 105 --region eu-west-1), or set reservedConcurrencyTyping to 0 (pulumi config set <key> 0; docs/deploy-quotas.md)",
    ]);
  });
});
