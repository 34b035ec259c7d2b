/**
 * The room sequence's rules through a local stack (README, "How delivery works"): one sender's
 * messages are stored in the order sent; a sender that dies between taking a number and storing
 * its message leaves a hole that is tombstoned after the grace, and the late write then fails;
 * a stream that starts again gets a new epoch, which clients notice; a room over what it can take
 * refuses at once with a retry hint.
 */
import assert from "node:assert/strict";
import { startLocalStack, LocalStack, LocalStackOptions } from "../../local/stack";
import { Client, PageLikeClient } from "./clients";
import { e2eStack, E2EStack } from "./stack";

const stackOf = (options: Partial<LocalStackOptions>) => startLocalStack({ stack: "dev", port: 0, log: () => undefined, ...options });
const messagesTable = (stack: LocalStack) => stack.program.resources.find((r) => r.type === "aws:dynamodb/table:Table" && r.name === "messages")!.state.name as string;

describe("the room sequence: per-sender order", function () {
  this.timeout(120_000);
  let stack: E2EStack;
  before(async () => {
    stack = await e2eStack();
  });
  after(() => stack?.stop());

  it("stores a burst from one sender in the order it was sent, and every member sees all of it once", async () => {
    const room = `burst-${Date.now()}`;
    const [ann, bo] = [await PageLikeClient.open(stack.outputs.url, { room, name: "ann" }), await PageLikeClient.open(stack.outputs.url, { room, name: "bo" })];
    try {
      await Promise.all([ann, bo].map((c) => c.until(() => c.stream.cursor !== null, 10_000, "the first history-end")));
      const texts = Array.from({ length: 15 }, (_, i) => `burst ${i}`);
      for (const [i, text] of texts.entries()) ann.sender.send(`b-${i}`, text);
      await ann.until(() => ann.acks.length === texts.length, 60_000, "every ack");
      const acked = ann.acks.map((a) => Number(a.cursor));
      assert.deepEqual(ann.acks.map((a) => a.id), texts.map((_, i) => `b-${i}`), "acknowledged in the order sent");
      assert.deepEqual(acked, [...acked].sort((a, b) => a - b), "numbered in the order sent");
      await bo.until(() => bo.messages().length === texts.length, 30_000, "every message at bo");
      assert.deepEqual(bo.messages().map((m) => m.message), texts, "stored, and shown by cursor, in the order sent");
      const { messages } = await Client.open(stack.outputs.url, { room, name: "cy" }).then(async (cy) => {
        try {
          return await cy.history(undefined);
        } finally {
          await cy.close();
        }
      });
      assert.deepEqual(messages.map((m) => m.message), texts, "history replays the same order");
    } finally {
      await Promise.all([ann, bo].map((c) => c.close()));
    }
  });
});

describe("the room sequence: a sender that dies holding a number", function () {
  this.timeout(120_000);

  it("tombstones the hole after the grace, delivers everything else once, and refuses the late write", async () => {
    // A 2 s function timeout: the grace is 2 + 5 = 7 s (handlers/shared/env.ts).
    const stack = await stackOf({ configOverrides: { "ws-chat:lambdaTimeoutSeconds": "2" } });
    const clients: PageLikeClient[] = [];
    try {
      const room = `crash-${Date.now()}`;
      for (const name of ["ann", "bo", "cy"]) clients.push(await PageLikeClient.open(stack.outputs.url, { room, name }, { resendBaseMs: 100 }));
      const [ann, bo, cy] = clients;
      await Promise.all(clients.map((c) => c.until(() => c.stream.cursor !== null, 10_000, "the first history-end")));
      // The next message write is held unanswered: its sender has taken number 1 and times out.
      await stack.dynamodb.holdMessageWrites(messagesTable(stack), 1);
      ann.sender.send("d-1", "doomed, then resent");
      ann.sender.send("a-2", "after");
      await ann.until(() => ann.acks.length === 2, 60_000, "both acks");
      assert.deepEqual(ann.acks.map((a) => a.id), ["d-1", "a-2"], "order kept");
      const [resent, after] = ann.acks.map((a) => Number(a.cursor));
      assert.ok(resent < after, "the resend took a new number, before the next message's");
      for (const member of [bo, cy]) {
        // Live: the resend and the next, with the held number missing. History holds there until the grace, then tombstones it.
        await member.until(() => (member.stream.cursor ?? 0) >= after, 60_000, "the hole settled");
        const shown = member.events.map((e) => [e.type, Number(e.cursor)] as const).sort((a, b) => a[1] - b[1]);
        const tombstones = shown.filter(([type]) => type === "tombstone");
        assert.equal(tombstones.length, 1, "one tombstone: the held number");
        assert.ok(tombstones[0][1] < resent, "the held number came before the resend's");
        assert.deepEqual(shown.map(([, n]) => n), shown.map((_, i) => shown[0][1] + i), "every number from the first shown on, once");
        assert.deepEqual(member.messages().map((m) => m.message), ["doomed, then resent", "after"], "each message once");
      }
      const late = await stack.dynamodb.releaseHeld();
      assert.deepEqual(late, [{ status: 400, type: "TransactionCanceledException" }], "the late writer's conditional write fails");
      const fresh = await Client.open(stack.outputs.url, { room, name: "di" });
      try {
        const { messages, end } = await fresh.history("0000000000000000");
        assert.deepEqual(messages.map((m) => [Number(m.cursor), m.message]), [[resent, "doomed, then resent"], [after, "after"]]);
        assert.ok(Number(end.cursor) >= after);
        assert.equal(fresh.json().filter((f) => f.type === "tombstone").length, 1, "history replays the tombstone");
      } finally {
        await fresh.close();
      }
    } finally {
      await Promise.all(clients.map((c) => c.close().catch(() => undefined)));
      await stack.stop();
    }
  });
});

