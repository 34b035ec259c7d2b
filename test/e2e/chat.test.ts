/**
 * End to end, from the stack outputs: wscat and ws clients against a local stack started on a free
 * port (or, with E2E_STACK=<name>, against that deployed stack).
 */
import assert from "node:assert/strict";
import { Client, Wscat } from "./clients";
import { E2EStack, e2eStack, eventually } from "./stack";

const message = (f: string) => f.includes('"type":"message"');
const QUIET_MS = 600; // how long "nothing arrives" is watched for

describe("e2e: the chat, from the stack outputs", function () {
  this.timeout(60_000);
  let stack: E2EStack;
  const open: { close(): Promise<unknown> }[] = [];
  const track = <T extends { close(): Promise<unknown> }>(c: T) => (open.push(c), c);
  const connect = async (query: Record<string, string> = {}) => track(await Client.open(stack.outputs.url, query));

  before(async () => {
    stack = await e2eStack();
  });
  afterEach(async () => {
    await Promise.all(open.splice(0).map((c) => c.close().catch(() => undefined)));
  });
  after(async () => {
    await stack?.stop();
  });

  it("outputs url, connectionsUrl, tableName, stage and region", () => {
    const { url, connectionsUrl, tableName, stage, region } = stack.outputs;
    assert.match(url, new RegExp(`^wss?://.+/${stage}$`));
    assert.match(connectionsUrl, new RegExp(`^https?://.+/${stage}/@connections$`));
    assert.ok(tableName && region);
  });

  it("the tutorial session: two wscat terminals; sendmessage reaches the other and not the sender; the table empties after", async () => {
    const room = `tutorial-${Date.now()}`;
    const one = track(new Wscat(`${stack.outputs.url}?room=${room}&name=one`));
    const two = track(new Wscat(`${stack.outputs.url}?room=${room}&name=two`));
    const [idOne, idTwo] = [await one.connectionId(), await two.connectionId()];

    // $default answers with usage and the caller's own connection info (GetConnection).
    const usage = one.json().find((f) => f.type === "usage")!;
    assert.equal((usage.connection as { connectionId: string }).connectionId, idOne);
    assert.ok((usage.connection as { connectedAt: string }).connectedAt);

    one.sendText('{"action": "sendmessage", "message": "hello, everyone!"}');
    const received = JSON.parse(await two.waitFor(message));
    assert.equal(received.message, "hello, everyone!");
    assert.deepEqual(received.from, { name: "one" });
    assert.equal(received.room, room);
    await new Promise((r) => setTimeout(r, QUIET_MS));
    assert.equal(one.frames.filter(message).length, 0, "the sender gets nothing back");

    const ids = async () => new Set((await stack.scanConnections()).map((i) => i.connectionId));
    assert.ok((await ids()).has(idOne) && (await ids()).has(idTwo));
    await one.close();
    await two.close();
    await eventually(async () => {
      const left = await ids();
      assert.ok(!left.has(idOne) && !left.has(idTwo), "both records are gone after both disconnect");
    });
  });

  it("the second seed's client.js protocol: echo comes back as 'Echo: <data>'", async () => {
    const cli = track(new Wscat(stack.outputs.url));
    await cli.connectionId();
    cli.sendText('{"action":"echo","data":"hi"}');
    assert.equal(await cli.waitFor((f) => f.startsWith("Echo:")), "Echo: hi");
    const ws = await connect();
    ws.send({ action: "echo", data: "안녕 👋" });
    assert.equal(await ws.waitFor((f) => f.startsWith("Echo:")), "Echo: 안녕 👋");
  });

  it("rooms are isolated: a message in one room is never seen in another", async () => {
    const tag = Date.now();
    const a1 = await connect({ room: `a-${tag}`, name: "a1" });
    const a2 = await connect({ room: `a-${tag}`, name: "a2" });
    const b1 = await connect({ room: `b-${tag}`, name: "b1" });
    await Promise.all([a1, a2, b1].map((c) => c.connectionId()));
    a1.send({ action: "sendmessage", message: "only for room a" });
    assert.equal(JSON.parse(await a2.waitFor(message)).message, "only for room a");
    b1.send({ action: "sendmessage", message: "only for room b" });
    await new Promise((r) => setTimeout(r, QUIET_MS));
    assert.deepEqual(b1.frames.filter(message), []);
    assert.deepEqual(a2.json().filter((f) => f.type === "message").map((f) => f.message), ["only for room a"]);
  });

  it("stale connections: a client killed without a close frame is removed by the next broadcast to its room, once it is past the $connect grace", async function () {
    const room = `stale-${Date.now()}`;
    const sender = await connect({ room, name: "sender" });
    const doomed = await Client.open(stack.outputs.url, { room, name: "doomed" });
    const doomedId = await doomed.connectionId();
    await sender.connectionId();
    // Presence fans the two joins out too, and a fan-out that reached the dead client after the
    // backdating below would remove it before the broadcast under test: let both joins land first.
    // (One room's joins are handled in order, so doomed seeing its own join means sender's went out.)
    await doomed.waitFor((f) => f.includes('"type":"join"') && f.includes('"name":"doomed"'), 30_000);
    doomed.kill();
    await doomed.closed;
    if (stack.local) {
      // --lose-abnormal-disconnects: $disconnect never ran, as when the network drops on AWS.
      await new Promise((r) => setTimeout(r, 300));
      assert.ok((await stack.scanConnections()).some((i) => i.connectionId === doomedId), "the record outlived the client");
    }
    // Connected seconds ago, it could still be in $connect (which also answers 410): the record stays.
    sender.send({ action: "sendmessage", message: "anyone there?", id: "stale-1" });
    await sender.waitFor((f) => f.includes('"id":"stale-1"'));
    await eventually(async () => {
      if (stack.local) assert.match(stack.logs(), new RegExp(`410, record kept.*${doomedId.replace(/[=]/g, "\\$&")}`));
    });
    assert.ok((await stack.scanConnections()).some((i) => i.connectionId === doomedId), "a record within the $connect grace is kept");
    // An hour later, the next 410 removes it.
    await stack.backdateConnections([doomedId], 3_600_000);
    sender.send({ action: "sendmessage", message: "anyone there now?" });
    await eventually(async () => {
      assert.ok(!(await stack.scanConnections()).some((i) => i.connectionId === doomedId), "the stale record was removed");
    });
    if (stack.local) assert.match(stack.logs(), /"stale":1/);
  });

  describe("bad input gets its documented answer, and other clients are unaffected", () => {
    let room: string;
    let bystander: Client;
    let sender: Client;
    beforeEach(async () => {
      room = `bad-${Date.now()}`;
      bystander = await connect({ room, name: "bystander" });
      sender = await connect({ room, name: "sender" });
      await Promise.all([bystander.connectionId(), sender.connectionId()]);
    });
    afterEach(async () => {
      // The bystander saw none of it, and still chats normally.
      // (Presence frames aside: members coming and going are announced to it.)
      assert.deepEqual(bystander.frames.filter((f) => !f.includes('"type":"usage"') && !/"type":"(join|leave)"/.test(f)), []);
      const check = await connect({ room, name: "checker" });
      await check.connectionId();
      check.send({ action: "sendmessage", message: "still here?" });
      assert.equal(JSON.parse(await bystander.waitFor(message)).message, "still here?");
    });

    it("non-JSON text gets a usage frame", async () => {
      sender.sendText("hello?");
      const usage = JSON.parse(await sender.waitFor((f) => f.includes('"reason":"not_json"')));
      assert.equal(usage.type, "usage");
    });

    it("a missing message gets an invalid_message error", async () => {
      sender.send({ action: "sendmessage" });
      assert.deepEqual(JSON.parse(await sender.waitFor((f) => f.includes('"type":"error"'))), {
        type: "error",
        code: "invalid_message",
        message: "message must be a string",
      });
    });

    it("a frame over maxMessageBytes (within API Gateway's 32 KB) gets a message_too_large error", async () => {
      sender.send({ action: "sendmessage", message: "x".repeat(32_500) });
      const error = JSON.parse(await sender.waitFor((f) => f.includes('"type":"error"')));
      assert.equal(error.code, "message_too_large");
    });

    it("a binary frame closes the connection with 1003", async () => {
      sender.socket.send(Buffer.from([1, 2, 3]), { binary: true });
      assert.equal((await sender.closed).code, 1003);
    });

    it("a 200 KB frame closes the connection with 1009", async () => {
      sender.sendText(JSON.stringify({ action: "sendmessage", message: "y".repeat(200_000) }));
      assert.equal((await sender.closed).code, 1009);
    });

    it("a bad room or name on connect is refused with 400", async () => {
      await assert.rejects(Client.open(stack.outputs.url, { room: "no/such room" }), { status: 400 });
      await assert.rejects(Client.open(stack.outputs.url, { name: "<b>bold</b>" }), { status: 400 });
      const wscat = new Wscat(`${stack.outputs.url}?room=${encodeURIComponent("../etc")}`);
      assert.notEqual(await wscat.exited, 0);
      assert.match(wscat.stderr, /Unexpected server response: 400/);
    });
  });
});
