/**
 * Issue 13's store rules against a real (embedded) DynamoDB with the program's own tables: edits and
 * deletes as events checked in one transaction with the message they name, read markers, the member
 * list from the room index, the typing limit; and the pure rules beside them.
 */
import assert from "node:assert/strict";
import type { DynamoDBRecord } from "aws-lambda";
import { presenceChange } from "../../handlers/presence";
import { appendChecked, targetCheck } from "../../handlers/sendmessage";
import { ConnectionRecord, ConnectionsStore, createConnectionsStore } from "../../handlers/shared/connections";
import { isChatError } from "../../handlers/shared/errors";
import { createMessageStore, cursorOf, eventFrame, MAX_EDITS, MessageStore, NewMessage, StoredMessage } from "../../handlers/shared/messages";
import { validateMembersRequest, validateReadRequest, validateTarget } from "../../handlers/shared/protocol";
import { CURSOR_PATTERN } from "../../handlers/shared/messages";
import { LocalDynamoDB, startDynamoDB, tableSpec } from "../../local/dynamodb";
import { loadProgram } from "../../local/program";

const rejectsWith = async (work: Promise<unknown>, code: string) =>
  assert.rejects(work, (err: unknown) => isChatError(err) && err.code === code);
const throwsWith = (work: () => unknown, code: string) => assert.throws(work, (err: unknown) => isChatError(err) && err.code === code);

