import { ConditionalCheckFailedException, TransactionCanceledException } from "@aws-sdk/client-dynamodb";
import { DeleteCommand, DynamoDBDocumentClient, GetCommand, QueryCommand, ScanCommand, TransactWriteCommand, UpdateCommand } from "@aws-sdk/lib-dynamodb";
import { mockClient } from "aws-sdk-client-mock";
import assert from "node:assert/strict";
import { sendMessageHandlerFactory } from "../../handlers/sendmessage";
import { CONNECT_GRACE_MS } from "../../handlers/shared/connections";
import { APPEND_BUDGET_MS } from "../../handlers/shared/messages";
import { FORBIDDEN, GONE, SERVER_ERROR, THROTTLED, withFakeAws } from "./fake-aws";
import { connId, lambdaContext, messageEvent, stubClient, useEnv, withEnv, withLogs } from "./fixtures";

const SENDER = connId(0);
const ENV = {
  CONNECTIONS_TABLE: "connections-test",
  ROOM_INDEX: "byRoom",
  MAX_MESSAGE_BYTES: "64",
  FANOUT_CONCURRENCY: "4",
  FANOUT_CHUNK_SIZE: "1000",
  FANOUT_FUNCTION: "ws-chat-fanout-dev",
  MESSAGES_TABLE: "messages-test",
  HISTORY_RETENTION_DAYS: "1",
  RATE_LIMIT_MESSAGES: "5",
  RATE_LIMIT_WINDOW_SECONDS: "10",
};
const SENDER_RECORD = { connectionId: SENDER, room: "general", name: "alice", connectedAt: 1, expiresAt: 2 };
const conditionFailed = () => new ConditionalCheckFailedException({ message: "The conditional request failed", $metadata: {} });

/** Answers the first `times` posts to `id` with `answer`, then 200. */
function failing(id: string, answer: typeof GONE, times = Infinity) {
  let left = times;
  return (call: { connectionId?: string }) => (call.connectionId === id && left-- > 0 ? answer : undefined);
}

