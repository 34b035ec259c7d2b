import { GetCommand, UpdateCommand } from "@aws-sdk/lib-dynamodb";
import assert from "node:assert/strict";
import { defaultHandlerFactory } from "../../handlers/default";
import { FORBIDDEN, GONE, withFakeAws } from "./fake-aws";
import { conditionFailed, lambdaContext, messageEvent, stubDocumentClient, withEnv, withLogs } from "./fixtures";

const CALLER = "BFaT_fALIAMCKug=";

describe("$default", () => {
  const aws = withFakeAws();
  const logs = withLogs();
  const ddb = stubDocumentClient();
  withEnv({ CONNECTIONS_TABLE: "connections-test", ROOM_INDEX: "byRoom", RATE_LIMIT_MESSAGES: "5", RATE_LIMIT_WINDOW_SECONDS: "10" });
  const RECORD = { connectionId: CALLER, room: "general", name: "ann", rlWindow: 1, rlCount: 1 };
  beforeEach(() => ddb().on(UpdateCommand).resolves({ Attributes: RECORD }));
  // GetConnection's answer, as API Gateway sends it.
  const CONNECTION = JSON.stringify({
    connectedAt: "2024-11-11T11:35:19.000Z",
    identity: { sourceIp: "203.0.113.7", userAgent: "wscat/6.1.0" },
    lastActiveAt: "2024-11-11T11:35:24.000Z",
  });
  beforeEach(() => aws().reply((call) => (call.method === "GET" ? { status: 200, body: CONNECTION } : undefined)));

  function posts() {
    return aws().posts();
  }

  async function send(body: string) {
    const result = await defaultHandlerFactory()(messageEvent(CALLER, body, "$default"), lambdaContext);
    assert.equal(result.statusCode, 200);
    return posts();
  }

  it("answers the second seed's echo action with the text frame 'Echo: <data>'", async () => {
    assert.deepEqual(await send(JSON.stringify({ action: "echo", data: "hi" })), [{ to: CALLER, data: "Echo: hi" }]);
    assert.equal(aws().calls.filter((c) => c.method === "GET").length, 0);
  });

  it("answers echo without string data with an invalid_data error frame", async () => {
    const [reply] = await send(JSON.stringify({ action: "echo", data: { nested: true } }));
    assert.deepEqual(JSON.parse(reply.data), { type: "error", code: "invalid_data", message: "echo needs a string in data" });
  });

  const usageCases: [string, string, string][] = [
    ["non-JSON text", "hello there", "not_json"],
    ["a JSON array", "[1,2,3]", "not_object"],
    ["a JSON string", '"sendmessage"', "not_object"],
    ["an object without action", '{"message":"hi"}', "missing_action"],
    ["an unknown action", '{"action":"shout","message":"hi"}', "unknown_action"],
    ["a non-string action", '{"action":42}', "unknown_action"],
    ["a __proto__ key", '{"__proto__":{"action":"echo"},"data":"x"}', "missing_action"],
  ];
  for (const [what, body, reason] of usageCases) {
    it(`answers ${what} with a usage frame that carries the caller's connection info`, async () => {
      const replies = await send(body);
      assert.equal(replies.length, 1);
      assert.equal(replies[0].to, CALLER);
      const frame = JSON.parse(replies[0].data);
      assert.equal(frame.type, "usage");
      assert.equal(frame.reason, reason);
      assert.match(frame.message, /sendmessage/);
      assert.deepEqual(Object.keys(frame.actions), ["sendmessage", "history", "echo", "edit", "delete", "typing", "members", "read"]);
      assert.equal(frame.actions.sendmessage.action, "sendmessage");
      assert.equal(frame.actions.history.action, "history");
      assert.deepEqual(frame.actions.echo, { action: "echo", data: "<text>" });
      assert.deepEqual(frame.connection, {
        connectionId: CALLER,
        connectedAt: "2024-11-11T11:35:19.000Z",
        lastActiveAt: "2024-11-11T11:35:24.000Z",
        identity: { sourceIp: "203.0.113.7", userAgent: "wscat/6.1.0" },
      });
      assert.deepEqual(aws().calls.filter((c) => c.method === "GET").map((c) => c.connectionId), [CALLER]);
    });
  }

  it("still answers with usage when GetConnection fails (unlike the tutorial, which crashed)", async () => {
    aws().reply((call) => (call.method === "GET" ? FORBIDDEN : undefined));
    const [reply] = await send("not json");
    assert.deepEqual(JSON.parse(reply.data).connection, { connectionId: CALLER });
  });

  it("spends one unit of the caller's budget on every frame, echo or not", async () => {
    await send('{"action":"echo","data":"x"}');
    await send("junk");
    const spent = ddb().commandCalls(UpdateCommand).map((c) => c.args[0].input);
    assert.deepEqual(spent.map((u) => [u.Key, u.ExpressionAttributeValues?.[":cost"]]), [[{ connectionId: CALLER }, 1], [{ connectionId: CALLER }, 1]]);
  });

  it("over the budget, answers rate_limited with the time until the next window, and echoes nothing", async () => {
    ddb().on(UpdateCommand).rejects(conditionFailed());
    ddb().on(GetCommand).resolves({ Item: RECORD });
    const [reply] = await send('{"action":"echo","data":"x"}');
    const frame = JSON.parse(reply.data);
    assert.equal(frame.code, "rate_limited");
    assert.ok(frame.retryAfterMs > 0 && frame.retryAfterMs <= 10_000);
  });

  it("answers an unknown connection with unknown_connection, and a failing store with unavailable", async () => {
    ddb().on(UpdateCommand).rejects(conditionFailed());
    ddb().on(GetCommand).resolves({});
    assert.equal(JSON.parse((await send("junk"))[0].data).code, "unknown_connection");
    aws().calls.length = 0;
    ddb().on(UpdateCommand).rejects(Object.assign(new Error("boom"), { name: "InternalServerError", $metadata: { httpStatusCode: 500 } }));
    const [reply] = await send('{"action":"echo","data":"x"}');
    assert.deepEqual([JSON.parse(reply.data).code, JSON.parse(reply.data).retryAfterMs], ["unavailable", 1_000]);
  });

  it("does not throw when the caller is already gone", async () => {
    aws().reply((call) => (call.method === "POST" ? GONE : undefined));
    await send('{"action":"echo","data":"x"}');
    assert.ok(logs().some((l) => l.msg === "default route" && l.outcome === "gone"));
  });
});
