import { GetCommand, QueryCommand } from "@aws-sdk/lib-dynamodb";
import assert from "node:assert/strict";
import { historyHandlerFactory } from "../../handlers/history";
import { cursorOf } from "../../handlers/shared/messages";
import { withFakeAws } from "./fake-aws";
import { lambdaContext, messageEvent, withEnv, withLogs, stubDocumentClient } from "./fixtures";

const CALLER = "BFaT_fALIAMCKug=";

describe("history", () => {
  const ddbStub = stubDocumentClient();
  const aws = withFakeAws();
  withEnv({
    CONNECTIONS_TABLE: "connections-test",
    ROOM_INDEX: "byRoom",
    MESSAGES_TABLE: "messages-test",
    HOLE_GRACE_MS: "15000",
    HISTORY_RETENTION_DAYS: "1",
  });
  withLogs();
  const EPOCH = "Ep0ch-01";
  const stored = (n: number) => ({ room: "ops", cursor: cursorOf(n), id: `id-${n}`, from: { name: "bo" }, message: `m${n}`, ts: 1_700_000_000_000 + n, expiresAt: 9_999_999_999, epoch: EPOCH, numberedAt: 1_700_000_000_000 + n });

  beforeEach(() => {
    ddbStub().on(GetCommand, { TableName: "connections-test" }).resolves({ Item: { connectionId: CALLER, room: "ops", name: "ann" } });
    ddbStub().on(GetCommand, { TableName: "messages-test" }).resolves({ Item: { room: "ops", cursor: "#head", seq: 5, epoch: EPOCH } });
  });

  async function ask(body: unknown) {
    await historyHandlerFactory()(messageEvent(CALLER, JSON.stringify(body), "history"), lambdaContext);
    return aws().posts().map((p) => JSON.parse(p.data));
  }

  it("replays the caller's room after since, in order, as message frames, then history-end", async () => {
    ddbStub().on(QueryCommand).resolves({ Items: [stored(3), stored(4), stored(5)] });
    const frames = await ask({ action: "history", since: cursorOf(2), limit: 2 });
    assert.deepEqual(frames, [
      { type: "message", room: "ops", from: { name: "bo" }, message: "m3", ts: 1_700_000_000_003, id: "id-3", cursor: cursorOf(3), epoch: EPOCH },
      { type: "message", room: "ops", from: { name: "bo" }, message: "m4", ts: 1_700_000_000_004, id: "id-4", cursor: cursorOf(4), epoch: EPOCH },
      { type: "history-end", cursor: cursorOf(4), more: true, epoch: EPOCH },
    ]);
    const query = ddbStub().commandCalls(QueryCommand)[0].args[0].input;
    assert.deepEqual(query.ExpressionAttributeValues, { ":room": "ops", ":from": cursorOf(3), ":to": "9".repeat(16) });
    assert.equal(query.Limit, 3);
    assert.equal(query.ScanIndexForward, true);
  });

  it("replays a tombstone as a tombstone frame, and stops before a number still being written, with a retry hint", async () => {
    const tombstone = { room: "ops", cursor: cursorOf(2), type: "tombstone", epoch: EPOCH, numberedAt: 1, expiresAt: 9_999_999_999 };
    // 3 is missing and 4 was numbered just now: 3's sender may still be writing it.
    ddbStub().on(QueryCommand).resolves({ Items: [stored(1), tombstone, { ...stored(4), numberedAt: Date.now() }] });
    const frames = await ask({ action: "history", since: cursorOf(0) });
    assert.deepEqual(frames.map((f) => [f.type, f.cursor]), [["message", cursorOf(1)], ["tombstone", cursorOf(2)], ["history-end", cursorOf(2)]]);
    assert.deepEqual(frames.at(-1), { type: "history-end", cursor: cursorOf(2), more: true, epoch: EPOCH, retryAfterMs: 250 });
  });

  it("answers an empty room's history with a null cursor and epoch", async () => {
    ddbStub().on(GetCommand, { TableName: "messages-test" }).resolves({});
    assert.deepEqual(await ask({ action: "history" }), [{ type: "history-end", cursor: null, more: false, epoch: null }]);
    assert.equal(ddbStub().commandCalls(QueryCommand).length, 0);
  });

  it("caps limit at 100", async () => {
    ddbStub().on(QueryCommand).resolves({ Items: [] });
    await ask({ action: "history", limit: 5000 });
    assert.equal(ddbStub().commandCalls(QueryCommand)[0].args[0].input.Limit, 100);
  });

  const invalid: [string, unknown][] = [
    ["a since that is not a cursor", { action: "history", since: "yesterday" }],
    ["a numeric since", { action: "history", since: 12 }],
    ["a zero limit", { action: "history", limit: 0 }],
    ["a fractional limit", { action: "history", limit: 2.5 }],
    ["a string limit", { action: "history", limit: "10" }],
  ];
  for (const [what, body] of invalid) {
    it(`answers ${what} with invalid_history`, async () => {
      const frames = await ask(body);
      assert.deepEqual(frames.map((f) => [f.type, f.code]), [["error", "invalid_history"]]);
      assert.equal(ddbStub().commandCalls(QueryCommand).length, 0);
    });
  }

  it("answers unknown_connection for a caller with no record", async () => {
    ddbStub().on(GetCommand, { TableName: "connections-test" }).resolves({});
    assert.deepEqual((await ask({ action: "history" })).map((f) => f.code), ["unknown_connection"]);
  });
});
