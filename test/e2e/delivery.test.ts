/**
 * No message lost, none duplicated, no identity spoofed: replay after a reconnect, idempotent
 * resends, the rate limit, and the $connect authorizer, end to end from the stack outputs.
 */
import assert from "node:assert/strict";
import { stackConfig } from "../../local/program";
import { Client } from "./clients";
import { mintToken } from "../../handlers/shared/tokens";
import { E2EStack, e2eAuthStack, e2eStack, eventually, localStack } from "./stack";

const messages = (c: Client) => c.json().filter((f) => f.type === "message");
const isType = (type: string) => (f: string) => f.includes(`"type":"${type}"`);

describe("e2e: delivery guarantees", function () {
  this.timeout(90_000);
  let stack: E2EStack;
  const open: Client[] = [];
  const connect = async (query: Record<string, string> = {}) => {
    const c = await Client.open(stack.outputs.url, query);
    open.push(c);
    await c.connectionId();
    return c;
  };

  before(async () => (stack = await e2eStack()));
  afterEach(async () => Promise.all(open.splice(0).map((c) => c.close().catch(() => undefined))));
  after(async () => stack?.stop());

  it("a client that drops, and asks for history since its last cursor, gets exactly what it missed", async () => {
    const room = `replay-${Date.now()}`;
    const talker = await connect({ room, name: "talker" });
    let listener = await connect({ room, name: "listener" });
    talker.send({ action: "sendmessage", message: "seen live" });
    const seen = JSON.parse(await listener.waitFor(isType("message")));
    await listener.close();

    const missed = ["while away 1", "while away 2", "while away 3"];
    for (const [i, text] of missed.entries()) {
      talker.send({ action: "sendmessage", message: text, id: `away-${i}` });
      await talker.waitFor((f) => f.includes(`"id":"away-${i}"`)); // acknowledged: stored
    }

    listener = await connect({ room, name: "listener" });
    const { messages: frames, events, end } = await listener.history(seen.cursor as string);
    assert.deepEqual(frames.map((f) => f.message), missed, "every missed message, once, in order");
    assert.deepEqual(frames.map((f) => (f.from as { name: string }).name), ["talker", "talker", "talker"]);
    assert.equal(end.more, false);
    // Between the messages: the listener's own leave and join (presence events share the sequence).
    // Its join may also arrive live, beside the reply: each cursor counts once.
    const cursors = [...new Set([seen.cursor, ...events.map((f) => f.cursor)].map(Number))].sort((a, b) => a - b);
    assert.deepEqual(cursors, cursors.map((_, i) => cursors[0] + i), "cursors are consecutive");
    assert.ok(Number(end.cursor) >= Math.max(...frames.map((f) => Number(f.cursor))), "history-end settles every message");

    const again = await listener.history(end.cursor as string);
    assert.deepEqual([again.messages, again.end.more], [[], false], "nothing twice");
  });

  it("a resent id is stored and delivered once, and acknowledged each time with the same cursor", async () => {
    const room = `dedupe-${Date.now()}`;
    const sender = await connect({ room, name: "sender" });
    const other = await connect({ room, name: "other" });
    for (let i = 0; i < 3; i++) sender.send({ action: "sendmessage", message: "only once", id: "retry-me" });
    await sender.waitFor(() => sender.json().filter((f) => f.type === "ack").length === 3, 10_000);
    const acks = sender.json().filter((f) => f.type === "ack");
    assert.equal(new Set(acks.map((a) => a.cursor)).size, 1);
    await new Promise((r) => setTimeout(r, 500));
    assert.equal(messages(other).length, 1);
    const { messages: frames } = await other.history();
    assert.deepEqual(frames.map((f) => f.message), ["only once"]);
  });

  it("over the rate limit, the sender gets rate_limited and others get only what was admitted", async () => {
    const room = `flood-${Date.now()}`;
    const flooder = await connect({ room, name: "flooder" });
    const other = await connect({ room, name: "other" });
    // One at a time, as the page sends (a message shed as unavailable is resent), until the budget refuses one.
    let acked = 0;
    for (let i = 0; i < 100; i++) {
      const answer = await flooder.sendReliably(`n${i}`, `n${i}`);
      if (answer.code === "rate_limited") break;
      assert.equal(answer.type, "ack", JSON.stringify(answer));
      acked++;
    }
    assert.ok(acked > 0 && acked < 100, `${acked} admitted before the first refusal`);
    await other.waitFor(() => messages(other).length === acked, 30_000);
    const live = messages(other).length;
    // Delivery follows storing: had anything beyond the admitted been delivered, history would hold it too.
    const stored = (await other.historyAll()).filter((f) => f.type === "message");
    const ackedCursors = flooder.json().filter((f) => f.type === "ack").map((f) => String(f.cursor)).sort();
    assert.deepEqual(stored.map((f) => String(f.cursor)), ackedCursors, "exactly the admitted messages were stored");
    assert.equal(live, acked, "and delivered");
  });
});

