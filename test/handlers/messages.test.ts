/**
 * The message store and the rate limit against a real (embedded) DynamoDB with the program's own
 * table definitions, transactions included.
 */
import { DeleteCommand, GetCommand, PutCommand, UpdateCommand } from "@aws-sdk/lib-dynamodb";
import assert from "node:assert/strict";
import { CONNECT_GRACE_MS, createConnectionsStore, placeKey } from "../../handlers/shared/connections";
import { createMessageStore, cursorOf, EPOCH_LENGTH, HistoryPage, isTombstone, MAX_TOMBSTONE_RUN, MessageStore, NewMessage, StoredMessage } from "../../handlers/shared/messages";
import { LocalDynamoDB, startDynamoDB, tableSpec } from "../../local/dynamodb";
import { loadProgram } from "../../local/program";

const HOLE_GRACE_MS = 60_000;

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
    store = createMessageStore(db.client, tables.messages, 1, { holeGraceMs: HOLE_GRACE_MS });
  });
  after(() => db?.close());

  const texts = (page: HistoryPage) => page.events.map((e) => (isTombstone(e) ? `(tombstone ${Number(e.cursor)})` : e.message));
  /** Takes a number the way a sender does, and never stores it: a sender that died there. */
  const takeAndDie = (r: string) =>
    db.client.send(new UpdateCommand({ TableName: tables.messages, Key: { room: r, cursor: "#head" }, UpdateExpression: "ADD seq :one", ExpressionAttributeValues: { ":one": 1 } }));
  /** Moves an event's numberedAt back, as if its number had been taken `ms` earlier. */
  const backdate = (r: string, seq: number, ms: number) =>
    db.client.send(new UpdateCommand({ TableName: tables.messages, Key: { room: r, cursor: cursorOf(seq) }, UpdateExpression: "SET numberedAt = numberedAt - :ms", ExpressionAttributeValues: { ":ms": ms } }));

  it("gives each room consecutive cursors starting at 1, under one epoch per room", async () => {
    const r = room();
    const appended = [];
    for (const text of ["a", "b", "c"]) appended.push(await store.append(message(r, text)));
    assert.deepEqual(appended.map((a) => a.cursor), [cursorOf(1), cursorOf(2), cursorOf(3)]);
    assert.equal(new Set(appended.map((a) => a.epoch)).size, 1);
    assert.equal(appended[0].epoch.length, EPOCH_LENGTH);
    const other = await store.append(message(room(), "other room"));
    assert.equal(other.cursor, cursorOf(1));
    assert.notEqual(other.epoch, appended[0].epoch, "each room's stream has its own epoch");
    assert.equal((await store.history(r, undefined, 10)).epoch, appended[0].epoch);
  });

  it("keeps the sequence gap-free under 50 concurrent senders, with no retries (one atomic step each)", async () => {
    const r = room();
    const results = await Promise.all(Array.from({ length: 50 }, (_, i) => store.append(message(r, `m${i}`))));
    assert.deepEqual(results.map((x) => x.cursor).sort(), Array.from({ length: 50 }, (_, i) => cursorOf(i + 1)));
    const page = await store.history(r, undefined, 100);
    assert.deepEqual(page.events.map((m) => m.cursor), Array.from({ length: 50 }, (_, i) => cursorOf(i + 1)));
    assert.equal(page.more, false);
  });

  it("stores a client id once: the repeat returns the original cursor and epoch, from any number of racing resends", async () => {
    const r = room();
    const before = await store.append(message(r, "before"));
    const resends = await Promise.all(Array.from({ length: 8 }, () => store.append(message(r, "once", { clientId: "c-1" }))));
    assert.deepEqual(new Set(resends.map((x) => x.cursor)), new Set([cursorOf(2)]));
    assert.deepEqual(new Set(resends.map((x) => x.epoch)), new Set([before.epoch]));
    assert.equal(resends.filter((x) => !x.duplicate).length, 1);
    // A resend that raced past the claim check gave its number back as a tombstone: nothing else is stored.
    const events = (await store.history(r, undefined, 100)).events;
    assert.deepEqual(events.filter((e) => !isTombstone(e)).map((e) => (e as StoredMessage).message), ["before", "once"]);
    const later = await store.append(message(r, "once", { clientId: "c-1" }));
    assert.deepEqual(later, { cursor: cursorOf(2), epoch: before.epoch, duplicate: true });
  });

  it("treats the same client id from another name as a different message", async () => {
    const r = room();
    await store.append(message(r, "alice's", { clientId: "same" }));
    const bob = await store.append(message(r, "bob's", { clientId: "same", from: { name: "bob" } }));
    assert.equal(bob.cursor, cursorOf(2));
    assert.equal(bob.duplicate, false);
  });

  it("pages forward from a cursor, oldest first, saying whether there is more", async () => {
    const r = room();
    for (let i = 1; i <= 7; i++) await store.append(message(r, `m${i}`));
    const first = await store.history(r, cursorOf(2), 3);
    assert.deepEqual(texts(first), ["m3", "m4", "m5"]);
    assert.deepEqual([first.cursor, first.more], [cursorOf(5), true]);
    const second = await store.history(r, first.cursor!, 3);
    assert.deepEqual(texts(second), ["m6", "m7"]);
    assert.deepEqual([second.cursor, second.more], [cursorOf(7), false]);
    const none = await store.history(r, second.cursor!, 3);
    assert.deepEqual([none.events, none.cursor, none.more], [[], cursorOf(7), false]);
  });

  it("without since, returns the latest messages, oldest first", async () => {
    const r = room();
    for (let i = 1; i <= 5; i++) await store.append(message(r, `m${i}`));
    const latest = await store.history(r, undefined, 2);
    assert.deepEqual(texts(latest), ["m4", "m5"]);
    assert.deepEqual([latest.cursor, latest.more], [cursorOf(5), false]);
    assert.deepEqual(await store.history(room(), undefined, 2), { events: [], cursor: null, more: false, epoch: null });
  });

  it("keeps messages for the retention period and passes over expired ones", async () => {
    const r = room();
    await store.append(message(r, "fresh"));
    const stored = (await store.history(r, undefined, 1)).events[0] as StoredMessage;
    assert.equal(stored.expiresAt, Math.floor(stored.ts / 1000) + 86_400);
    await db.client.send(new PutCommand({ TableName: tables.messages, Item: { ...stored, cursor: cursorOf(2), message: "stale", expiresAt: 1 } }));
    await store.append(message(r, "third")); // takes 3: the fake expired item sits under 2
    const page = await store.history(r, cursorOf(0), 10);
    assert.deepEqual(texts(page), ["fresh", "third"]);
    assert.equal(page.cursor, cursorOf(3), "an expired number is settled: the cursor moves past it");
  });

  describe("a sender that dies between taking a number and storing its message", () => {
    it("holds history at the hole while its sender may still write it, with more and a retry hint", async () => {
      const r = room();
      await store.append(message(r, "one"));
      await takeAndDie(r); // 2
      await store.append(message(r, "three"));
      const page = await store.history(r, cursorOf(0), 10);
      assert.deepEqual(texts(page), ["one"]);
      assert.deepEqual([page.cursor, page.more, page.retryAfterMs], [cursorOf(1), true, 250]);
      const again = await store.history(r, cursorOf(1), 10);
      assert.deepEqual([again.events, again.cursor, again.more], [[], cursorOf(1), true], "nothing past the hole");
    });

    it("tombstones the hole once a later number is older than the grace, and the late writer's put then fails", async () => {
      const r = room();
      await store.append(message(r, "one"));
      await takeAndDie(r); // 2
      await store.append(message(r, "three"));
      await backdate(r, 3, HOLE_GRACE_MS + 1);
      const page = await store.history(r, cursorOf(0), 10);
      assert.deepEqual(texts(page), ["one", "(tombstone 2)", "three"]);
      assert.deepEqual([page.cursor, page.more], [cursorOf(3), false]);
      // The dead sender wakes up and writes its number: refused, the tombstone stays.
      const late = db.client.send(new PutCommand({ TableName: tables.messages, Item: { room: r, cursor: cursorOf(2), message: "late" }, ConditionExpression: "attribute_not_exists(#c) OR epoch <> :e", ExpressionAttributeNames: { "#c": "cursor" }, ExpressionAttributeValues: { ":e": page.epoch } }));
      await assert.rejects(late, { name: "ConditionalCheckFailedException" });
      assert.deepEqual(texts(await store.history(r, cursorOf(0), 10)), ["one", "(tombstone 2)", "three"], "replayed the same way");
    });

    it("passes over a long run of empty numbers (expired history) without writing tombstones", async () => {
      const r = room();
      for (let i = 0; i <= MAX_TOMBSTONE_RUN; i++) await takeAndDie(r);
      await store.append(message(r, "after"));
      await backdate(r, MAX_TOMBSTONE_RUN + 2, HOLE_GRACE_MS + 1);
      const page = await store.history(r, cursorOf(0), 10);
      assert.deepEqual(texts(page), ["after"]);
      assert.equal(page.cursor, cursorOf(MAX_TOMBSTONE_RUN + 2));
      const stored = await db.client.send(new GetCommand({ TableName: tables.messages, Key: { room: r, cursor: cursorOf(1) } }));
      assert.equal(stored.Item, undefined, "no tombstone written");
    });

    it("gives a number that was tombstoned before its sender stored it back: the sender takes a new one", async () => {
      const r = room();
      const first = await store.append(message(r, "one"));
      // A reader settled 2 before its sender got there (the sender was slower than the grace).
      await db.client.send(new PutCommand({ TableName: tables.messages, Item: { room: r, cursor: cursorOf(2), type: "tombstone", epoch: first.epoch, numberedAt: 0, expiresAt: 9_999_999_999 } }));
      await db.client.send(new UpdateCommand({ TableName: tables.messages, Key: { room: r, cursor: "#head" }, UpdateExpression: "SET seq = :one", ExpressionAttributeValues: { ":one": 1 } }));
      const second = await store.append(message(r, "two", { clientId: "t-2" }));
      assert.equal(second.cursor, cursorOf(3));
      assert.deepEqual(texts(await store.history(r, cursorOf(0), 10)), ["one", "(tombstone 2)", "two"]);
    });
  });

  it("starts a new epoch when the head is lost, and overwrites the old epoch's leftovers", async () => {
    const r = room();
    const old = await store.append(message(r, "old one"));
    await store.append(message(r, "old two"));
    await db.client.send(new DeleteCommand({ TableName: tables.messages, Key: { room: r, cursor: "#head" } }));
    const fresh = await store.append(message(r, "new one"));
    assert.equal(fresh.cursor, cursorOf(1));
    assert.notEqual(fresh.epoch, old.epoch);
    const page = await store.history(r, undefined, 10);
    assert.equal(page.epoch, fresh.epoch);
    assert.deepEqual(texts(page), ["new one"], "the old epoch's message 2 is not replayed as the new epoch's");
  });

  it("must not settle a cursor of another epoch: asked with the old epoch, it answers the new stream's latest page", async () => {
    const r = room();
    const old = await store.append(message(r, "old one"));
    await store.append(message(r, "old two"));
    await store.append(message(r, "old three"));
    await db.client.send(new DeleteCommand({ TableName: tables.messages, Key: { room: r, cursor: "#head" } }));
    const fresh = await store.append(message(r, "new one"));
    const stale = await store.history(r, cursorOf(3), 10, old.epoch);
    assert.deepEqual([texts(stale), stale.cursor, stale.epoch], [["new one"], cursorOf(1), fresh.epoch]);
    const same = await store.history(r, cursorOf(1), 10, fresh.epoch);
    assert.deepEqual([texts(same), same.cursor], [[], cursorOf(1)], "the same epoch pages on from since");
  });

  it("follows DynamoDB's 1 MB pages: more and the cursor come from what was read, not the item count", async () => {
    const r = room();
    const big = "x".repeat(32_000);
    for (let i = 1; i <= 40; i++) await store.append(message(r, `${i} ${big}`));
    const page = await store.history(r, cursorOf(0), 100);
    assert.equal(page.events.length, 40);
    assert.deepEqual([page.cursor, page.more], [cursorOf(40), false]);
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
      for (let i = 0; i < 4; i++) verdicts.push((await connections.admit("rl-1", t0, limit)).allowed);
      assert.deepEqual(verdicts, [true, true, true, false]);
      const refused = await connections.admit("rl-1", t0 + 4_000, limit);
      assert.equal(refused.record?.name, "ann", "the record comes back even when refused");
      assert.equal(refused.retryAfterMs, 6_000, "the refusal says when the next window starts");
      assert.equal((await connections.admit("rl-1", t0 + 10_000, limit)).allowed, true);
    });

    it("admits exactly the limit when a window's messages arrive all at once", async () => {
      const connections = createConnectionsStore(db.client, { tableName: tables.connections, roomIndexName: "byRoom" });
      await connections.put({ connectionId: "rl-burst", room: "r", name: "di", connectedAt: 0, expiresAt: 9_999_999_999 });
      const verdicts = await Promise.all(Array.from({ length: 8 }, () => connections.admit("rl-burst", 1_700_000_200_000, limit)));
      assert.equal(verdicts.filter((v) => v.allowed).length, 3);
    });

    it("counts connections separately, and knows no unknown connection", async () => {
      const connections = createConnectionsStore(db.client, { tableName: tables.connections, roomIndexName: "byRoom" });
      await connections.put({ connectionId: "rl-2", room: "r", name: "bo", connectedAt: 0, expiresAt: 9_999_999_999 });
      await connections.put({ connectionId: "rl-3", room: "r", name: "cy", connectedAt: 0, expiresAt: 9_999_999_999 });
      const t0 = 1_700_000_100_000;
      for (let i = 0; i < 3; i++) await connections.admit("rl-2", t0, limit);
      assert.equal((await connections.admit("rl-2", t0, limit)).allowed, false);
      assert.equal((await connections.admit("rl-3", t0, limit)).allowed, true);
      assert.deepEqual(await connections.admit("nobody", t0, limit), { record: undefined, allowed: false });
    });

    it("spends a cost only when the window can cover all of it; a charge after the fact overdraws it, and the debt carries into the next window once", async () => {
      const connections = createConnectionsStore(db.client, { tableName: tables.connections, roomIndexName: "byRoom" });
      await connections.put({ connectionId: "rl-cost", room: "r", name: "ed", connectedAt: 0, expiresAt: 9_999_999_999 });
      const t0 = 1_700_000_300_000; // the start of a 10 s window
      const allowed = async (at: number, cost = 1) => (await connections.admit("rl-cost", at, limit, cost)).allowed;
      assert.deepEqual([await allowed(t0, 2), await allowed(t0, 2), await allowed(t0, 1)], [true, false, true], "2 + 2 > 3; 2 + 1 fits");
      assert.equal(await allowed(t0 + 10_000), true, "a new window after one within budget starts afresh");
      await connections.charge("rl-cost", t0 + 10_000, limit, 3); // a page charged after it was sent: 4 of 3
      assert.equal(await allowed(t0 + 10_000), false);
      assert.deepEqual([await allowed(t0 + 20_000), await allowed(t0 + 20_000), await allowed(t0 + 20_000)], [true, true, false], "1 unit of debt carried over");
      assert.equal(await allowed(t0 + 10_000), false, "a late request from an older window must not restart the count");
      assert.equal(await allowed(t0 + 30_000, 4), false, "a cost above the whole budget is never admitted");
      await connections.charge("rl-cost", t0 + 20_000, limit, 30); // far overdrawn: more debt than one window can carry
      assert.equal(await allowed(t0 + 30_000), false);
      assert.equal(await allowed(t0 + 40_000), true, "forgiven after a whole window");
    });
  });

  describe("connections per name (auth on)", () => {
    const store = () => createConnectionsStore(db.client, { tableName: tables.connections, roomIndexName: "byRoom" });
    const later = Math.floor(Date.now() / 1000) + 3_600;

    it("gives out exactly the cap's places under a burst, each to one holder", async () => {
      const connections = store();
      const now = Date.now();
      const places = await Promise.all(Array.from({ length: 12 }, (_, i) => connections.takePlace("carol", `c-${i}`, later, now, 5)));
      const taken = places.filter((p): p is string => p !== undefined);
      assert.equal(taken.length, 5);
      assert.deepEqual(new Set(taken), new Set([0, 1, 2, 3, 4].map((i) => placeKey("carol", i))));
    });

    it("frees a place when its holder's record is removed, or removed as stale, and never one taken again by another holder", async () => {
      const connections = store();
      const now = Date.now();
      const place = (await connections.takePlace("erin", "erin-1", later, now, 1))!;
      await connections.put({ connectionId: "erin-1", room: "r", name: "erin", connectedAt: now - CONNECT_GRACE_MS - 1, expiresAt: later, place });
      await connections.put({ connectionId: "erin-guest", room: "r", name: "erin", connectedAt: now - CONNECT_GRACE_MS - 1, expiresAt: later });
      assert.equal(await connections.removeStale("erin-guest", now), true);
      assert.equal(await connections.takePlace("erin", "erin-2", later, now, 1), undefined, "a record without a place frees nothing");
      assert.equal(await connections.removeStale("erin-1", now), true);
      assert.equal(await connections.takePlace("erin", "erin-2", later, now, 1), place);
      await connections.freePlace(place, "erin-1"); // a late, repeated release by the old holder
      assert.equal(await connections.takePlace("erin", "erin-3", later, now, 1), undefined, "erin-2 still holds it");
      await connections.put({ connectionId: "erin-2", room: "r", name: "erin", connectedAt: now, expiresAt: later, place });
      await connections.remove("erin-2");
      assert.equal(await connections.takePlace("erin", "erin-3", later, now, 1), place);
    });

    it("takes over a place whose holder expired without a $disconnect", async () => {
      const connections = store();
      const now = Date.now();
      assert.ok(await connections.takePlace("dave", "d-1", Math.floor(now / 1000) - 1, now, 1));
      assert.ok(await connections.takePlace("dave", "d-2", later, now, 1), "the first holder's connection would have expired");
      assert.equal(await connections.takePlace("dave", "d-3", later, now, 1), undefined);
    });
  });
});
