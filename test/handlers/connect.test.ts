import { DeleteCommand, GetCommand, PutCommand } from "@aws-sdk/lib-dynamodb";
import assert from "node:assert/strict";
import { connectHandlerFactory } from "../../handlers/connect";
import { disconnectHandlerFactory } from "../../handlers/disconnect";
import { EXPIRY_MARGIN_SECONDS, MAX_CONNECTION_SECONDS } from "../../handlers/shared/connections";
import { connectEvent, disconnectEvent, lambdaContext, useEnv, withEnv, withLogs, stubDocumentClient } from "./fixtures";

const ENV = { CONNECTIONS_TABLE: "connections-test", ROOM_INDEX: "byRoom" };

describe("$connect", () => {
  const stub = stubDocumentClient();
  withEnv(ENV);
  const logs = withLogs();
  let ddb: ReturnType<typeof stub>;
  beforeEach(() => {
    ddb = stub();
    ddb.on(PutCommand).resolves({});
  });

  function putItems() {
    return ddb.commandCalls(PutCommand).map((c) => c.args[0].input);
  }

  it("records {connectionId, room, name, connectedAt, expiresAt} with the default room and a guest name", async () => {
    const handler = connectHandlerFactory();
    const event = connectEvent("BFaT_fALIAMCKug=");
    const result = await handler(event, lambdaContext);
    assert.equal(result.statusCode, 200);
    const [put] = putItems();
    assert.equal(put.TableName, "connections-test");
    const item = put.Item!;
    assert.deepEqual(Object.keys(item).sort(), ["connectedAt", "connectionId", "expiresAt", "name", "room"]);
    assert.equal(item.connectionId, "BFaT_fALIAMCKug=");
    assert.equal(item.room, "general");
    assert.match(item.name, /^guest-[0-9a-f]{4}$/);
    assert.equal(item.connectedAt, event.requestContext.connectedAt);
    // TTL in epoch seconds: connect time + the 2 h limit + a margin.
    assert.equal(item.expiresAt, Math.floor(event.requestContext.connectedAt / 1000) + MAX_CONNECTION_SECONDS + EXPIRY_MARGIN_SECONDS);
  });

  it("stores the room and name given in the query string", async () => {
    const result = await connectHandlerFactory()(connectEvent("BFaT_fALIAMCKug=", { room: "ops_team-2", name: "지민" }), lambdaContext);
    assert.equal(result.statusCode, 200);
    assert.equal(putItems()[0].Item!.room, "ops_team-2");
    assert.equal(putItems()[0].Item!.name, "지민");
  });

  const refusals: [string, Record<string, string | string[]>, string][] = [
    ["an empty room", { room: "" }, "invalid_room"],
    ["a room with a path", { room: "../admin" }, "invalid_room"],
    ["a room with query injection", { room: "general&name=admin" }, "invalid_room"],
    ["a 65-character room", { room: "r".repeat(65) }, "invalid_room"],
    ["a room given twice", { room: ["a", "b"] }, "invalid_room"],
    ["a name with markup", { name: "<script>alert(1)</script>" }, "invalid_name"],
    ["a name with spaces", { name: "bob smith" }, "invalid_name"],
    ["a 33-character name", { name: "n".repeat(33) }, "invalid_name"],
    ["a name with a control character", { name: "bob\u0000" }, "invalid_name"],
    ["a name given twice", { name: ["alice", "mallory"] }, "invalid_name"],
  ];
  for (const [what, query, code] of refusals) {
    it(`must refuse ${what} with 400 and write nothing`, async () => {
      const result = await connectHandlerFactory()(connectEvent("BFaT_fALIAMCKug=", query), lambdaContext);
      assert.equal(result.statusCode, 400);
      assert.equal(JSON.parse(result.body!).code, code);
      assert.equal(putItems().length, 0);
    });
  }

  it("answers 500 (not a Lambda error) when the table cannot be written", async () => {
    ddb.on(PutCommand).rejects(Object.assign(new Error("Rate exceeded"), { name: "ProvisionedThroughputExceededException" }));
    const result = await connectHandlerFactory()(connectEvent("BFaT_fALIAMCKug="), lambdaContext);
    assert.equal(result.statusCode, 500);
    assert.ok(logs().some((l) => l.msg === "connect failed" && l.level === "error"));
  });

  it("must fail at cold start, naming the variable, when the table is not configured", () => {
    const restore = useEnv({ CONNECTIONS_TABLE: "" });
    try {
      assert.throws(() => connectHandlerFactory(), /CONNECTIONS_TABLE is required/);
    } finally {
      restore();
    }
  });
});