describe("the room sequence: a stream that starts again", function () {
  this.timeout(120_000);

  it("gets a new epoch after an in-memory stack restarts, and a following client starts over instead of dropping cursor 1", async () => {
    let stack = await stackOf({});
    const port = Number(new URL(stack.outputs.url).port);
    const room = `epoch-${Date.now()}`;
    let watcher: PageLikeClient | undefined;
    let sender: PageLikeClient | undefined;
    try {
      watcher = await PageLikeClient.open(stack.outputs.url, { room, name: "wes" });
      sender = await PageLikeClient.open(stack.outputs.url, { room, name: "sal" });
      for (let i = 1; i <= 3; i++) sender.sender.send(`old-${i}`, `old ${i}`);
      await watcher.until(() => watcher!.messages().length === 3, 30_000, "the old stream");
      const oldEpoch = watcher.stream.epoch;
      await sender.close();
      await stack.stop();
      stack = await stackOf({ port });
      // The watcher's connection was closed by the stop; it reconnects as the page does, from cursor 3.
      await watcher.reopen(stack.outputs.url, { room, name: "wes" });
      sender = await PageLikeClient.open(stack.outputs.url, { room, name: "sal" });
      sender.sender.send("new-1", "new 1");
      await watcher.until(() => watcher!.resets.length === 1 && watcher!.messages().some((m) => m.message === "new 1"), 30_000, "the new stream");
      assert.notEqual(watcher.stream.epoch, oldEpoch, "a new epoch");
      const fresh = watcher.events.filter((e) => e.epoch === watcher!.stream.epoch).map((e) => Number(e.cursor)).sort((a, b) => a - b);
      assert.deepEqual(fresh, fresh.map((_, i) => i + 1), "numbering starts again at 1, and the client follows it");
    } finally {
      await watcher?.close().catch(() => undefined);
      await sender?.close().catch(() => undefined);
      await stack.stop();
    }
  });
});

describe("the room sequence: back-pressure", function () {
  this.timeout(120_000);

  it("refuses at once, with retryAfterMs and nothing stored, a message that waited past the queue limit; resent, it is stored once", async () => {
    // One instance, and every post takes 700 ms: each run takes about 1.4 s, so the fourth of four
    // messages sent together waits over MAX_QUEUED_MS (1.5 s) before its run starts.
    const stack = await stackOf({ maxInstances: 1, managementLatencyMs: 700 });
    const clients: Client[] = [];
    try {
      const room = `busy-${Date.now()}`;
      for (let i = 0; i < 4; i++) clients.push(await Client.open(stack.outputs.url, { room, name: `s${i}` }));
      for (const [i, c] of clients.entries()) c.send({ action: "sendmessage", message: `m${i}`, id: `bp-${i}` });
      const answers = await Promise.all(clients.map((c, i) => c.waitFor((f) => f.includes(`"bp-${i}"`), 60_000).then((f) => JSON.parse(f))));
      const refused = answers.filter((a) => a.type === "error");
      assert.ok(refused.length >= 1, `at least the last was refused: ${JSON.stringify(answers)}`);
      for (const r of refused) {
        assert.equal(r.code, "unavailable");
        assert.ok(r.retryAfterMs >= 500 && r.retryAfterMs <= 5_000, `a bounded hint: ${r.retryAfterMs}`);
        assert.match(r.message, /nothing was stored/);
      }
      const storedFirst = answers.filter((a) => a.type === "ack").length;
      const reader = await Client.open(stack.outputs.url, { room, name: "reader" });
      clients.push(reader);
      assert.equal((await reader.history(undefined)).messages.length, storedFirst, "a refused message was not stored");
      // Resent as the page does, after the hint: each is stored once.
      for (const r of refused) {
        const i = Number(String(r.id).slice(3));
        await new Promise((resolve) => setTimeout(resolve, r.retryAfterMs));
        clients[i].send({ action: "sendmessage", message: `m${i}`, id: r.id });
        await clients[i].waitFor((f) => f.includes('"type":"ack"') && f.includes(`"${r.id}"`), 60_000);
      }
      const late = await Client.open(stack.outputs.url, { room, name: "late" });
      clients.push(late);
      // Read by cursor (historyAll): the last resend's fan-out may still reach `late` live while its
      // history request runs, and history() counts every message frame that arrives meanwhile (seen
      // under load: m3 twice, one live frame and one history frame of the same cursor).
      const all = (await late.historyAll()).filter((f) => f.type === "message");
      assert.deepEqual(all.map((m) => m.message).sort(), ["m0", "m1", "m2", "m3"], "each stored once");
      const cursors = all.map((m) => Number(m.cursor));
      assert.deepEqual(cursors, [...cursors].sort((a, b) => a - b), "in order");
    } finally {
      await Promise.all(clients.map((c) => c.close().catch(() => undefined)));
      await stack.stop();
    }
  });
});