describe("e2e: the $connect authorizer (a stack with auth on)", function () {
  this.timeout(90_000);
  let stack: E2EStack;
  const open: Client[] = [];
  before(async function () {
    stack = await e2eAuthStack();
    if (stack.outputs.authEnabled !== true) this.skip();
  });
  afterEach(async () => Promise.all(open.splice(0).map((c) => c.close().catch(() => undefined))));
  after(async () => stack?.stop());
  const connect = async (query: Record<string, string>) => {
    const c = await Client.open(stack.outputs.url, query);
    open.push(c);
    return c;
  };

  it("refuses a connection without a token with 401", async () => {
    await assert.rejects(Client.open(stack.outputs.url, { name: "alice" }), { status: 401 });
  });

  it("refuses a forged, expired or other-room token with 403", async () => {
    const good = stack.token({ name: "alice" });
    const [v, , sig] = good.split(".");
    const forged = `${v}.${Buffer.from(JSON.stringify({ n: "admin", e: 4_000_000_000 })).toString("base64url")}.${sig}`;
    await assert.rejects(Client.open(stack.outputs.url, { token: forged }), { status: 403 });
    await assert.rejects(Client.open(stack.outputs.url, { token: stack.token({ name: "alice", expiresAt: Math.floor(Date.now() / 1000) - 1 }) }), { status: 403 });
    await assert.rejects(Client.open(stack.outputs.url, { token: stack.token({ name: "alice", rooms: ["ops"] }), room: "general" }), { status: 403 });
  });

  it("must refuse a 10-year token, a token for another stack and a v1 token with 403, whoever signed them", async () => {
    const now = Math.floor(Date.now() / 1000);
    await assert.rejects(Client.open(stack.outputs.url, { token: stack.token({ name: "alice", expiresAt: now + 10 * 365 * 86_400 }) }), { status: 403 });
    await assert.rejects(Client.open(stack.outputs.url, { token: stack.token({ name: "alice", audience: "ws-chat/elsewhere" }) }), { status: 403 });
    const v1 = `v1.${Buffer.from(JSON.stringify({ n: "alice", e: now + 60 })).toString("base64url")}.sig`;
    await assert.rejects(Client.open(stack.outputs.url, { token: v1 }), { status: 403 });
  });

  it("must not let one token hold more than maxConnectionsPerName connections: the next gets 429 until one closes", async () => {
    const cap = Number(stackConfig(process.env.E2E_AUTH_STACK ?? "prod")["ws-chat:maxConnectionsPerName"]);
    assert.ok(cap >= 1 && cap <= 20, `cap ${cap}`);
    const token = stack.token({ name: `capped-${Date.now()}` });
    const held = await Promise.all(Array.from({ length: cap }, () => connect({ token })));
    await assert.rejects(Client.open(stack.outputs.url, { token }), { status: 429 });
    await held[0].close();
    // $disconnect gives the place back; it runs after the close completes.
    open.push(await eventually(() => Client.open(stack.outputs.url, { token }), 15_000));
  });

  it("makes a forged name impossible: every frame carries the token's name, whatever the name parameter says", async () => {
    const room = `auth-${Date.now()}`;
    const alice = await connect({ token: stack.token({ name: "alice", rooms: [room] }), room, name: "mallory" });
    const bob = await connect({ token: stack.token({ name: "bob" }), room });
    await Promise.all([alice.connectionId(), bob.connectionId()]);
    alice.send({ action: "sendmessage", message: "it's me", name: "admin", from: { name: "admin" } });
    const frame = JSON.parse(await bob.waitFor(isType("message")));
    assert.deepEqual(frame.from, { name: "alice" });
  });
});

describe("e2e: rotating the token key (a local stack with auth on and a previous key)", function () {
  this.timeout(90_000);
  const previous = `previous-${"p".repeat(40)}`;
  let stack: E2EStack;
  before(async function () {
    if (process.env.E2E_AUTH_STACK) this.skip(); // a deployed stack's keys are its own
    stack = await localStack([], "prod", { CHAT_TOKEN_PREVIOUS_KEY: previous });
  });
  after(async () => stack?.stop());

  it("accepts tokens signed by the current and the previous key, and refuses any other key with 403", async () => {
    const now = Math.floor(Date.now() / 1000);
    const claims = { audience: String(stack.outputs.tokenAudience), issuedAt: now, expiresAt: now + 600 };
    const current = await Client.open(stack.outputs.url, { token: stack.token({ name: "cur" }) });
    const old = await Client.open(stack.outputs.url, { token: mintToken(previous, { name: "old", ...claims }) });
    await Promise.all([current.close(), old.close()]);
    await assert.rejects(Client.open(stack.outputs.url, { token: mintToken("x".repeat(48), { name: "eve", ...claims }) }), { status: 403 });
  });
});
