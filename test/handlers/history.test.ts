import { GetCommand, QueryCommand, UpdateCommand } from "@aws-sdk/lib-dynamodb";
import assert from "node:assert/strict";
import { historyHandlerFactory } from "../../handlers/history";
import { cursorOf } from "../../handlers/shared/messages";
import { withFakeAws } from "./fake-aws";
import { conditionFailed, lambdaContext, messageEvent, withEnv, withLogs, stubDocumentClient } from "./fixtures";

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
    RATE_LIMIT_MESSAGES: "20",
    RATE_LIMIT_WINDOW_SECONDS: "10",
  });
  withLogs();
  const EPOCH = "Ep0ch-01";
  const stored = (n: number) => ({ room: "ops", cursor: cursorOf(n), id: `id-${n}`, from: { name: "bo" }, message: `m${n}`, ts: 1_700_000_000_000 + n, expiresAt: 9_999_999_999, epoch: EPOCH, numberedAt: 1_700_000_000_000 + n });

  beforeEach(() => {
    ddbStub().on(UpdateCommand, { TableName: "connections-test" }).resolves({ Attributes: { connectionId: CALLER, room: "ops", name: "ann" } });
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
    ddbStub().on(UpdateCommand, { TableName: "connections-test" }).rejects(conditionFailed());
    ddbStub().on(GetCommand, { TableName: "connections-test" }).resolves({});
    assert.deepEqual((await ask({ action: "history" })).map((f) => f.code), ["unknown_connection"]);
  });

  it("must spend the budget on a bad request too: refused as invalid only once admitted", async () => {
    const [frame] = await ask({ action: "history", limit: 0 });
    assert.equal(frame.code, "invalid_history");
    assert.equal(ddbStub().commandCalls(UpdateCommand, { TableName: "connections-test" }).length, 1);
    ddbStub().on(UpdateCommand, { TableName: "connections-test" }).rejects(conditionFailed());
    aws().calls.length = 0;
    assert.equal((await ask({ action: "history", limit: 0 }))[0].code, "rate_limited");
  });

  it("resumes a latest page cut short before its first frame from just before that frame, not from the room's start", async () => {
    ddbStub().on(QueryCommand).resolves({ Items: [stored(5), stored(4)] });
    aws().reply((call) => (call.body?.includes('"m4"') ? { status: 403, type: "ForbiddenException", body: '{"message":"Forbidden"}' } : undefined));
    const frames = (await ask({ action: "history", limit: 2 })).filter((f) => f.message !== "m4");
    assert.deepEqual(frames, [{ type: "history-end", cursor: cursorOf(3), more: true, epoch: EPOCH, retryAfterMs: 1_000 }]);
  });

  it("over the caller's budget, answers rate_limited with retryAfterMs and reads nothing", async () => {
    ddbStub().on(UpdateCommand, { TableName: "connections-test" }).rejects(conditionFailed());
    const [frame] = await ask({ action: "history" });
    assert.equal(frame.code, "rate_limited");
    assert.ok(frame.retryAfterMs > 0 && frame.retryAfterMs <= 10_000);
    assert.equal(ddbStub().commandCalls(QueryCommand).length, 0);
  });

  it("charges a page up front by what it may return (1 + 1 per 50 events asked), then by what it returned beyond that (1 per 64 KB)", async () => {
    const big = (n: number) => ({ ...stored(n), message: "x".repeat(30_000) });
    ddbStub().on(QueryCommand).resolves({ Items: [big(1), big(2), big(3), big(4), big(5)] });
    await ask({ action: "history", since: cursorOf(0) });
    const updates = ddbStub().commandCalls(UpdateCommand, { TableName: "connections-test" }).map((c) => c.args[0].input);
    assert.deepEqual(updates.map((u) => u.ExpressionAttributeValues?.[":cost"] ?? u.ExpressionAttributeValues?.[":units"]), [2, 1], "limit 50: 2 up front; 150 KB of frames: 2 units, 1 of them paid");
  });

  it("must not let a frame @connections refuses as too large block the replay: it becomes an undeliverable tombstone, and history-end follows", async () => {
    ddbStub().on(QueryCommand).resolves({ Items: [stored(1), stored(2), stored(3)] });
    aws().reply((call) => (call.body?.includes('"m2"') ? { status: 413, type: "PayloadTooLargeException", body: '{"message":"Message too long"}' } : undefined));
    const frames = (await ask({ action: "history", since: cursorOf(0) })).filter((f) => f.message !== "m2"); // the refused post
    assert.deepEqual(frames.map((f) => [f.type, f.cursor, f.reason]), [
      ["message", cursorOf(1), undefined],
      ["tombstone", cursorOf(2), "undeliverable"],
      ["message", cursorOf(3), undefined],
      ["history-end", cursorOf(3), undefined],
    ]);
  });

  it("ends a page that cannot be posted with history-end, more:true and a retry hint from the last cursor the caller got", async () => {
    ddbStub().on(QueryCommand).resolves({ Items: [stored(1), stored(2), stored(3)] });
    aws().reply((call) => (call.body?.includes('"m2"') ? { status: 403, type: "ForbiddenException", body: '{"message":"Forbidden"}' } : undefined));
    const frames = (await ask({ action: "history", since: cursorOf(0) })).filter((f) => f.message !== "m2");
    assert.deepEqual(frames.map((f) => f.type), ["message", "history-end"]);
    assert.deepEqual(frames.at(-1), { type: "history-end", cursor: cursorOf(1), more: true, epoch: EPOCH, retryAfterMs: 1_000 });
  });
});