describe("room events (DynamoDB): edits, deletes, read markers, members, typing", function () {
  this.timeout(30_000);
  let db: LocalDynamoDB;
  let messages: MessageStore;
  let connections: ConnectionsStore;
  let seq = 0;
  const room = () => `ev-${++seq}-${Date.now()}`;
  const msg = (r: string, text: string, name = "ann"): NewMessage => ({ room: r, id: `id-${++seq}`, from: { name }, message: text, ts: Date.now() });

  before(async () => {
    const program = await loadProgram({ stack: "dev" });
    const tableResources = program.resources.filter((r) => r.type === "aws:dynamodb/table:Table");
    const tables = Object.fromEntries(tableResources.map((r) => [r.name, r.state.name as string]));
    db = await startDynamoDB({ tables: tableResources.map(tableSpec), region: "us-east-1", sweepIntervalMs: 60_000 });
    messages = createMessageStore(db.client, tables.messages, 1, { holeGraceMs: 60_000 });
    connections = createConnectionsStore(db.client, { tableName: tables.connections, roomIndexName: "byRoom" });
  });
  after(() => db?.close());

  /** Appends an edit or delete of `target` by `name`, checking the target as sendmessage does. */
  async function change(r: string, type: "edit" | "delete", target: string, name = "ann", text?: string) {
    const draft: NewMessage = { room: r, id: `${type}-${Math.random()}`, from: { name }, ts: Date.now(), type, target, ...(text ? { message: text } : {}) };
    const sender = { connectionId: "c", room: r, name, connectedAt: 0, expiresAt: 0 } as ConnectionRecord;
    const check = targetCheck(await messages.event(r, target), draft, sender, { editWindowMs: 3_600_000, now: Date.now() });
    return messages.append(draft, undefined, check);
  }

  it("stores an edit as a new event naming the message, and records it on the message", async () => {
    const r = room();
    const original = await messages.append(msg(r, "helo"));
    const edit = await change(r, "edit", original.cursor, "ann", "hello");
    assert.equal(edit.cursor, cursorOf(2));
    const page = await messages.history(r, undefined, 10);
    assert.deepEqual(page.events.map((e) => eventFrame(e, page.epoch!)).map((f) => [f.type, "target" in f ? f.target : null, "message" in f ? f.message : null, "edited" in f ? f.edited : null]), [
      ["message", null, "helo", true],
      ["edit", original.cursor, "hello", null],
    ]);
  });

  it("deletes in one transaction: the event, the message's text and every edit's text are gone together", async () => {
    const r = room();
    const original = await messages.append(msg(r, "secret"));
    await change(r, "edit", original.cursor, "ann", "secret 2");
    await change(r, "edit", original.cursor, "ann", "secret 3");
    await change(r, "delete", original.cursor);
    const page = await messages.history(r, undefined, 10);
    const frames = page.events.map((e) => eventFrame(e, page.epoch!));
    assert.ok(!JSON.stringify(frames).includes("secret"), "no deleted text is replayed");
    assert.deepEqual(frames.map((f) => [f.type, "deleted" in f ? f.deleted : null]), [["message", true], ["edit", true], ["edit", true], ["delete", null]]);
  });

  it("must refuse an edit or delete of someone else's message, of a deleted one, of no message, and an edit past the window or the edit limit", async () => {
    const r = room();
    const original = await messages.append(msg(r, "mine"));
    await rejectsWith(change(r, "edit", original.cursor, "bo", "theirs"), "not_author");
    await rejectsWith(change(r, "delete", original.cursor, "bo"), "not_author");
    await rejectsWith(change(r, "edit", cursorOf(99)), "not_found");
    const edit = await change(r, "edit", original.cursor, "ann", "mine!");
    await rejectsWith(change(r, "edit", edit.cursor, "ann", "an edit of an edit"), "not_found");
    const old: StoredMessage = { ...msg(r, "old"), cursor: cursorOf(5), expiresAt: Math.floor(Date.now() / 1000) + 60, ts: Date.now() - 7_200_000 };
    const sender = { connectionId: "c", room: r, name: "ann", connectedAt: 0, expiresAt: 0 } as ConnectionRecord;
    const draft: NewMessage = { room: r, id: "e", from: { name: "ann" }, ts: Date.now(), type: "edit", target: old.cursor, message: "x" };
    throwsWith(() => targetCheck(old, draft, sender, { editWindowMs: 3_600_000, now: Date.now() }), "edit_window_passed");
    const edited = { ...old, ts: Date.now(), edits: Array.from({ length: MAX_EDITS }, (_, i) => cursorOf(100 + i)) };
    throwsWith(() => targetCheck(edited, draft, sender, { editWindowMs: 3_600_000, now: Date.now() }), "too_many_edits");
    await change(r, "delete", original.cursor);
    await rejectsWith(change(r, "delete", original.cursor), "message_deleted");
    await rejectsWith(change(r, "edit", original.cursor, "ann", "again"), "message_deleted");
  });

  it("acknowledges a resent delete or edit that was applied (its ack lost) with its first cursor, instead of refusing it", async () => {
    const r = room();
    const original = await messages.append(msg(r, "resend me"));
    const sender = { connectionId: "c", room: r, name: "ann", connectedAt: 0, expiresAt: 0 } as ConnectionRecord;
    const rules = { editWindowMs: 3_600_000, now: Date.now() };
    const draft: NewMessage = { room: r, id: "del", from: { name: "ann" }, ts: Date.now(), type: "delete", target: original.cursor, clientId: "d-1" };
    const first = await appendChecked(messages, draft, sender, rules, Date.now() + 5_000);
    const again = await appendChecked(messages, { ...draft, id: "del-2" }, sender, rules, Date.now() + 5_000);
    assert.deepEqual([again.cursor, again.epoch, again.duplicate], [first.cursor, first.epoch, true]);
    await rejectsWith(appendChecked(messages, { ...draft, id: "del-3", clientId: "d-2" }, sender, rules, Date.now() + 5_000), "message_deleted");
  });

  it("must not store an edit whose message changed after it was checked: its number becomes a tombstone and the caller is told", async () => {
    const r = room();
    const original = await messages.append(msg(r, "race"));
    const sender = { connectionId: "c", room: r, name: "ann", connectedAt: 0, expiresAt: 0 } as ConnectionRecord;
    const draft: NewMessage = { room: r, id: "late", from: { name: "ann" }, ts: Date.now(), type: "edit", target: original.cursor, message: "late edit" };
    const stale = targetCheck(await messages.event(r, original.cursor), draft, sender, { editWindowMs: 3_600_000, now: Date.now() });
    await change(r, "delete", original.cursor); // lands between the check and the write
    await rejectsWith(messages.append(draft, undefined, stale), "target_changed");
    const page = await messages.history(r, undefined, 10);
    assert.deepEqual(page.events.map((e) => e.type ?? "message"), ["message", "delete", "tombstone"], "the edit's number was given back");
  });

  it("keeps a read marker per (room, name) that only moves forward, and counts messages from others after it", async () => {
    const r = room();
    const a = await messages.append(msg(r, "a1", "ann"));
    await messages.append(msg(r, "b1", "bo"));
    await messages.append(msg(r, "a2", "ann"));
    const b2 = await messages.append(msg(r, "b2", "bo"));
    assert.deepEqual(await messages.readMarker(r, "ann"), { cursor: null, epoch: a.epoch, unread: 0, more: false });
    assert.deepEqual(await messages.moveMarker(r, "ann", a.cursor, a.epoch), { cursor: a.cursor, epoch: a.epoch, unread: 2, more: false }, "bo's two, not ann's own");
    assert.equal((await messages.moveMarker(r, "ann", cursorOf(0), a.epoch)).cursor, a.cursor, "never backwards");
    assert.equal((await messages.moveMarker(r, "ann", b2.cursor, a.epoch)).unread, 0);
    assert.equal((await messages.readMarker(r, "bo")).cursor, null, "per name");
    await rejectsWith(messages.moveMarker(r, "ann", cursorOf(50), a.epoch), "invalid_read");
    await rejectsWith(messages.moveMarker(r, "ann", a.cursor, "OtherEp0"), "invalid_read");
  });

  it("lists a room's names from the index, sorted, with connection counts, paged by name; counts the room", async () => {
    const r = room();
    const put = (id: string, name: string, inRoom = r) => connections.put({ connectionId: id, room: inRoom, name, connectedAt: Date.now(), expiresAt: Math.floor(Date.now() / 1000) + 3600 });
    for (const [id, name] of [["c1", "zed"], ["c2", "amy"], ["c3", "amy"], ["c4", "bob"]]) await put(`${r}-${id}`, name);
    await put(`${r}-c5`, "other", room());
    assert.deepEqual(await connections.roomNames(r, undefined, 10), { members: [{ name: "amy", connections: 2 }, { name: "bob", connections: 1 }, { name: "zed", connections: 1 }], next: null });
    assert.deepEqual(await connections.roomNames(r, undefined, 2), { members: [{ name: "amy", connections: 2 }, { name: "bob", connections: 1 }], next: "bob" });
    assert.deepEqual(await connections.roomNames(r, "bob", 2), { members: [{ name: "zed", connections: 1 }], next: null });
    assert.equal(await connections.roomCount(r), 4);
    assert.equal(await connections.roomCount(r, 2), 2, "stops counting at upTo");
  });

  it("lets one typing signal per interval through, and none for an unknown connection", async () => {
    const r = room();
    const id = `${r}-typist`;
    await connections.put({ connectionId: id, room: r, name: "ann", connectedAt: Date.now(), expiresAt: Math.floor(Date.now() / 1000) + 3600 });
    const now = Date.now();
    assert.equal((await connections.allowTyping(id, now, 2_000))?.name, "ann");
    assert.equal(await connections.allowTyping(id, now + 1_999, 2_000), undefined, "too soon");
    assert.equal((await connections.allowTyping(id, now + 2_000, 2_000))?.room, r);
    assert.equal(await connections.allowTyping("nobody", now, 2_000), undefined);
  });
});