describe("sendmessage", () => {
  const ddbStub = stubClient(() => mockClient(DynamoDBDocumentClient));
  const aws = withFakeAws();
  withEnv(ENV);
  const logs = withLogs();
  let ddb: ReturnType<typeof ddbStub>;
  beforeEach(() => {
    ddb = ddbStub();
    ddb.on(UpdateCommand).resolves({ Attributes: SENDER_RECORD }); // rate limit admits, returns the sender
    ddb.on(GetCommand, { TableName: "messages-test" }).resolves({ Item: { room: "general", cursor: "#head", seq: 41 } });
    ddb.on(TransactWriteCommand).resolves({});
    ddb.on(DeleteCommand).resolves({});
  });

  /** The room's members, served in pages of `pageSize` through LastEvaluatedKey. */
  function roomOf(members: string[], pageSize = 100) {
    ddb.on(QueryCommand).callsFake((input) => {
      const start = input.ExclusiveStartKey ? members.indexOf(input.ExclusiveStartKey.connectionId) + 1 : 0;
      const page = members.slice(start, start + pageSize);
      const more = start + pageSize < members.length;
      return { Items: page.map((connectionId) => ({ connectionId })), LastEvaluatedKey: more ? { connectionId: page[page.length - 1], room: "general" } : undefined };
    });
  }

  function posts() {
    return aws().posts();
  }

  async function send(body: unknown, context = lambdaContext) {
    const result = await sendMessageHandlerFactory()(messageEvent(SENDER, typeof body === "string" ? body : JSON.stringify(body)), context);
    assert.equal(result.statusCode, 200);
    return posts();
  }

  function fanoutLog() {
    const line = logs().find((l) => l.msg === "message");
    assert.ok(line, "one structured 'message' log line");
    return line;
  }

  it("delivers the message frame to every other member of the sender's room, and nothing to the sender", async () => {
    roomOf([SENDER, connId(1), connId(2)]);
    const sent = await send({ action: "sendmessage", message: "hello, everyone!" });
    assert.deepEqual(sent.map((p) => p.to).sort(), [connId(1), connId(2)].sort());
    const frame = JSON.parse(sent[0].data);
    assert.deepEqual(frame, {
      type: "message",
      room: "general",
      from: { name: "alice" },
      message: "hello, everyone!",
      ts: messageEvent(SENDER, "").requestContext.requestTimeEpoch,
      id: "BFaUBdv1IAMCJxQ=",
      cursor: "0000000000000042",
    });
    const query = ddb.commandCalls(QueryCommand)[0].args[0].input;
    assert.equal(query.IndexName, "byRoom");
    assert.deepEqual(query.ExpressionAttributeValues, { ":room": "general" });
    assert.deepEqual(fanoutLog(), { ...fanoutLog(), recipients: 2, delivered: 2, stale: 0, failed: 0, room: "general" });
    assert.equal(typeof fanoutLog().ms, "number");
  });

  it("reads members with a paginated Query across several pages, never a Scan", async () => {
    const members = [SENDER, ...Array.from({ length: 11 }, (_, i) => connId(i + 1))];
    roomOf(members, 3);
    const sent = await send({ action: "sendmessage", message: "paged" });
    assert.equal(ddb.commandCalls(QueryCommand).length, 4);
    assert.equal(ddb.commandCalls(ScanCommand).length, 0);
    assert.deepEqual(sent.map((p) => p.to).sort(), members.slice(1).sort());
    assert.equal(new Set(sent.map((p) => p.to)).size, 11, "each member exactly once");
  });

  it("removes exactly the record of a recipient that answers 410, and still delivers to the rest", async () => {
    roomOf([SENDER, connId(1), connId(2), connId(3)]);
    aws().reply(failing(connId(2), GONE));
    await send({ action: "sendmessage", message: "hi" });
    const deleted = ddb.commandCalls(DeleteCommand).map((c) => c.args[0].input);
    assert.deepEqual(deleted.map((d) => d.Key), [{ connectionId: connId(2) }]);
    assert.equal(deleted[0].ConditionExpression, "connectedAt < :cutoff", "only a record old enough to be stale");
    const cutoff = deleted[0].ExpressionAttributeValues?.[":cutoff"] as number;
    assert.ok(Math.abs(Date.now() - CONNECT_GRACE_MS - cutoff) < 5_000, `cutoff ${cutoff}: a minute ago`);
    assert.equal(fanoutLog().delivered, 2);
    assert.equal(fanoutLog().stale, 1);
  });

  it("must not remove the record of a member that answers 410 because its $connect is still running", async () => {
    roomOf([SENDER, connId(1), connId(2)]);
    aws().reply(failing(connId(2), GONE));
    ddb.on(DeleteCommand).rejects(conditionFailed()); // connected less than a minute ago
    await send({ action: "sendmessage", message: "hi" });
    assert.equal(ddb.commandCalls(DeleteCommand).length, 1);
    assert.ok(logs().some((l) => String(l.msg).startsWith("410, record kept") && l.connectionId === connId(2)));
    assert.equal(logs().some((l) => l.msg === "stale record not removed"), false, "not a failure");
    assert.equal(fanoutLog().delivered, 1);
  });

  it("retries 429 and 5xx with backoff until delivered", async () => {
    roomOf([SENDER, connId(1), connId(2)]);
    const first = failing(connId(1), THROTTLED, 2);
    const second = failing(connId(2), SERVER_ERROR, 1);
    aws().reply((call) => first(call) ?? second(call));
    const sent = await send({ action: "sendmessage", message: "hi" });
    assert.equal(sent.filter((p) => p.to === connId(1)).length, 3);
    assert.equal(sent.filter((p) => p.to === connId(2)).length, 2);
    assert.equal(fanoutLog().delivered, 2);
    assert.equal(fanoutLog().failed, 0);
  });

  it("gives up after 4 attempts on a recipient that keeps answering 429, without deleting it", async () => {
    roomOf([SENDER, connId(1)]);
    aws().reply(failing(connId(1), THROTTLED));
    const sent = await send({ action: "sendmessage", message: "hi" });
    assert.equal(sent.length, 4);
    assert.equal(fanoutLog().failed, 1);
    assert.equal(ddb.commandCalls(DeleteCommand).length, 0);
  });

  it("must not let one failing recipient stop delivery to the others", async () => {
    const members = [SENDER, ...Array.from({ length: 9 }, (_, i) => connId(i + 1))];
    roomOf(members, 4);
    aws().reply(failing(connId(1), FORBIDDEN));
    const sent = await send({ action: "sendmessage", message: "hi" });
    assert.deepEqual(new Set(sent.map((p) => p.to)), new Set(members.slice(1)));
    assert.equal(fanoutLog().delivered, 8);
    assert.equal(fanoutLog().failed, 1);
    assert.ok(logs().some((l) => l.msg === "delivery failed" && l.connectionId === connId(1)));
  });

  describe("a room larger than FANOUT_CHUNK_SIZE", () => {
    let restore: () => void;
    beforeEach(() => (restore = useEnv({ FANOUT_CHUNK_SIZE: "5" })));
    afterEach(() => restore());
    const members = [SENDER, ...Array.from({ length: 12 }, (_, i) => connId(i + 1))];

    it("delivers the first chunk itself and hands each further chunk to fanout with an asynchronous Invoke", async () => {
      roomOf(members, 4);
      const sent = await send({ action: "sendmessage", message: "to many" });
      assert.deepEqual(sent.map((p) => p.to).sort(), members.slice(1, 6).sort(), "the first 5 recipients, posted here");
      const handed = aws().invocations();
      assert.deepEqual(handed.map((i) => [i.functionName, i.type]), [["ws-chat-fanout-dev", "Event"], ["ws-chat-fanout-dev", "Event"]]);
      const events = handed.map((i) => i.event as { kind: string; room: string; cursor: string; data: string; connectionIds: string[] });
      assert.deepEqual(events.map((e) => e.connectionIds), [members.slice(6, 11), members.slice(11)]);
      for (const e of events) {
        assert.deepEqual([e.kind, e.room, e.cursor, e.data], ["chat.fanout", "general", "0000000000000042", sent[0].data]);
      }
      assert.deepEqual([fanoutLog().delivered, fanoutLog().dispatched, fanoutLog().handedRecipients], [5, 2, 7]);
    });

    it("must not lose a chunk whose hand-off is refused: sendmessage delivers it itself", async () => {
      roomOf(members, 4);
      let refused = 0;
      aws().reply((call) => (call.functionName && refused++ === 0 ? { status: 429, type: "TooManyRequestsException", body: '{"message":"Rate exceeded"}' } : undefined));
      const sent = await send({ action: "sendmessage", message: "to many" });
      assert.deepEqual(sent.map((p) => p.to).sort(), members.slice(1, 11).sort(), "chunks 1 and 2 posted here");
      assert.deepEqual(aws().invocations().length, 2, "both hand-offs were tried");
      assert.ok(logs().some((l) => l.msg === "fan-out hand-off failed; delivering that chunk here" && (l.error as { name: string }).name === "TooManyRequestsException"));
      assert.deepEqual([fanoutLog().delivered, fanoutLog().dispatched], [10, 1]);
    });

    it("never hands off a room that fits in one chunk", async () => {
      roomOf(members.slice(0, 6), 4);
      const sent = await send({ action: "sendmessage", message: "few" });
      assert.equal(sent.length, 5);
      assert.deepEqual(aws().invocations(), []);
    });
  });

  it("keeps at most FANOUT_CONCURRENCY posts in flight", async () => {
    roomOf([SENDER, ...Array.from({ length: 30 }, (_, i) => connId(i + 1))], 7);
    let inFlight = 0;
    let peak = 0;
    aws().reply(async () => {
      peak = Math.max(peak, ++inFlight);
      await new Promise((r) => setTimeout(r, 5));
      inFlight--;
      return undefined;
    });
    await send({ action: "sendmessage", message: "hi" });
    assert.equal(peak, 4);
    assert.equal(fanoutLog().delivered, 30);
  });

  const invalid: [string, unknown, string][] = [
    ["a missing message", { action: "sendmessage" }, "invalid_message"],
    ["an empty message", { action: "sendmessage", message: "" }, "invalid_message"],
    ["a whitespace-only message", { action: "sendmessage", message: " \n\t" }, "invalid_message"],
    ["a numeric message", { action: "sendmessage", message: 42 }, "invalid_message"],
    ["an object message", { action: "sendmessage", message: { text: "hi" } }, "invalid_message"],
    ["a message with a lone surrogate", '{"action":"sendmessage","message":"a\\ud800b"}', "invalid_message"],
    ["a message over MAX_MESSAGE_BYTES", { action: "sendmessage", message: "x".repeat(65) }, "message_too_large"],
    ["a message over the limit in UTF-8 bytes only", { action: "sendmessage", message: "가".repeat(22) }, "message_too_large"],
    ["a body that is not JSON", "sendmessage: hi", "invalid_json"],
  ];
  for (const [what, body, code] of invalid) {
    it(`answers ${what} with a '${code}' error frame to the sender alone`, async () => {
      roomOf([SENDER, connId(1)]);
      const sent = await send(body);
      assert.equal(sent.length, 1);
      assert.equal(sent[0].to, SENDER);
      const frame = JSON.parse(sent[0].data);
      assert.equal(frame.type, "error");
      assert.equal(frame.code, code);
      assert.equal(typeof frame.message, "string");
      assert.equal(ddb.commandCalls(QueryCommand).length, 0);
    });
  }

  it("accepts a message of exactly MAX_MESSAGE_BYTES", async () => {
    roomOf([SENDER, connId(1)]);
    const sent = await send({ action: "sendmessage", message: "x".repeat(64) });
    assert.equal(JSON.parse(sent[0].data).type, "message");
  });

  it("answers unknown_connection when the sender has no record", async () => {
    ddb.on(UpdateCommand).rejects(conditionFailed());
    ddb.on(GetCommand, { TableName: "connections-test" }).resolves({});
    const sent = await send({ action: "sendmessage", message: "hi" });
    assert.deepEqual(sent.map((p) => [p.to, JSON.parse(p.data).code]), [[SENDER, "unknown_connection"]]);
  });

  it("answers 'unavailable' instead of failing the invocation when the room cannot be read", async () => {
    ddb.on(QueryCommand).rejects(new Error("socket hang up"));
    const sent = await send({ action: "sendmessage", message: "hi" });
    assert.deepEqual(sent.map((p) => [p.to, JSON.parse(p.data).code]), [[SENDER, "unavailable"]]);
    assert.ok(logs().some((l) => l.msg === "fan-out aborted" && l.level === "error"));
  });

  describe("persistence, acknowledgements and idempotency", () => {
    function appended() {
      return ddb.commandCalls(TransactWriteCommand).map((c) => c.args[0].input.TransactItems!);
    }

    it("persists the message before fan-out: head bumped from 41 to 42, message stored under cursor 42", async () => {
      roomOf([SENDER, connId(1)]);
      const persistedAtFirstPost: number[] = [];
      aws().reply(() => {
        if (!persistedAtFirstPost.length) persistedAtFirstPost.push(ddb.commandCalls(TransactWriteCommand).length);
        return undefined;
      });
      await send({ action: "sendmessage", message: "kept" });
      const [items] = appended();
      assert.equal(items.length, 2, "no client id, no claim");
      assert.deepEqual(items[0].Update?.Key, { room: "general", cursor: "#head" });
      assert.deepEqual(items[0].Update?.ExpressionAttributeValues, { ":next": 42, ":previous": 41 });
      assert.equal(items[0].Update?.ConditionExpression, "seq = :previous");
      const stored = items[1].Put!.Item!;
      assert.equal(stored.cursor, "0000000000000042");
      assert.equal(stored.message, "kept");
      assert.deepEqual(stored.from, { name: "alice" });
      assert.equal(stored.expiresAt, Math.floor(stored.ts / 1000) + 86_400);
      assert.deepEqual(persistedAtFirstPost, [1], "persisted before any delivery");
    });

    it("without an id, the sender gets nothing, as in the tutorial", async () => {
      roomOf([SENDER, connId(1)]);
      const sent = await send({ action: "sendmessage", message: "hi" });
      assert.deepEqual(sent.map((p) => p.to), [connId(1)]);
    });

    it("with an id, claims it in the same transaction and acknowledges the sender with the cursor", async () => {
      roomOf([SENDER, connId(1)]);
      const sent = await send({ action: "sendmessage", message: "hi", id: "c-1" });
      const claim = appended()[0][2].Put!;
      assert.deepEqual(claim.Item, { room: "general", cursor: "#id#alice#c-1", messageCursor: "0000000000000042", expiresAt: claim.Item!.expiresAt });
      assert.equal(claim.ConditionExpression, "attribute_not_exists(#cursor)");
      const ack = sent.find((p) => p.to === SENDER)!;
      assert.deepEqual(JSON.parse(ack.data), { type: "ack", id: "c-1", cursor: "0000000000000042" });
      assert.equal(JSON.parse(sent.find((p) => p.to === connId(1))!.data).cursor, "0000000000000042");
    });

    it("acknowledges a repeated id again with the original cursor, and neither stores nor delivers it twice", async () => {
      roomOf([SENDER, connId(1)]);
      ddb.on(TransactWriteCommand).rejects(
        new TransactionCanceledException({
          message: "Transaction cancelled",
          $metadata: {},
          CancellationReasons: [{ Code: "None" }, { Code: "None" }, { Code: "ConditionalCheckFailed" }],
        }),
      );
      ddb.on(GetCommand, { TableName: "messages-test", Key: { room: "general", cursor: "#id#alice#c-1" } }).resolves({ Item: { messageCursor: "0000000000000007" } });
      const sent = await send({ action: "sendmessage", message: "hi", id: "c-1" });
      assert.deepEqual(sent, [{ to: SENDER, data: JSON.stringify({ type: "ack", id: "c-1", cursor: "0000000000000007" }) }]);
      assert.equal(ddb.commandCalls(QueryCommand).length, 0, "no fan-out");
    });

    it("retries when another sender took the next cursor first", async () => {
      roomOf([SENDER, connId(1)]);
      ddb.on(TransactWriteCommand)
        .rejectsOnce(new TransactionCanceledException({ message: "cancelled", $metadata: {}, CancellationReasons: [{ Code: "ConditionalCheckFailed" }, { Code: "None" }] }))
        .resolves({});
      await send({ action: "sendmessage", message: "hi" });
      assert.equal(appended().length, 2);
      assert.equal(fanoutLog().delivered, 1);
    });

    it("after a lost race or a TransactionConflict, reads the head again and builds the next attempt on it", async () => {
      roomOf([SENDER, connId(1)]);
      ddb.on(GetCommand, { TableName: "messages-test" })
        .resolvesOnce({ Item: { room: "general", cursor: "#head", seq: 41 } })
        .resolvesOnce({ Item: { room: "general", cursor: "#head", seq: 45 } })
        .resolves({ Item: { room: "general", cursor: "#head", seq: 47 } });
      ddb.on(TransactWriteCommand)
        .rejectsOnce(new TransactionCanceledException({ message: "cancelled", $metadata: {}, CancellationReasons: [{ Code: "ConditionalCheckFailed" }, { Code: "ConditionalCheckFailed" }] }))
        .rejectsOnce(new TransactionCanceledException({ message: "cancelled", $metadata: {}, CancellationReasons: [{ Code: "TransactionConflict" }, { Code: "None" }] }))
        .resolves({});
      await send({ action: "sendmessage", message: "hi" });
      assert.deepEqual(appended().map((items) => [items[0].Update?.ExpressionAttributeValues?.[":previous"], items[1].Put?.Item?.cursor]), [
        [41, "0000000000000042"],
        [45, "0000000000000046"],
        [47, "0000000000000048"],
      ]);
      assert.equal(fanoutLog().cursor, "0000000000000048");
    });

    it("must give up a room it keeps losing by half the time left, answering 'unavailable' with the id and storing nothing", async () => {
      roomOf([SENDER, connId(1)]);
      const lost = { Code: "ConditionalCheckFailed", Item: { room: { S: "general" }, cursor: { S: "#head" }, seq: { N: "45" } } };
      ddb.on(TransactWriteCommand).rejects(new TransactionCanceledException({ message: "cancelled", $metadata: {}, CancellationReasons: [lost, { Code: "None" }] }));
      const sent = await send({ action: "sendmessage", message: "hi", id: "c-busy" }, { ...lambdaContext, getRemainingTimeInMillis: () => 300 });
      assert.deepEqual(sent.map((p) => [p.to, JSON.parse(p.data).code, JSON.parse(p.data).id]), [[SENDER, "unavailable", "c-busy"]]);
      assert.ok(appended().length > 2, `retried until the deadline (${appended().length} attempts)`);
      const reason = String((logs().find((l) => l.msg === "message not persisted")?.error as { message?: string } | undefined)?.message);
      const [, attempts, ms] = reason.match(/too busy to append to \((\d+) attempts in (\d+) ms\)/) ?? [];
      assert.equal(Number(attempts), appended().length, reason);
      // The store starts its clock a moment after the handler sets the deadline: hence 100, not 150.
      assert.ok(Number(ms) >= 100 && Number(ms) < 1_000, `gave up at the deadline, 150 ms away, not at the default ${APPEND_BUDGET_MS} ms: ${reason}`);
    });

    it("answers 'unavailable', and delivers nothing, when the message cannot be stored", async () => {
      roomOf([SENDER, connId(1)]);
      ddb.on(TransactWriteCommand).rejects(new Error("connection reset"));
      const sent = await send({ action: "sendmessage", message: "hi", id: "c-9" });
      assert.deepEqual(sent.map((p) => [p.to, JSON.parse(p.data).code, JSON.parse(p.data).id]), [[SENDER, "unavailable", "c-9"]], "names the send to retry");
    });

    it("names a valid id in any refusal, even of the message itself, and no id when the id is the problem", async () => {
      const [tooLong] = await send({ action: "sendmessage", message: "x".repeat(65), id: "c-10" });
      assert.deepEqual(JSON.parse(tooLong.data), { type: "error", code: "message_too_large", message: JSON.parse(tooLong.data).message, id: "c-10" });
      aws().calls.length = 0;
      const [badId] = await send({ action: "sendmessage", message: "hi", id: "a b" });
      assert.equal("id" in JSON.parse(badId.data), false);
    });

    const badIds: [string, unknown][] = [["an empty id", ""], ["a numeric id", 7], ["an id with spaces", "a b"], ["a 65-character id", "i".repeat(65)]];
    for (const [what, id] of badIds) {
      it(`answers ${what} with invalid_id, storing nothing`, async () => {
        const sent = await send({ action: "sendmessage", message: "hi", id });
        assert.deepEqual(sent.map((p) => JSON.parse(p.data).code), ["invalid_id"]);
        assert.equal(appended().length, 0);
      });
    }
  });

  describe("rate limit", () => {
    it("counts the message in the sender's current window", async () => {
      roomOf([SENDER, connId(1)]);
      await send({ action: "sendmessage", message: "hi" });
      const update = ddb.commandCalls(UpdateCommand)[0].args[0].input;
      assert.deepEqual(update.Key, { connectionId: SENDER });
      assert.equal(update.ExpressionAttributeValues?.[":max"], 5);
      assert.equal(update.ExpressionAttributeValues?.[":window"], Math.floor(Date.now() / 1000 / 10));
    });

    it("over the limit, answers rate_limited and neither stores nor delivers the message", async () => {
      roomOf([SENDER, connId(1)]);
      ddb.on(UpdateCommand).rejects(conditionFailed());
      ddb.on(GetCommand, { TableName: "connections-test" }).resolves({ Item: SENDER_RECORD });
      const sent = await send({ action: "sendmessage", message: "one too many", id: "c-2" });
      assert.deepEqual(sent.map((p) => [p.to, JSON.parse(p.data).code, JSON.parse(p.data).id]), [[SENDER, "rate_limited", "c-2"]]);
      assert.equal(ddb.commandCalls(TransactWriteCommand).length, 0);
      assert.equal(ddb.commandCalls(QueryCommand).length, 0);
    });
  });
});
