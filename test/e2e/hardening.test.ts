/**
 * Issue 11's findings, each reproduced through a local stack (README, "Security notes"): a message
 * that would poison a room's history, a stored message too large to replay, a page cut at 1 MB of
 * UTF-8, history used as an amplifier, a burst of echoes, and a room's head that never expired. Token findings live beside
 * the authorizer's suite (delivery.test.ts); the time budget beside the faults (faults.test.ts).
 */
import { PutCommand, QueryCommand } from "@aws-sdk/lib-dynamodb";
import assert from "node:assert/strict";
import { cursorOf } from "../../handlers/shared/messages";
import { LocalStack, startLocalStack } from "../../local/stack";
import { Client, Frame } from "./clients";

const messagesTable = (stack: LocalStack) => stack.program.resources.find((r) => r.type === "aws:dynamodb/table:Table" && r.name === "messages")!.state.name as string;
const parse = (frames: string[]) => frames.filter((f) => f.startsWith("{")).map((f) => JSON.parse(f) as Frame & Record<string, unknown>);

describe("hardening: history and budgets, through the local stack", function () {
  this.timeout(120_000);
  let stack: LocalStack;
  const clients: Client[] = [];
  before(async () => {
    // An hour-long budget window: no test depends on when a 10 s window happens to roll over.
    stack = await startLocalStack({ stack: "dev", port: 0, log: () => undefined, configOverrides: { "ws-chat:rateLimitWindowSeconds": "3600" } });
  });
  afterEach(async () => Promise.all(clients.splice(0).map((c) => c.close().catch(() => undefined))));
  after(async () => stack?.stop());
  const open = async (room: string, name: string) => {
    const client = await Client.open(stack.outputs.url, { room, name });
    clients.push(client);
    return client;
  };
  /** Stores events as an older version would have, straight into the table, under a head of `epoch`. */
  async function storeDirectly(room: string, messages: string[], epoch = "Old3poch") {
    const table = messagesTable(stack);
    const now = Date.now();
    await stack.dynamodb.client.send(new PutCommand({ TableName: table, Item: { room, cursor: "#head", seq: messages.length, epoch } }));
    for (const [i, message] of messages.entries()) {
      const item = { room, cursor: cursorOf(i + 1), id: `old-${i + 1}`, from: { name: "old" }, message, ts: now, epoch, numberedAt: now - 60_000, expiresAt: Math.floor(now / 1000) + 3_600 };
      await stack.dynamodb.client.send(new PutCommand({ TableName: table, Item: item }));
    }
  }

  it("must refuse a frame over the limit once escaped (5,400 × U+0001: 5,400 bytes of text, 32,453 of frame) before storing it: no ack, nothing delivered, history unchanged", async () => {
    const room = `poison-${Date.now()}`;
    const [sender, member] = [await open(room, "mal"), await open(room, "ann")];
    await Promise.all([sender.connectionId(), member.connectionId()]);
    sender.send({ action: "sendmessage", message: "\u0001".repeat(5_400), id: "poison-1" });
    const refusal = JSON.parse(await sender.waitFor((f) => f.includes('"type":"error"'), 10_000));
    assert.deepEqual([refusal.code, refusal.id], ["message_too_large", "poison-1"]);
    assert.equal(sender.frames.filter((f) => f.includes('"type":"ack"')).length, 0, "never acknowledged");
    const { messages, events } = await member.history();
    assert.equal(messages.length, 0, "nothing was stored");
    assert.deepEqual([...new Set(events.map((e) => e.type))].filter((t) => t !== "join"), [], "only the members' joins");
    assert.equal(member.frames.filter((f) => f.includes("\\u0001")).length, 0, "nothing was delivered");
  });

  it("must end every replay with history-end: a stored message too large to post is replayed as an undeliverable tombstone", async () => {
    const room = `undeliverable-${Date.now()}`;
    // Stored by a version without the size check: its frame is about 600 KB once escaped.
    await storeDirectly(room, ["before", "\u0001".repeat(100_000), "after"]);
    const reader = await open(room, "ann");
    await reader.connectionId();
    const { messages, end } = await reader.history(cursorOf(0));
    const replayed = parse(reader.frames).filter((f) => f.type === "message" || f.type === "tombstone");
    assert.deepEqual(replayed.map((f) => [f.type, f.cursor, f.reason]), [
      ["message", cursorOf(1), undefined],
      ["tombstone", cursorOf(2), "undeliverable"],
      ["message", cursorOf(3), undefined],
    ]);
    assert.deepEqual(messages.map((m) => m.message), ["before", "after"]);
    // The reader's own join may follow (presence shares the sequence).
    assert.ok(Number(end.cursor) >= 3 && end.more === false, JSON.stringify(end));
  });

  it("must not lose the rest of a page DynamoDB cut at 1 MB: 40 messages of 32 KB in UTF-8 come in one reply, with more:false only at the end", async () => {
    const room = `paging-${Date.now()}`;
    // 40 × 32,100 UTF-8 bytes (10,700 × '가'): DynamoDB's 1 MB Query page holds about 32 of them,
    // and history reads on from LastEvaluatedKey (before, it answered 33 and more:false).
    await storeDirectly(room, Array.from({ length: 40 }, (_, i) => `${i}:`.padEnd(10_700, "가")));
    const reader = await open(room, "ann");
    const { messages, end } = await reader.history(cursorOf(0));
    assert.deepEqual(messages.map((m) => Number(String(m.message).split(":")[0])), Array.from({ length: 40 }, (_, i) => i));
    assert.ok(Number(end.cursor) >= 40 && end.more === false, JSON.stringify(end));
  });

  it("must charge history by what it returns: after a 1.8 MB page, the next request waits for the next window", async () => {
    const room = `amplify-${Date.now()}`;
    await storeDirectly(room, Array.from({ length: 60 }, (_, i) => `${i}`.padEnd(30_000, "x")));
    const reader = await open(room, "ann");
    await reader.connectionId();
    const first = await reader.history(cursorOf(0));
    assert.equal(first.messages.length > 0, true);
    const before = reader.frames.length;
    reader.send({ action: "history", since: cursorOf(0), limit: 100 });
    const answer = JSON.parse(await reader.waitFor((f) => reader.frames.indexOf(f) >= before && f.startsWith("{"), 10_000));
    assert.equal(answer.code, "rate_limited", "the first page's bytes used up the window's budget");
    assert.ok(answer.retryAfterMs > 0 && answer.retryAfterMs <= 3_600_000, `retryAfterMs ${answer.retryAfterMs}`);
  });

  it("must not answer a burst of 300 echoes beyond the connection's budget: the rest get rate_limited", async () => {
    const client = await open(`echo-${Date.now()}`, "bo"); // registered: $connect ran before the handshake completed
    for (let i = 0; i < 300; i++) client.send({ action: "echo", data: `e${i}` });
    // Answers only: the client may also get its own join (presence).
    await client.waitFor(() => client.frames.filter((f) => !f.includes('"type":"join"')).length >= 300, 60_000);
    const echoed = client.frames.filter((f) => f.startsWith("Echo: ")).length;
    const limited = client.frames.filter((f) => f.includes('"code":"rate_limited"')).length;
    assert.deepEqual([echoed, limited], [20, 280], "the dev budget of 20 answered, every other frame refused");
  });

  it("must let a room's head expire a day after its newest message would", async () => {
    const room = `head-${Date.now()}`;
    const sender = await open(room, "cy");
    await sender.connectionId();
    sender.send({ action: "sendmessage", message: "hi", id: "h-1" });
    await sender.waitFor((f) => f.includes('"type":"ack"'), 10_000);
    const out = await stack.dynamodb.client.send(new QueryCommand({ TableName: messagesTable(stack), KeyConditionExpression: "room = :room AND #c = :head", ExpressionAttributeNames: { "#c": "cursor" }, ExpressionAttributeValues: { ":room": room, ":head": "#head" } }));
    const head = out.Items![0];
    const retentionDays = Number(stack.program.config["ws-chat:historyRetentionDays"]);
    const expected = Math.floor(Date.now() / 1000) + (retentionDays + 1) * 86_400;
    assert.ok(Math.abs(Number(head.expiresAt) - expected) < 60, `head expiresAt ${head.expiresAt}, expected about ${expected}`);
  });
});
