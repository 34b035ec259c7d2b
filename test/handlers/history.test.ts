import { DynamoDBDocumentClient, GetCommand, QueryCommand } from "@aws-sdk/lib-dynamodb";
import { mockClient } from "aws-sdk-client-mock";
import assert from "node:assert/strict";
import { historyHandlerFactory } from "../../handlers/history";
import { cursorOf } from "../../handlers/shared/messages";
import { withFakeAws } from "./fake-aws";
import { lambdaContext, messageEvent, stubClient, withEnv, withLogs } from "./fixtures";

const CALLER = "BFaT_fALIAMCKug=";

describe("history", () => {
  const ddbStub = stubClient(() => mockClient(DynamoDBDocumentClient));
  const aws = withFakeAws();
  withEnv({
    CONNECTIONS_TABLE: "connections-test",
    ROOM_INDEX: "byRoom",
    MESSAGES_TABLE: "messages-test",
    HISTORY_RETENTION_DAYS: "1",
  });
  withLogs();
  const stored = (n: number) => ({ room: "ops", cursor: cursorOf(n), id: `id-${n}`, from: { name: "bo" }, message: `m${n}`, ts: 1_700_000_000_000 + n, expiresAt: 9_999_999_999 });

  beforeEach(() => {
    ddbStub().on(GetCommand).resolves({ Item: { connectionId: CALLER, room: "ops", name: "ann" } });
  });

  async function ask(body: unknown) {
    await historyHandlerFactory()(messageEvent(CALLER, JSON.stringify(body), "history"), lambdaContext);
    return aws().posts().map((p) => JSON.parse(p.data));
  }

  it("replays the caller's room after since, in order, as message frames, then history-end", async () => {
    ddbStub().on(QueryCommand).resolves({ Items: [stored(3), stored(4), stored(5)] });
    const frames = await ask({ action: "history", since: cursorOf(2), limit: 2 });
    assert.deepEqual(frames, [
      { type: "message", room: "ops", from: { name: "bo" }, message: "m3", ts: 1_700_000_000_003, id: "id-3", cursor: cursorOf(3) },
      { type: "message", room: "ops", from: { name: "bo" }, message: "m4", ts: 1_700_000_000_004, id: "id-4", cursor: cursorOf(4) },
      { type: "history-end", cursor: cursorOf(4), more: true },
    ]);
    const query = ddbStub().commandCalls(QueryCommand)[0].args[0].input;
    assert.deepEqual(query.ExpressionAttributeValues, { ":room": "ops", ":from": cursorOf(3), ":to": "9".repeat(16) });
    assert.equal(query.Limit, 3);
    assert.equal(query.ScanIndexForward, true);
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
    ddbStub().on(GetCommand).resolves({});
    assert.deepEqual((await ask({ action: "history" })).map((f) => f.code), ["unknown_connection"]);
  });
});
