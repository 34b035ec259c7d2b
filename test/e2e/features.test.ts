/**
 * End to end, from the stack outputs: presence, typing, edits and deletes, read markers and the
 * member list (issue 13), through wscat and ws clients, against the local stack (or E2E_STACK).
 */
import assert from "node:assert/strict";
import { Client, Frame, isSequenced, Wscat } from "./clients";
import { E2EStack, e2eStack, eventually } from "./stack";

const parse = (frames: string[]) => frames.flatMap((f) => (f.startsWith("{") ? [JSON.parse(f) as Frame] : []));
const ofType = (type: string) => (f: string) => f.startsWith(`{"type":"${type}"`);

describe("e2e: presence, typing, edits, deletes and read markers", function () {
  this.timeout(120_000);
  let stack: E2EStack;
  const open: (Client | Wscat)[] = [];
  const connect = async (room: string, name: string) => {
    const client = await Client.open(stack.outputs.url, { room, name });
    open.push(client);
    await client.connectionId();
    return client;
  };
  before(async () => (stack = await e2eStack()));
  afterEach(async () => Promise.all(open.splice(0).map((c) => c.close().catch(() => undefined))));
  after(async () => stack?.stop());

  it("records joins and leaves in the room's sequence: a late reader replays who came and went, in order with the messages", async () => {
    const room = `presence-${Date.now()}`;
    const ann = await connect(room, "ann");
    const bo = await connect(room, "bo");
    // Each member sees the other's join live (and its own).
    await ann.waitFor((f) => ofType("join")(f) && f.includes('"name":"bo"'), 30_000);
    await ann.sendReliably("hello bo", "p-1");
    await bo.close();
    await ann.waitFor((f) => ofType("leave")(f) && f.includes('"name":"bo"'), 30_000);

    const reader = await connect(room, "cy");
    const events = (await reader.historyAll()).filter((e) => e.type !== "tombstone");
    const story = events.map((e) => `${e.type}:${(e.from as { name: string }).name}`);
    assert.deepEqual(story.slice(0, 4), ["join:ann", "join:bo", "message:ann", "leave:bo"], "in the order it happened");
    assert.deepEqual(events.map((e) => Number(e.cursor)), events.map((_, i) => i + 1), "one sequence, gap-free");
  });

  it("lists the room's members with their connection counts, sorted by name, and answers a bad `after` with invalid_members", async () => {
    const room = `members-${Date.now()}`;
    const zed = await connect(room, "zed");
    await connect(room, "amy");
    await connect(room, "amy");
    zed.send({ action: "members" });
    const members = JSON.parse(await zed.waitFor(ofType("members"), 10_000));
    assert.deepEqual(members, { type: "members", room, members: [{ name: "amy", connections: 2 }, { name: "zed", connections: 1 }], next: null });
    zed.send({ action: "members", after: "amy" });
    await zed.waitFor(() => parse(zed.frames).filter((f) => f.type === "members").length === 2, 10_000);
    assert.deepEqual(parse(zed.frames).filter((f) => f.type === "members")[1].members, [{ name: "zed", connections: 1 }], "the page after amy");
    zed.send({ action: "members", after: "no spaces allowed" });
    const refusal = JSON.parse(await zed.waitFor(ofType("error"), 10_000));
    assert.equal(refusal.code, "invalid_members");
  });

  it("sends typing to the other members only, never stored nor acknowledged, and drops a second one within the interval", async () => {
    const room = `typing-${Date.now()}`;
    const ann = await connect(room, "ann");
    const bo = await connect(room, "bo");
    ann.send({ action: "typing" });
    const typing = JSON.parse(await bo.waitFor(ofType("typing"), 10_000));
    assert.deepEqual(typing, { type: "typing", room, from: { name: "ann" } });
    ann.send({ action: "typing" }); // within 2 s: dropped silently
    if (stack.local) {
      // The local stack's log has one "typing" line per signal: wait until the second was handled.
      const annId = await ann.connectionId();
      const lines = () => stack.logs().split("\n").filter((l) => l.includes('"msg":"typing"') && l.includes(annId));
      await eventually(() => assert.equal(lines().length, 2), 30_000);
      assert.match(lines()[1], /"outcome":"too_soon"/);
    }
    await ann.sendReliably("after typing", "t-1");
    await bo.waitFor((f) => f.includes("after typing"), 10_000);
    assert.equal(bo.frames.filter(ofType("typing")).length, 1, "the surplus was dropped");
    assert.equal(ann.frames.filter(ofType("typing")).length, 0, "the typist gets nothing back");
    const stored = await bo.historyAll();
    assert.equal(stored.filter((e) => e.type === "typing").length, 0, "never stored");
  });

  it("edits and deletes one's own message as new events that name it; history replays the log with the text of a deleted message wiped", async () => {
    const room = `edit-${Date.now()}`;
    const ann = await connect(room, "ann");
    const bo = await connect(room, "bo");
    const sent = await ann.sendReliably("helo", "e-1");
    ann.send({ action: "edit", cursor: sent.cursor, message: "hello", id: "e-2" });
    const editAck = JSON.parse(await ann.waitFor((f) => ofType("ack")(f) && f.includes('"id":"e-2"'), 10_000));
    assert.ok(Number(editAck.cursor) > Number(sent.cursor), "an edit is a new event");
    const edit = JSON.parse(await bo.waitFor(ofType("edit"), 10_000));
    assert.deepEqual([edit.target, edit.message, edit.from.name, edit.cursor], [sent.cursor, "hello", "ann", editAck.cursor]);

    // Someone else's message: refused, nothing stored.
    bo.send({ action: "edit", cursor: sent.cursor, message: "mine now", id: "x-1" });
    assert.equal(JSON.parse(await bo.waitFor((f) => ofType("error")(f) && f.includes('"id":"x-1"'), 10_000)).code, "not_author");
    bo.send({ action: "delete", cursor: sent.cursor, id: "x-2" });
    assert.equal(JSON.parse(await bo.waitFor((f) => ofType("error")(f) && f.includes('"id":"x-2"'), 10_000)).code, "not_author");

    ann.send({ action: "delete", cursor: sent.cursor, id: "e-3" });
    await ann.waitFor((f) => ofType("ack")(f) && f.includes('"id":"e-3"'), 10_000);
    const deleted = JSON.parse(await bo.waitFor(ofType("delete"), 10_000));
    assert.equal(deleted.target, sent.cursor);
    ann.send({ action: "edit", cursor: sent.cursor, message: "too late", id: "e-4" });
    assert.equal(JSON.parse(await ann.waitFor((f) => ofType("error")(f) && f.includes('"id":"e-4"'), 10_000)).code, "message_deleted");

    const replay = (await bo.historyAll()).filter((e) => e.type !== "join" && e.type !== "tombstone");
    assert.deepEqual(
      replay.map((e) => [e.type, e.target ?? null, e.message ?? null, e.deleted ?? null]),
      [
        ["message", null, "", true],
        ["edit", sent.cursor, "", true],
        ["delete", sent.cursor, null, null],
      ],
      "the log stays; the deleted text does not",
    );
  });

  it("refuses an edit or delete of a cursor that holds no message, or holds a join, with not_found", async () => {
    const room = `nf-${Date.now()}`;
    const ann = await connect(room, "ann");
    ann.send({ action: "delete", cursor: "0000000099999999", id: "n-1" });
    assert.equal(JSON.parse(await ann.waitFor((f) => ofType("error")(f) && f.includes('"id":"n-1"'), 10_000)).code, "not_found");
    const join = (await ann.historyAll()).find((e) => e.type === "join")!;
    ann.send({ action: "edit", cursor: join.cursor, message: "x", id: "n-2" });
    assert.equal(JSON.parse(await ann.waitFor((f) => ofType("error")(f) && f.includes('"id":"n-2"'), 10_000)).code, "not_found");
  });

  it("keeps a read marker per name that only moves forward, and counts the unread messages from others after it", async () => {
    const room = `read-${Date.now()}`;
    const ann = await connect(room, "ann");
    const bo = await connect(room, "bo");
    const acks = [];
    for (let i = 1; i <= 3; i++) acks.push(await bo.sendReliably(`m${i}`, `r-${i}`));
    const reads = () => parse(ann.frames).filter((f) => f.type === "read");
    ann.send({ action: "read" });
    await ann.waitFor(() => reads().length === 1, 10_000);
    assert.deepEqual(reads()[0], { type: "read", room, name: "ann", cursor: null, epoch: acks[0].epoch, unread: 0, more: false }, "no marker yet");

    ann.send({ action: "read", cursor: acks[0].cursor, epoch: acks[0].epoch });
    await ann.waitFor(() => reads().length === 2, 10_000);
    assert.deepEqual([reads()[1].cursor, reads()[1].unread], [acks[0].cursor, 2], "two of bo's messages after it");
    ann.send({ action: "read", cursor: "0000000000000001", epoch: acks[0].epoch });
    await ann.waitFor(() => reads().length === 3, 10_000);
    assert.equal(reads()[2].cursor, acks[0].cursor, "never backwards");

    // Another connection of the same name shares the marker.
    const again = await connect(room, "ann");
    again.send({ action: "read" });
    const shared = JSON.parse(await again.waitFor(ofType("read"), 10_000));
    assert.deepEqual([shared.cursor, shared.unread], [acks[0].cursor, 2]);

    ann.send({ action: "read", cursor: "9999999999999999", epoch: acks[0].epoch });
    assert.equal(JSON.parse(await ann.waitFor(ofType("error"), 10_000)).code, "invalid_read", "beyond the newest event");
  });

  it("works from wscat: typing, members and read as the README shows them", async () => {
    const room = `wscat13-${Date.now()}`;
    const bo = await connect(room, "bo");
    const ann = new Wscat(`${stack.outputs.url}?room=${room}&name=ann`);
    open.push(ann);
    await ann.connectionId();
    ann.sendText('{"action":"typing"}');
    await bo.waitFor(ofType("typing"), 10_000);
    ann.sendText('{"action":"members"}');
    const members = JSON.parse(await ann.waitFor(ofType("members"), 10_000));
    assert.deepEqual(members.members.map((m: { name: string }) => m.name), ["ann", "bo"]);
    ann.sendText('{"action":"read"}');
    assert.equal(JSON.parse(await ann.waitFor(ofType("read"), 10_000)).name, "ann");
    // Every sequenced frame a wscat user sees carries a cursor.
    assert.ok(parse(ann.frames).filter(isSequenced).every((f) => typeof f.cursor === "string"));
  });

  it("works from wscat: a member sees a wscat user join, edit, delete and leave", async () => {
    const room = `wscat13b-${Date.now()}`;
    const bo = await connect(room, "bo");
    const ann = new Wscat(`${stack.outputs.url}?room=${room}&name=ann`);
    open.push(ann);
    await ann.connectionId();
    await bo.waitFor((f) => ofType("join")(f) && f.includes('"name":"ann"'), 30_000);
    ann.sendText('{"action":"sendmessage","message":"typo hree","id":"w-1"}');
    const ack = JSON.parse(await ann.waitFor((f) => ofType("ack")(f) && f.includes('"w-1"'), 10_000));
    ann.sendText(`{"action":"edit","cursor":"${ack.cursor}","message":"typo here","id":"w-2"}`);
    const edit = JSON.parse(await bo.waitFor(ofType("edit"), 10_000));
    assert.deepEqual([edit.target, edit.message, edit.from.name], [ack.cursor, "typo here", "ann"]);
    ann.sendText(`{"action":"delete","cursor":"${ack.cursor}","id":"w-3"}`);
    assert.equal(JSON.parse(await bo.waitFor(ofType("delete"), 10_000)).target, ack.cursor);
    await ann.close();
    await bo.waitFor((f) => ofType("leave")(f) && f.includes('"name":"ann"'), 30_000);
  });
});
