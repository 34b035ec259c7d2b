/**
 * The message store and the rate limit against a real (embedded) DynamoDB with the program's own
 * table definitions, transactions included.
 */
import { PutCommand } from "@aws-sdk/lib-dynamodb";
import assert from "node:assert/strict";
import { CONNECT_GRACE_MS, createConnectionsStore } from "../../handlers/shared/connections";
import { createMessageStore, cursorOf, MessageStore, NewMessage } from "../../handlers/shared/messages";
import { LocalDynamoDB, startDynamoDB, tableSpec } from "../../local/dynamodb";
import { loadProgram } from "../../local/program";

describe("message history (DynamoDB)", function () {
  this.timeout(30_000);
  let db: LocalDynamoDB;
  let store: MessageStore;
  let tables: Record<string, string>;
  let seq = 0;
  const room = () => `room-${++seq}`;
  const message = (r: string, text: string, extra: Partial<NewMessage> = {}): NewMessage => ({
    room: r,
    id: `m-${text}`,
    from: { name: "alice" },
    message: text,
    ts: Date.now(),
    ...extra,
  });

  before(async () => {
    const program = await loadProgram({ stack: "dev" });
    const specs = program.resources.filter((r) => r.type === "aws:dynamodb/table:Table").map(tableSpec);
    tables = Object.fromEntries(program.resources.filter((r) => r.type === "aws:dynamodb/table:Table").map((r) => [r.name, r.state.name]));
    db = await startDynamoDB({ tables: specs, region: "us-east-1", sweepIntervalMs: 60_000 });
    store = createMessageStore(db.client, tables.messages, 1);
  });
  after(() => db?.close());

  it("gives each room consecutive cursors starting at 1", async () => {
    const r = room();
    const cursors = [];
    for (const text of ["a", "b", "c"]) cursors.push((await store.append(message(r, text))).cursor);
    assert.deepEqual(cursors, [cursorOf(1), cursorOf(2), cursorOf(3)]);
    assert.equal((await store.append(message(room(), "other room"))).cursor, cursorOf(1));
  });

  it("keeps the sequence gap-free under 20 concurrent senders", async () => {
    const r = room();
    const results = await Promise.all(Array.from({ length: 20 }, (_, i) => store.append(message(r, `m${i}`))));
    assert.deepEqual(results.map((x) => x.cursor).sort(), Array.from({ length: 20 }, (_, i) => cursorOf(i + 1)));
    const page = await store.history(r, undefined, 100);
    assert.deepEqual(page.messages.map((m) => m.cursor), Array.from({ length: 20 }, (_, i) => cursorOf(i + 1)));
  });

  it("stores a client id once: the repeat returns the original cursor, from any number of racing resends", async () => {
    const r = room();
    await store.append(message(r, "before"));
    const resends = await Promise.all(Array.from({ length: 8 }, () => store.append(message(r, "once", { clientId: "c-1" }))));
    assert.deepEqual(new Set(resends.map((x) => x.cursor)), new Set([cursorOf(2)]));
    assert.equal(resends.filter((x) => !x.duplicate).length, 1);
    assert.deepEqual((await store.history(r, undefined, 100)).messages.map((m) => m.message), ["before", "once"]);
  });

  it("treats the same client id from another name as a different message", async () => {
    const r = room();
    await store.append(message(r, "alice's", { clientId: "same" }));
    const bob = await store.append(message(r, "bob's", { clientId: "same", from: { name: "bob" } }));
    assert.deepEqual(bob, { cursor: cursorOf(2), duplicate: false });
  });

  it("pages forward from a cursor, oldest first, saying whether there is more", async () => {
    const r = room();
    for (let i = 1; i <= 7; i++) await store.append(message(r, `m${i}`));
    const first = await store.history(r, cursorOf(2), 3);
    assert.deepEqual(first.messages.map((m) => m.message), ["m3", "m4", "m5"]);
    assert.deepEqual([first.cursor, first.more], [cursorOf(5), true]);
    const second = await store.history(r, first.cursor!, 3);
    assert.deepEqual(second.messages.map((m) => m.message), ["m6", "m7"]);
    assert.deepEqual([second.cursor, second.more], [cursorOf(7), false]);
    const none = await store.history(r, second.cursor!, 3);
    assert.deepEqual([none.messages, none.cursor, none.more], [[], cursorOf(7), false]);
  });

  it("without since, returns the latest messages, oldest first", async () => {
    const r = room();
    for (let i = 1; i <= 5; i++) await store.append(message(r, `m${i}`));
    const latest = await store.history(r, undefined, 2);
    assert.deepEqual(latest.messages.map((m) => m.message), ["m4", "m5"]);
    assert.deepEqual([latest.cursor, latest.more], [cursorOf(5), false]);
    assert.deepEqual(await store.history(room(), undefined, 2), { messages: [], cursor: null, more: false });
  });

  it("keeps messages for the retention period and hides expired ones", async () => {
    const r = room();
    const kept = await store.append(message(r, "fresh"));
    const stored = (await store.history(r, undefined, 1)).messages[0];
    assert.equal(stored.expiresAt, Math.floor(stored.ts / 1000) + 86_400);
    await db.client.send(new PutCommand({ TableName: tables.messages, Item: { ...stored, cursor: cursorOf(2), message: "stale", expiresAt: 1 } }));
    assert.deepEqual((await store.history(r, kept.cursor === cursorOf(1) ? undefined : kept.cursor, 10)).messages.map((m) => m.message), ["fresh"]);
  });

  describe("stale records (a 410 from @connections)", () => {
    it("removes a record connected over a minute ago, keeps a newer one ($connect may still be running), and ignores a missing one", async () => {
      const connections = createConnectionsStore(db.client, { tableName: tables.connections, roomIndexName: "byRoom" });
      const now = Date.now();
      await connections.put({ connectionId: "old-1", room: "r", name: "ann", connectedAt: now - CONNECT_GRACE_MS - 1, expiresAt: 9_999_999_999 });
      await connections.put({ connectionId: "new-1", room: "r", name: "bo", connectedAt: now - CONNECT_GRACE_MS + 1_000, expiresAt: 9_999_999_999 });
      assert.equal(await connections.removeStale("old-1", now), true);
      assert.equal(await connections.removeStale("new-1", now), false);
      assert.equal(await connections.removeStale("never-1", now), false);
      assert.equal(await connections.get("old-1"), undefined);
      assert.equal((await connections.get("new-1"))?.name, "bo");
    });
  });

  describe("per-connection rate limit", () => {
    const limit = { messages: 3, windowSeconds: 10 };
    it("admits up to the limit in a window, refuses the next, and starts again in the next window", async () => {
      const connections = createConnectionsStore(db.client, { tableName: tables.connections, roomIndexName: "byRoom" });
      await connections.put({ connectionId: "rl-1", room: "r", name: "ann", connectedAt: 0, expiresAt: 9_999_999_999 });
      const t0 = 1_700_000_000_000;
      const verdicts = [];
      for (let i = 0; i < 4; i++) verdicts.push((await connections.admitMessage("rl-1", t0, limit)).allowed);
      assert.deepEqual(verdicts, [true, true, true, false]);
      const refused = await connections.admitMessage("rl-1", t0, limit);
      assert.equal(refused.record?.name, "ann", "the record comes back even when refused");
      assert.equal((await connections.admitMessage("rl-1", t0 + 10_000, limit)).allowed, true);
    });

    it("admits exactly the limit when a window's messages arrive all at once", async () => {
      const connections = createConnectionsStore(db.client, { tableName: tables.connections, roomIndexName: "byRoom" });
      await connections.put({ connectionId: "rl-burst", room: "r", name: "di", connectedAt: 0, expiresAt: 9_999_999_999 });
      const verdicts = await Promise.all(Array.from({ length: 8 }, () => connections.admitMessage("rl-burst", 1_700_000_200_000, limit)));
      assert.equal(verdicts.filter((v) => v.allowed).length, 3);
    });

    it("counts connections separately, and knows no unknown connection", async () => {
      const connections = createConnectionsStore(db.client, { tableName: tables.connections, roomIndexName: "byRoom" });
      await connections.put({ connectionId: "rl-2", room: "r", name: "bo", connectedAt: 0, expiresAt: 9_999_999_999 });
      await connections.put({ connectionId: "rl-3", room: "r", name: "cy", connectedAt: 0, expiresAt: 9_999_999_999 });
      const t0 = 1_700_000_100_000;
      for (let i = 0; i < 3; i++) await connections.admitMessage("rl-2", t0, limit);
      assert.equal((await connections.admitMessage("rl-2", t0, limit)).allowed, false);
      assert.equal((await connections.admitMessage("rl-3", t0, limit)).allowed, true);
      assert.deepEqual(await connections.admitMessage("nobody", t0, limit), { record: undefined, allowed: false });
    });
  });
});
