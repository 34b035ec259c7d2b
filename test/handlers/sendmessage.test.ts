import { TransactionCanceledException } from "@aws-sdk/client-dynamodb";
import { DeleteCommand, GetCommand, PutCommand, QueryCommand, ScanCommand, TransactWriteCommand, UpdateCommand } from "@aws-sdk/lib-dynamodb";
import assert from "node:assert/strict";
import { MAX_QUEUED_MS, sendMessageHandlerFactory } from "../../handlers/sendmessage";
import { CONNECT_GRACE_MS } from "../../handlers/shared/connections";
import { RANGES } from "../../handlers/shared/env";
import { APPEND_BUDGET_MS } from "../../handlers/shared/messages";
import { API_FRAME_BYTES } from "../../handlers/shared/protocol";
import { FORBIDDEN, GONE, SERVER_ERROR, THROTTLED, withFakeAws } from "./fake-aws";
import { conditionFailed, connId, lambdaContext, messageEvent, useEnv, withEnv, withLogs, stubDocumentClient } from "./fixtures";

const SENDER = connId(0);
const ENV = {
  CONNECTIONS_TABLE: "connections-test",
  ROOM_INDEX: "byRoom",
  MAX_MESSAGE_BYTES: "1024",
  FANOUT_CONCURRENCY: "4",
  FANOUT_CHUNK_SIZE: "1000",
  FANOUT_FUNCTION: "ws-chat-fanout-dev",
  MESSAGES_TABLE: "messages-test",
  HOLE_GRACE_MS: "15000",
  EDIT_WINDOW_MS: "3600000",
  HISTORY_RETENTION_DAYS: "1",
  RATE_LIMIT_MESSAGES: "5",
  RATE_LIMIT_WINDOW_SECONDS: "10",
};
const SENDER_RECORD = { connectionId: SENDER, room: "general", name: "alice", connectedAt: 1, expiresAt: 2 };
/** `{"action":"sendmessage","message":""}`: the smallest envelope, 37 bytes. */
const ENVELOPE_BYTES = JSON.stringify({ action: "sendmessage", message: "" }).length;
/** A sendmessage body whose frame is exactly `bytes` long (ASCII text). */
const frameOf = (bytes: number) => ({ action: "sendmessage", message: "x".repeat(bytes - ENVELOPE_BYTES) });
const EPOCH = "Ep0ch-01";
const HEAD = (seq: number) => ({ Attributes: { room: "general", cursor: "#head", seq, epoch: EPOCH } });

/** Answers the first `times` posts to `id` with `answer`, then 200. */
function failing(id: string, answer: typeof GONE, times = Infinity) {
  let left = times;
  return (call: { connectionId?: string }) => (call.connectionId === id && left-- > 0 ? answer : undefined);
}

