import assert from "node:assert/strict";
import { readProjectFile, stackConfig } from "../../local/program";
import { RANGES } from "../../handlers/shared/env";
import { parseSettings, SETTINGS_SCHEMA, SettingKey, SettingsError } from "../../stacks/settings";

const NS = "ws-chat";

/** A ConfigSource over the config the CLI would give a stack, with some keys replaced. */
function sourceFor(stack: string, replace: Partial<Record<SettingKey, string | undefined>> = {}) {
  const config = stackConfig(stack);
  return (key: SettingKey) => (key in replace ? replace[key] : config[`${NS}:${key}`]);
}

describe("stack settings", () => {
  it("parses dev and prod with the values their files set", () => {
    const dev = parseSettings(NS, sourceFor("dev"));
    const prod = parseSettings(NS, sourceFor("prod"));
    assert.equal(dev.stageName, "dev");
    assert.equal(prod.stageName, "prod");
    assert.equal(dev.tableProtection, false);
    assert.equal(prod.tableProtection, true);
    assert.equal(prod.logRetentionDays, 90);
    assert.equal(typeof prod.lambdaMemoryMb, "number");
    // arm64 by default; neither stack owns API Gateway's account-wide role; only prod logs its stage.
    assert.deepEqual([dev.lambdaArchitecture, prod.lambdaArchitecture], ["arm64", "arm64"]);
    assert.deepEqual([dev.manageApiGatewayAccount, prod.manageApiGatewayAccount], [false, false]);
    assert.deepEqual([dev.stageLogging, prod.stageLogging], [false, true]);
  });

  it("declares every setting in Pulumi.yaml with the same type and description, and a valid default", () => {
    const declared = readProjectFile().config ?? {};
    assert.deepEqual(Object.keys(declared).sort(), Object.keys(SETTINGS_SCHEMA).sort());
    for (const [key, spec] of Object.entries(SETTINGS_SCHEMA)) {
      assert.equal(declared[key].type, spec.type, `${key}: type`);
      assert.equal(declared[key].description, spec.description, `${key}: description`);
      assert.notEqual(declared[key].default, undefined, `${key}: default`);
    }
    // The defaults alone make a valid stack.
    const defaults = (key: SettingKey) => String(declared[key].default);
    assert.doesNotThrow(() => parseSettings(NS, defaults));
  });

  const bad: [SettingKey, string | undefined, RegExp][] = [
    ["throttlingBurstLimit", "-1", /ws-chat:throttlingBurstLimit must be an integer from 0 to 5000; got "-1"/],
    ["throttlingBurstLimit", "lots", /ws-chat:throttlingBurstLimit must be an integer from 0 to 5000; got "lots"/],
    ["throttlingRateLimit", "10001", /ws-chat:throttlingRateLimit must be an integer from 0 to 10000/],
    ["logRetentionDays", "10", /ws-chat:logRetentionDays must be one of 1, 3, 5, 7, 14, 30/],
    ["lambdaMemoryMb", "64", /ws-chat:lambdaMemoryMb must be an integer from 128 to 10240/],
    ["lambdaMemoryMb", "256.5", /ws-chat:lambdaMemoryMb must be an integer from 128 to 10240; got "256.5"/],
    ["lambdaTimeoutSeconds", "30", /ws-chat:lambdaTimeoutSeconds must be an integer from 1 to 29/],
    ["tableProtection", "yes", /ws-chat:tableProtection must be true or false; got "yes"/],
    ["maxMessageBytes", "0", /ws-chat:maxMessageBytes must be an integer from 1024 to 32000/],
    ["maxMessageBytes", "32768", /ws-chat:maxMessageBytes must be an integer from 1024 to 32000; got "32768"/],
    ["maxMessageBytes", "", /ws-chat:maxMessageBytes must be an integer from 1024 to 32000; got ""/],
    ["fanoutConcurrency", "1000", /ws-chat:fanoutConcurrency must be an integer from 1 to 512/],
    ["stageName", "my stage", /ws-chat:stageName must be 1-128 characters of A-Z, a-z, 0-9, _ or -; got "my stage"/],
    ["apiLoggingLevel", "DEBUG", /ws-chat:apiLoggingLevel must be one of OFF, ERROR, INFO; got "DEBUG"/],
    ["lambdaArchitecture", "x86", /ws-chat:lambdaArchitecture must be one of arm64, x86_64; got "x86"/],
    ["stageName", undefined, /ws-chat:stageName is not set/],
    ["presenceLimit", "0", /ws-chat:presenceLimit must be an integer from 1 to 1000; got "0"/],
    ["presenceLimit", "1001", /ws-chat:presenceLimit must be an integer from 1 to 1000; got "1001"/],
    ["typingIntervalSeconds", "61", /ws-chat:typingIntervalSeconds must be an integer from [\d.]+ to 60; got "61"/],
    ["typingIntervalSeconds", "0", /ws-chat:typingIntervalSeconds must be an integer from [\d.]+ to 60; got "0"/],
    ["editWindowMinutes", "0", /ws-chat:editWindowMinutes must be an integer from 1 to 10080; got "0"/],
    ["editWindowMinutes", "10081", /ws-chat:editWindowMinutes must be an integer from 1 to 10080; got "10081"/],
    ["reservedConcurrencyPresence", "-1", /ws-chat:reservedConcurrencyPresence must be an integer from 0 to 10000; got "-1"/],
  ];
  for (const [key, value, message] of bad) {
    it(`must reject ${key}=${JSON.stringify(value)} with a message naming the key and the allowed values`, () => {
      assert.throws(() => parseSettings(NS, sourceFor("dev", { [key]: value })), (err: unknown) => {
        assert.ok(err instanceof SettingsError);
        assert.match(err.message, message);
        return true;
      });
    });
  }

  it("must not accept a presence, typing or edit setting its handlers refuse: both ends, converted as the program converts them, are within the handlers' ranges", () => {
    const conversions: [SettingKey, keyof typeof RANGES, number][] = [
      ["presenceLimit", "presenceLimit", 1],
      ["typingIntervalSeconds", "typingIntervalMs", 1000],
      ["editWindowMinutes", "editWindowMs", 60_000],
    ];
    for (const [key, handlerKey, factor] of conversions) {
      const { min, max } = SETTINGS_SCHEMA[key] as { min: number; max: number };
      const [lowest, highest] = [Math.ceil(min), Math.floor(max)]; // the whole numbers the setting accepts
      for (const end of [lowest, highest]) {
        const value = (parseSettings(NS, sourceFor("dev", { [key]: String(end) }))[key] as number) * factor;
        assert.ok(value >= RANGES[handlerKey].min && value <= RANGES[handlerKey].max, `${key}=${end} gives ${value}, outside the handlers' ${handlerKey}`);
      }
      for (const outside of [lowest - 1, highest + 1]) {
        assert.throws(() => parseSettings(NS, sourceFor("dev", { [key]: String(outside) })), SettingsError, `${key}=${outside}`);
      }
    }
  });

  it("reports every invalid setting at once", () => {
    assert.throws(
      () => parseSettings(NS, sourceFor("prod", { lambdaMemoryMb: "1", tableProtection: "maybe" })),
      (err: unknown) => err instanceof SettingsError && err.problems.length === 2,
    );
  });
});