describe("presence: which stream records are joins and leaves", () => {
  const image = { connectionId: { S: "abc=" }, room: { S: "general" }, name: { S: "ann" }, connectedAt: { N: "1731324924123" } };
  const record = (eventName: DynamoDBRecord["eventName"], images: { NewImage?: typeof image; OldImage?: typeof image }): DynamoDBRecord => ({
    eventID: "e1",
    eventName,
    dynamodb: { ApproximateCreationDateTime: 1_700_000_000, Keys: { connectionId: { S: "abc=" } }, ...images },
  });

  it("reads a join from an INSERT's new image and a leave from a REMOVE's old image (a TTL removal too)", () => {
    // A join is dated by its connection (ms); a leave by the stream record (whole seconds).
    assert.deepEqual(presenceChange(record("INSERT", { NewImage: image })), { type: "join", room: "general", name: "ann", connectionId: "abc=", ts: 1_731_324_924_123, id: "e1" });
    const ttl = { ...record("REMOVE", { OldImage: image }), userIdentity: { type: "Service", principalId: "dynamodb.amazonaws.com" } };
    assert.deepEqual([presenceChange(ttl)?.type, presenceChange(ttl)?.ts], ["leave", 1_700_000_000_000]);
  });

  it("must ignore updates (rate limits, typing) and items that are not connections (a name's places)", () => {
    assert.equal(presenceChange(record("MODIFY", { NewImage: image, OldImage: image })), undefined);
    const place = { connectionId: { S: "#name#ann#0" } } as unknown as typeof image;
    assert.equal(presenceChange(record("INSERT", { NewImage: place })), undefined);
  });
});

describe("protocol: the new actions' bad input", () => {
  it("answers invalid_target, invalid_members and invalid_read with the rule", () => {
    for (const bad of [undefined, 5, "1", "00000000000000001", "abcdefghijklmnop"]) throwsWith(() => validateTarget(bad, CURSOR_PATTERN), "invalid_target");
    assert.equal(validateTarget("0000000000000001", CURSOR_PATTERN), "0000000000000001");
    for (const after of [5, "", "has space", "x".repeat(33)]) throwsWith(() => validateMembersRequest({ after }), "invalid_members");
    assert.deepEqual(validateMembersRequest({ after: "amy" }), { after: "amy" });
    assert.deepEqual(validateReadRequest({}, CURSOR_PATTERN), {});
    throwsWith(() => validateReadRequest({ epoch: "Abcdefgh" }, CURSOR_PATTERN), "invalid_read");
    throwsWith(() => validateReadRequest({ cursor: "0000000000000001" }, CURSOR_PATTERN), "invalid_read");
    throwsWith(() => validateReadRequest({ cursor: "x", epoch: "Abcdefgh" }, CURSOR_PATTERN), "invalid_read");
    assert.deepEqual(validateReadRequest({ cursor: "0000000000000001", epoch: "Abcdefgh" }, CURSOR_PATTERN), { cursor: "0000000000000001", epoch: "Abcdefgh" });
  });
});