describe("sendmessage", () => {
  const ddbStub = stubDocumentClient();
  const aws = withFakeAws();
  withEnv(ENV);
  const logs = withLogs();
  let ddb: ReturnType<typeof ddbStub>;
  beforeEach(() => {
    ddb = ddbStub();
    ddb.on(UpdateCommand, { TableName: "connections-test" }).resolves({ Attributes: SENDER_RECORD }); // rate limit admits, returns the sender
    ddb.on(UpdateCommand, { TableName: "messages-test" }).resolves(HEAD(42)); // the room's next number
    ddb.on(PutCommand).resolves({});
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

  let lastEvent: ReturnType<typeof messageEvent>;
  async function send(body: unknown, context = lambdaContext, receivedAt = Date.now()) {
    lastEvent = messageEvent(SENDER, typeof body === "string" ? body : JSON.stringify(body), "sendmessage", receivedAt);
    const result = await sendMessageHandlerFactory()(lastEvent, context);
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
      ts: lastEvent.requestContext.requestTimeEpoch,
      id: "BFaUBdv1IAMCJxQ=",
      cursor: "0000000000000042",
      epoch: EPOCH,
    });
    const query = ddb.commandCalls(QueryCommand)[0].args[0].input;
    assert.equal(query.IndexName, "byRoom");
    assert.equal(query.FilterExpression, "expiresAt > :now", "expired records are skipped");
    assert.deepEqual(query.ExpressionAttributeValues, { ":room": "general", ":now": query.ExpressionAttributeValues?.[":now"] });
    assert.ok(Math.abs(Number(query.ExpressionAttributeValues?.[":now"]) - Date.now() / 1000) < 5, "now, in epoch seconds");
    assert.deepEqual(fanoutLog(), { ...fanoutLog(), recipients: 2, delivered: 2, stale: 0, failed: 0, room: "general" });
    assert.deepEqual(Object.keys(fanoutLog().ms as object), ["queued", "admit", "append", "deliver"], "where the time went");
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
    ddb.on(GetCommand, { TableName: "connections-test" }).resolves({ Item: { connectionId: connId(2), room: "general", name: "bo", connectedAt: 0, expiresAt: 9_999_999_999 } });
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
    // Connected just now: too young to call stale, so its record is read and kept, not deleted.
    ddb.on(GetCommand, { TableName: "connections-test" }).resolves({ Item: { connectionId: connId(2), room: "general", name: "bo", connectedAt: Date.now(), expiresAt: 9_999_999_999 } });
    await send({ action: "sendmessage", message: "hi" });
    assert.equal(ddb.commandCalls(DeleteCommand).length, 0);
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
    ["a frame one byte over MAX_MESSAGE_BYTES", frameOf(1025), "message_too_large"],
    ["a frame over the limit in UTF-8 bytes only (330 characters)", { action: "sendmessage", message: "가".repeat(330) }, "message_too_large"],
    ["a frame over the limit once escaped only (200 bytes of text)", { action: "sendmessage", message: "\u0001".repeat(200) }, "message_too_large"],
    ["a frame over the limit by its other fields only", { ...frameOf(1000), note: "n".repeat(100) }, "message_too_large"],
    ["an edit whose frame is over the limit", { action: "edit", cursor: "0000000000000001", message: "x".repeat(1000) }, "message_too_large"],
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

  it("accepts a frame of exactly MAX_MESSAGE_BYTES", async () => {
    roomOf([SENDER, connId(1)]);
    const sent = await send(frameOf(1024));
    assert.equal(JSON.parse(sent[0].data).type, "message");
  });

  it("answers unknown_connection when the sender has no record", async () => {
    ddb.on(UpdateCommand, { TableName: "connections-test" }).rejects(conditionFailed());
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
    const puts = () => ddb.commandCalls(PutCommand).map((c) => c.args[0].input);
    const transactions = () => ddb.commandCalls(TransactWriteCommand).map((c) => c.args[0].input.TransactItems!);
    const numbersTaken = () => ddb.commandCalls(UpdateCommand, { TableName: "messages-test" }).map((c) => c.args[0].input);
    const cancelled = (...codes: string[]) =>
      new TransactionCanceledException({ message: "Transaction cancelled", $metadata: {}, CancellationReasons: codes.map((Code) => ({ Code })) });

    it("takes the room's next number with one unconditional ADD, and stores the message under it before fan-out", async () => {
      roomOf([SENDER, connId(1)]);
      const storedAtFirstPost: number[] = [];
      aws().reply(() => {
        if (!storedAtFirstPost.length) storedAtFirstPost.push(puts().length);
        return undefined;
      });
      await send({ action: "sendmessage", message: "kept" });
      const [take] = numbersTaken();
      assert.deepEqual(take.Key, { room: "general", cursor: "#head" });
      assert.equal(take.UpdateExpression, "SET epoch = if_not_exists(epoch, :epoch), expiresAt = :expires ADD seq :one");
      const dayAfterRetention = Math.floor(Date.now() / 1000) + 2 * 86_400;
      assert.ok(Math.abs(Number(take.ExpressionAttributeValues![":expires"]) - dayAfterRetention) <= 5, "the head expires a day after the room's newest message would");
      assert.equal(take.ConditionExpression, undefined, "never loses a race: no condition");
      const [put] = puts();
      assert.equal(put.Item!.cursor, "0000000000000042");
      assert.equal(put.Item!.epoch, EPOCH);
      assert.equal(put.Item!.message, "kept");
      assert.equal(put.Item!.expiresAt, Math.floor(put.Item!.ts / 1000) + 86_400);
      assert.equal(put.ConditionExpression, "attribute_not_exists(#cursor) OR epoch <> :epoch", "fills only an empty number");
      assert.equal(transactions().length, 0, "no client id, no claim, no transaction");
      assert.deepEqual(storedAtFirstPost, [1], "stored before any delivery");
    });

    it("without an id, the sender gets nothing, as in the tutorial", async () => {
      roomOf([SENDER, connId(1)]);
      const sent = await send({ action: "sendmessage", message: "hi" });
      assert.deepEqual(sent.map((p) => p.to), [connId(1)]);
    });

    it("with an id, claims it in the same transaction and acknowledges the sender with the cursor and epoch", async () => {
      roomOf([SENDER, connId(1)]);
      const sent = await send({ action: "sendmessage", message: "hi", id: "c-1" });
      const [[message, claim]] = transactions();
      assert.equal(message.Put!.Item!.cursor, "0000000000000042");
      assert.deepEqual(claim.Put!.Item, { room: "general", cursor: "#id#alice#c-1", messageCursor: "0000000000000042", epoch: EPOCH, expiresAt: claim.Put!.Item!.expiresAt });
      assert.equal(claim.Put!.ConditionExpression, "attribute_not_exists(#cursor)");
      const ack = sent.find((p) => p.to === SENDER)!;
      assert.deepEqual(JSON.parse(ack.data), { type: "ack", id: "c-1", cursor: "0000000000000042", epoch: EPOCH });
      assert.equal(JSON.parse(sent.find((p) => p.to === connId(1))!.data).cursor, "0000000000000042");
    });

    it("acknowledges a repeated id again with the original cursor, gives its own number back as a tombstone, and delivers nothing", async () => {
      roomOf([SENDER, connId(1)]);
      ddb.on(TransactWriteCommand).rejects(cancelled("None", "ConditionalCheckFailed"));
      ddb.on(GetCommand, { TableName: "messages-test", Key: { room: "general", cursor: "#id#alice#c-1" } }).resolves({ Item: { messageCursor: "0000000000000007", epoch: EPOCH } });
      const sent = await send({ action: "sendmessage", message: "hi", id: "c-1" });
      assert.deepEqual(sent, [{ to: SENDER, data: JSON.stringify({ type: "ack", id: "c-1", cursor: "0000000000000007", epoch: EPOCH }) }]);
      assert.deepEqual(puts().map((p) => [p.Item!.cursor, p.Item!.type]), [["0000000000000042", "tombstone"]]);
      assert.equal(ddb.commandCalls(QueryCommand).length, 0, "no fan-out");
    });

    it("takes a new number when its own was tombstoned first (it was slower than the grace)", async () => {
      roomOf([SENDER, connId(1)]);
      ddb.on(UpdateCommand, { TableName: "messages-test" }).resolvesOnce(HEAD(42)).resolves(HEAD(43));
      ddb.on(PutCommand).rejectsOnce(conditionFailed()).resolves({});
      ddb.on(GetCommand, { TableName: "messages-test" }).resolves({ Item: { room: "general", cursor: "0000000000000042", type: "tombstone", epoch: EPOCH } });
      await send({ action: "sendmessage", message: "late" });
      assert.deepEqual(puts().map((p) => p.Item!.cursor), ["0000000000000042", "0000000000000043"]);
      assert.equal(fanoutLog().cursor, "0000000000000043");
    });

    it("must not store a message twice when a retried write meets its own first attempt", async () => {
      roomOf([SENDER, connId(1)]);
      ddb.on(PutCommand).rejects(conditionFailed());
      ddb.on(GetCommand, { TableName: "messages-test" }).resolves({ Item: { room: "general", cursor: "0000000000000042", id: "BFaUBdv1IAMCJxQ=", epoch: EPOCH } });
      await send({ action: "sendmessage", message: "once" });
      assert.equal(numbersTaken().length, 1, "no second number");
      assert.equal(fanoutLog().cursor, "0000000000000042");
    });

    it("must give up by half the time left when every number it takes is tombstoned first, answering 'unavailable' with the id", async () => {
      roomOf([SENDER, connId(1)]);
      ddb.on(PutCommand).rejects(conditionFailed());
      ddb.on(TransactWriteCommand).rejects(cancelled("ConditionalCheckFailed", "None"));
      ddb.on(GetCommand, { TableName: "messages-test" }).resolves({ Item: { type: "tombstone", epoch: EPOCH } });
      const started = Date.now();
      const sent = await send({ action: "sendmessage", message: "hi", id: "c-busy" }, { ...lambdaContext, getRemainingTimeInMillis: () => 300 });
      assert.deepEqual(sent.map((p) => [p.to, JSON.parse(p.data).code, JSON.parse(p.data).id]), [[SENDER, "unavailable", "c-busy"]]);
      assert.ok(numbersTaken().length > 1, `took numbers until the deadline (${numbersTaken().length})`);
      assert.ok(Date.now() - started < 1_000, `gave up at the deadline, 150 ms away, not at the default ${APPEND_BUDGET_MS} ms`);
    });

    it("refuses a message that waited in the queue past MAX_QUEUED_MS at once, with a retry hint, touching nothing", async () => {
      roomOf([SENDER, connId(1)]);
      const sent = await send({ action: "sendmessage", message: "late", id: "c-q" }, lambdaContext, Date.now() - MAX_QUEUED_MS - 500);
      const [refusal] = sent.map((p) => JSON.parse(p.data));
      assert.deepEqual([refusal.code, refusal.id], ["unavailable", "c-q"]);
      assert.ok(refusal.retryAfterMs >= 500 && refusal.retryAfterMs <= 5_000, `retryAfterMs ${refusal.retryAfterMs}`);
      assert.equal(ddb.calls().length, 0, "no DynamoDB call: shedding costs nothing but the reply");
    });

    it("must refuse a frame over the limit before storing anything: 5,400 × U+0001 is 5,400 bytes of text but 32,450 of frame", async () => {
      const restore = useEnv({ MAX_MESSAGE_BYTES: String(RANGES.maxMessageBytes.max) });
      try {
        roomOf([SENDER, connId(1)]);
        const sent = await send({ action: "sendmessage", message: "\u0001".repeat(5_400), id: "c-big" });
        assert.deepEqual(sent.map((p) => [p.to, JSON.parse(p.data).code, JSON.parse(p.data).id]), [[SENDER, "message_too_large", "c-big"]]);
        assert.match(JSON.parse(sent[0].data).message, /the frame is 32450 bytes .*; the limit is 32000/);
        assert.equal(numbersTaken().length, 0, "no number taken: nothing stored");
      } finally {
        restore();
      }
    });

    it("must post the largest accepted message, from the longest room and name, in one API Gateway frame", async () => {
      const restore = useEnv({ MAX_MESSAGE_BYTES: String(RANGES.maxMessageBytes.max) });
      try {
        // 64 characters of room, and 32 four-byte letters of name: the server's largest envelope.
        const sender = { ...SENDER_RECORD, room: "r".repeat(64), name: "𝒜".repeat(32) };
        ddb.on(UpdateCommand, { TableName: "connections-test" }).resolves({ Attributes: sender });
        roomOf([SENDER, connId(1)]);
        const body = frameOf(RANGES.maxMessageBytes.max);
        const sent = await send(body);
        const event = sent.find((p) => p.to === connId(1))!;
        assert.equal(JSON.parse(event.data).message, body.message, "delivered");
        const bytes = Buffer.byteLength(event.data);
        assert.ok(bytes <= API_FRAME_BYTES, `the outgoing event is ${bytes} bytes, over one ${API_FRAME_BYTES}-byte frame`);
      } finally {
        restore();
      }
    });

    it("answers 'unavailable' with a retry hint, delivers nothing and tombstones its number, when the message cannot be stored", async () => {
      roomOf([SENDER, connId(1)]);
      ddb.on(TransactWriteCommand).rejects(new Error("connection reset"));
      const sent = await send({ action: "sendmessage", message: "hi", id: "c-9" });
      assert.deepEqual(sent.map((p) => [p.to, JSON.parse(p.data).code, JSON.parse(p.data).id]), [[SENDER, "unavailable", "c-9"]], "names the send to retry");
      assert.equal(typeof JSON.parse(sent[0].data).retryAfterMs, "number");
      assert.deepEqual(puts().map((p) => [p.Item!.cursor, p.Item!.type]), [["0000000000000042", "tombstone"]], "readers need not wait out the grace");
    });

    it("names a valid id in any refusal, even of the message itself, and no id when the id is the problem", async () => {
      const [tooLong] = await send({ action: "sendmessage", message: "x".repeat(1024), id: "c-10" });
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
        assert.equal(numbersTaken().length, 0);
      });
    }
  });

  describe("rate limit", () => {
    it("counts the message in the sender's current window", async () => {
      roomOf([SENDER, connId(1)]);
      await send({ action: "sendmessage", message: "hi" });
      const update = ddb.commandCalls(UpdateCommand)[0].args[0].input;
      assert.deepEqual(update.Key, { connectionId: SENDER });
      assert.equal(update.ExpressionAttributeValues?.[":left"], 4, "one unit, and the budget of 5 must cover it");
      assert.equal(update.ExpressionAttributeValues?.[":cost"], 1);
      assert.equal(update.ExpressionAttributeValues?.[":window"], Math.floor(Date.now() / 1000 / 10));
    });

    it("must spend the budget on a bad message too: refused as invalid only once admitted, as rate_limited when over", async () => {
      roomOf([SENDER, connId(1)]);
      const [invalid] = await send({ action: "sendmessage", message: "", id: "c-9" });
      assert.deepEqual([JSON.parse(invalid.data).code, JSON.parse(invalid.data).id], ["invalid_message", "c-9"]);
      assert.equal(ddb.commandCalls(UpdateCommand, { TableName: "connections-test" }).length, 1);
      ddb.on(UpdateCommand, { TableName: "connections-test" }).rejects(conditionFailed());
      ddb.on(GetCommand, { TableName: "connections-test" }).resolves({ Item: SENDER_RECORD });
      aws().calls.length = 0;
      const [limited] = await send({ action: "sendmessage", message: "" });
      assert.equal(JSON.parse(limited.data).code, "rate_limited");
    });

    it("over the limit, answers rate_limited and neither stores nor delivers the message", async () => {
      roomOf([SENDER, connId(1)]);
      ddb.on(UpdateCommand, { TableName: "connections-test" }).rejects(conditionFailed());
      ddb.on(GetCommand, { TableName: "connections-test" }).resolves({ Item: SENDER_RECORD });
      const sent = await send({ action: "sendmessage", message: "one too many", id: "c-2" });
      assert.deepEqual(sent.map((p) => [p.to, JSON.parse(p.data).code, JSON.parse(p.data).id]), [[SENDER, "rate_limited", "c-2"]]);
      const retryAfterMs = JSON.parse(sent[0].data).retryAfterMs;
      assert.ok(retryAfterMs > 0 && retryAfterMs <= 10_000, `the refusal says when the window ends (${retryAfterMs})`);
      assert.equal(ddb.commandCalls(UpdateCommand, { TableName: "messages-test" }).length, 0, "no number taken");
      assert.equal(ddb.commandCalls(QueryCommand).length, 0);
    });
  });
});