describe("$disconnect", () => {
  const stub = stubDocumentClient();
  withEnv(ENV);
  const logs = withLogs();
  let ddb: ReturnType<typeof stub>;
  beforeEach(() => (ddb = stub()));

  const RECORD = { connectionId: "BFaT_fALIAMCKug=", room: "general", name: "carol", connectedAt: 0, expiresAt: 9_999_999_999 };

  it("deletes the connection's record and logs the close code", async () => {
    ddb.on(GetCommand).resolves({ Item: RECORD });
    ddb.on(DeleteCommand).resolves({});
    const result = await disconnectHandlerFactory()(disconnectEvent("BFaT_fALIAMCKug=", 1005, "Client-side close frame status not set"), lambdaContext);
    assert.equal(result.statusCode, 200);
    const calls = ddb.commandCalls(DeleteCommand);
    assert.equal(calls.length, 1);
    // Read first (consistently), for the place: a delete's ALL_OLD is lost with its answer.
    assert.deepEqual(ddb.commandCalls(GetCommand)[0].args[0].input, { TableName: "connections-test", Key: { connectionId: "BFaT_fALIAMCKug=" }, ConsistentRead: true });
    assert.deepEqual(calls[0].args[0].input, { TableName: "connections-test", Key: { connectionId: "BFaT_fALIAMCKug=" } });
    assert.ok(logs().some((l) => l.msg === "disconnected" && l.code === 1005));
    assert.equal(calls.length, 1, "a record without a place frees nothing");
  });

  it("frees the place its record held, if it still holds it", async () => {
    ddb.on(GetCommand).resolves({ Item: { ...RECORD, place: "#name#carol#3" } });
    ddb.on(DeleteCommand).resolves({});
    await disconnectHandlerFactory()(disconnectEvent("BFaT_fALIAMCKug="), lambdaContext);
    const [, free] = ddb.commandCalls(DeleteCommand).map((c) => c.args[0].input);
    assert.deepEqual([free.Key, free.ConditionExpression, free.ExpressionAttributeValues], [{ connectionId: "#name#carol#3" }, "holder = :holder", { ":holder": "BFaT_fALIAMCKug=" }]);
  });

  it("is idempotent: a second disconnect for the same id succeeds", async () => {
    ddb.on(GetCommand).resolvesOnce({ Item: RECORD }).resolves({});
    ddb.on(DeleteCommand).resolves({});
    const handler = disconnectHandlerFactory();
    assert.equal((await handler(disconnectEvent("BFaT_fALIAMCKug="), lambdaContext)).statusCode, 200);
    assert.equal((await handler(disconnectEvent("BFaT_fALIAMCKug="), lambdaContext)).statusCode, 200);
    assert.equal(ddb.commandCalls(DeleteCommand).length, 1, "the second finds no record: nothing to delete");
  });

  it("answers 500 and logs when the delete fails (the TTL cleans up later)", async () => {
    ddb.on(GetCommand).resolves({ Item: RECORD });
    ddb.on(DeleteCommand).rejects(new Error("network down"));
    const result = await disconnectHandlerFactory()(disconnectEvent("BFaT_fALIAMCKug="), lambdaContext);
    assert.equal(result.statusCode, 500);
    assert.ok(logs().some((l) => l.msg === "disconnect cleanup failed"));
  });
});
