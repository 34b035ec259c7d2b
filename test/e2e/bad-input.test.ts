/**
 * The bad-input corpus: each case with its exact documented answer (a frame, a close code or a
 * handshake status), sent through the local stack. No case may crash a function or produce
 * "Internal server error", and the room's other members are never disturbed.
 */
import assert from "node:assert/strict";
import { Client, PageLikeClient } from "./clients";
import { E2EStack, localStack } from "./stack";

type Expect =
  | { usage: "not_json" | "not_object" | "missing_action" | "unknown_action" }
  | { error: string }
  | { echo: string }
  | { delivered: string }
  | { close: number };

interface FrameCase {
  name: string;
  send: string | Buffer;
  /** Send as a text frame even when `send` is a Buffer (to send invalid UTF-8). */
  text?: boolean;
  expect: Expect;
}

const deepArray = (n: number) => "[".repeat(n) + "]".repeat(n);
const isPresence = (f: string) => /^\{"type":"(join|leave)"/.test(f);
const deepObject = (n: number) => '{"a":'.repeat(n) + "1" + "}".repeat(n);
const send = (body: Record<string, unknown>) => JSON.stringify({ action: "sendmessage", ...body });

const FRAMES: FrameCase[] = [
  // Not JSON: usage, as the tutorial's DefaultHandler answered (but without crashing).
  { name: "plain text", send: "hello", expect: { usage: "not_json" } },
  { name: "an unclosed brace", send: "{", expect: { usage: "not_json" } },
  { name: "truncated JSON", send: '{"action":"sendmessage"', expect: { usage: "not_json" } },
  { name: "an empty frame", send: "", expect: { usage: "not_json" } },
  { name: "whitespace only", send: "   \n ", expect: { usage: "not_json" } },
  { name: "single-quoted pseudo-JSON", send: "{'action':'sendmessage'}", expect: { usage: "not_json" } },
  { name: "NaN", send: "NaN", expect: { usage: "not_json" } },
  { name: "a JSON comment", send: '{"action":"sendmessage"} // hi', expect: { usage: "not_json" } },
  // JSON, but not an object.
  { name: "null", send: "null", expect: { usage: "not_object" } },
  { name: "a number", send: "42", expect: { usage: "not_object" } },
  { name: "a string", send: '"sendmessage"', expect: { usage: "not_object" } },
  { name: "an empty array", send: "[]", expect: { usage: "not_object" } },
  { name: "true", send: "true", expect: { usage: "not_object" } },
  // Nested as deep as API Gateway's 32 KB frame allows (a larger frame closes with 1009, below).
  { name: "an array nested 16,000 deep", send: deepArray(16_000), expect: { usage: "not_object" } },
  // Objects with no usable action.
  { name: "an empty object", send: "{}", expect: { usage: "missing_action" } },
  { name: "an object nested 5,000 deep", send: deepObject(5_000), expect: { usage: "missing_action" } },
  { name: "action only inside __proto__", send: '{"__proto__":{"action":"sendmessage"},"message":"x"}', expect: { usage: "missing_action" } },
  { name: "action in upper case", send: '{"action":"SENDMESSAGE","message":"x"}', expect: { usage: "unknown_action" } },
  { name: "action with a leading space", send: '{"action":" sendmessage","message":"x"}', expect: { usage: "unknown_action" } },
  { name: "action constructor", send: '{"action":"constructor"}', expect: { usage: "unknown_action" } },
  { name: "action __proto__", send: '{"action":"__proto__"}', expect: { usage: "unknown_action" } },
  { name: "action toString", send: '{"action":"toString"}', expect: { usage: "unknown_action" } },
  { name: "action $default", send: '{"action":"$default"}', expect: { usage: "unknown_action" } },
  { name: "action $connect", send: '{"action":"$connect"}', expect: { usage: "unknown_action" } },
  { name: "action null", send: '{"action":null}', expect: { usage: "unknown_action" } },
  { name: "action as an array", send: '{"action":["sendmessage"]}', expect: { usage: "unknown_action" } },
  // sendmessage with a bad message or id.
  { name: "no message", send: send({}), expect: { error: "invalid_message" } },
  { name: "a null message", send: send({ message: null }), expect: { error: "invalid_message" } },
  { name: "a numeric message", send: send({ message: 7 }), expect: { error: "invalid_message" } },
  { name: "an array message", send: send({ message: ["hi"] }), expect: { error: "invalid_message" } },
  { name: "an object message", send: send({ message: { text: "hi" } }), expect: { error: "invalid_message" } },
  { name: "a boolean message", send: send({ message: true }), expect: { error: "invalid_message" } },
  { name: "an empty message", send: send({ message: "" }), expect: { error: "invalid_message" } },
  { name: "a blank message", send: send({ message: " \t\n" }), expect: { error: "invalid_message" } },
  { name: "a lone surrogate", send: '{"action":"sendmessage","message":"a\\ud800b"}', expect: { error: "invalid_message" } },
  { name: "a message nested 5,000 deep", send: `{"action":"sendmessage","message":${deepObject(5_000)}}`, expect: { error: "invalid_message" } },
  // The limit (maxMessageBytes, 32,000 here) counts the frame: the message in its envelope, escapes included.
  { name: "a frame one byte over the limit", send: send({ message: "x".repeat(32_001 - 37) }), expect: { error: "message_too_large" } },
  { name: "a frame over the limit in UTF-8 only (10,656 characters)", send: send({ message: "가".repeat(10_656) }), expect: { error: "message_too_large" } },
  { name: "5,400 × U+0001 (5,400 bytes of text, 32,437 of frame)", send: send({ message: "\u0001".repeat(5_400) }), expect: { error: "message_too_large" } },
  { name: "a numeric id", send: send({ message: "hi", id: 5 }), expect: { error: "invalid_id" } },
  { name: "an id with a space", send: send({ message: "hi", id: "a b" }), expect: { error: "invalid_id" } },
  { name: "a 65-character id", send: send({ message: "hi", id: "i".repeat(65) }), expect: { error: "invalid_id" } },
  // history with bad arguments.
  { name: "history since a word", send: '{"action":"history","since":"yesterday"}', expect: { error: "invalid_history" } },
  { name: "history since a number", send: '{"action":"history","since":5}', expect: { error: "invalid_history" } },
  { name: "history with limit 0", send: '{"action":"history","limit":0}', expect: { error: "invalid_history" } },
  { name: "history with a negative limit", send: '{"action":"history","limit":-1}', expect: { error: "invalid_history" } },
  { name: "history with a string limit", send: '{"action":"history","limit":"10"}', expect: { error: "invalid_history" } },
  { name: "history with a fractional limit", send: '{"action":"history","limit":1.5}', expect: { error: "invalid_history" } },
  { name: "history with a numeric epoch", send: '{"action":"history","since":"0000000000000001","epoch":7}', expect: { error: "invalid_history" } },
  // edit and delete (issue 13): the cursor first, then the text.
  { name: "edit without a cursor", send: '{"action":"edit","message":"x"}', expect: { error: "invalid_target" } },
  { name: "edit with a numeric cursor", send: '{"action":"edit","cursor":1,"message":"x"}', expect: { error: "invalid_target" } },
  { name: "edit with a 15-digit cursor", send: '{"action":"edit","cursor":"000000000000001","message":"x"}', expect: { error: "invalid_target" } },
  { name: "edit without a message", send: '{"action":"edit","cursor":"0000000000000001"}', expect: { error: "invalid_message" } },
  { name: "edit with a blank message", send: '{"action":"edit","cursor":"0000000000000001","message":"  "}', expect: { error: "invalid_message" } },
  { name: "edit in a frame over the limit", send: JSON.stringify({ action: "edit", cursor: "0000000000000001", message: "x".repeat(31_960) }), expect: { error: "message_too_large" } },
  { name: "edit of a cursor that holds nothing", send: '{"action":"edit","cursor":"0000000099999999","message":"x"}', expect: { error: "not_found" } },
  { name: "delete without a cursor", send: '{"action":"delete"}', expect: { error: "invalid_target" } },
  { name: "delete with a cursor in an object", send: '{"action":"delete","cursor":{"n":1}}', expect: { error: "invalid_target" } },
  { name: "delete of a cursor that holds nothing", send: '{"action":"delete","cursor":"0000000099999999"}', expect: { error: "not_found" } },
  // members and read.
  { name: "members after a number", send: '{"action":"members","after":5}', expect: { error: "invalid_members" } },
  { name: "members after a name with a space", send: '{"action":"members","after":"a b"}', expect: { error: "invalid_members" } },
  { name: "read with a cursor and no epoch", send: '{"action":"read","cursor":"0000000000000001"}', expect: { error: "invalid_read" } },
  { name: "read with an epoch and no cursor", send: '{"action":"read","epoch":"AAAAAAAA"}', expect: { error: "invalid_read" } },
  { name: "read with a word for a cursor", send: '{"action":"read","cursor":"latest","epoch":"AAAAAAAA"}', expect: { error: "invalid_read" } },
  { name: "read with another stream's epoch", send: '{"action":"read","cursor":"0000000000000001","epoch":"AAAAAAAA"}', expect: { error: "invalid_read" } },
  // echo.
  { name: "echo without data", send: '{"action":"echo"}', expect: { error: "invalid_data" } },
  { name: "echo with numeric data", send: '{"action":"echo","data":5}', expect: { error: "invalid_data" } },
  { name: "echo with markup", send: '{"action":"echo","data":"<script>alert(1)</script>"}', expect: { echo: "Echo: <script>alert(1)</script>" } },
  // Odd but valid: delivered exactly, nothing else.
  { name: "a __proto__ key beside a valid message", send: '{"action":"sendmessage","message":"proto ok","__proto__":{"polluted":true}}', expect: { delivered: "proto ok" } },
  { name: "a frame of exactly the limit", send: send({ message: "y".repeat(32_000 - 37) }), expect: { delivered: "y".repeat(32_000 - 37) } },
  { name: "emoji, CJK and right-to-left text", send: send({ message: "👋 안녕 مرحبا" }), expect: { delivered: "👋 안녕 مرحبا" } },
  { name: "markup in a message (delivered as text)", send: send({ message: "<img src=x onerror=alert(1)>" }), expect: { delivered: "<img src=x onerror=alert(1)>" } },
  // Frames the gateway refuses.
  { name: "a binary frame", send: Buffer.from([0, 1, 2]), expect: { close: 1003 } },
  { name: "a 200 KB frame", send: "z".repeat(200_000), expect: { close: 1009 } },
  // Over API Gateway's 32 KB frame quota: closed before any function runs (issue 21).
  { name: "a 33,000-byte sendmessage frame", send: send({ message: "x".repeat(33_000 - 37) }), expect: { close: 1009 } },
  { name: "a 40 KB edit frame", send: JSON.stringify({ action: "edit", cursor: "0000000000000001", message: "x".repeat(40_000) }), expect: { close: 1009 } },
  // API Gateway's answer to invalid UTF-8 is unconfirmed; the emulator closes 1007 as RFC 6455 says.
  { name: "invalid UTF-8 in a text frame", send: Buffer.from([0x7b, 0xff, 0xfe, 0x7d]), text: true, expect: { close: 1007 } },
];

const CONNECTS: { name: string; query: string; status: number }[] = [
  { name: "an empty room", query: "room=", status: 400 },
  { name: "a room with &", query: "room=a%26b", status: 400 },
  { name: "a room with a path", query: "room=..%2F..%2Fetc", status: 400 },
  { name: "a room with a NUL", query: "room=a%00b", status: 400 },
  { name: "a 65-character room", query: `room=${"r".repeat(65)}`, status: 400 },
  { name: "a name with markup", query: "name=%3Cscript%3E", status: 400 },
  { name: "an emoji name", query: "name=%F0%9F%98%80", status: 400 },
  { name: "a name with a newline", query: "name=bob%0Aadmin", status: 400 },
  { name: "the room twice", query: "room=a&room=b", status: 400 },
  { name: "the name twice", query: "name=alice&name=admin", status: 400 },
  { name: "a 10,000-character name", query: `name=${"n".repeat(10_000)}`, status: 400 },
  // Node's HTTP parser limit (16 KB of headers, request line included); AWS's own limit is unconfirmed.
  { name: "a 20 KB URL", query: `x=${"u".repeat(20_000)}`, status: 431 },
];

describe("hardening: the bad-input corpus", function () {
  this.timeout(120_000);
  let stack: E2EStack;
  let bystander: Client;
  let watcher: Client;
  const ROOM = `corpus-${Date.now()}`;
  const everything: string[] = [];

  before(async () => {
    stack = await localStack();
    bystander = await Client.open(stack.outputs.url, { room: ROOM, name: "bystander" });
    watcher = await Client.open(stack.outputs.url, { room: `${ROOM}-watch`, name: "watcher" });
    await Promise.all([bystander.connectionId(), watcher.connectionId()]);
  });
  after(async () => {
    await Promise.all([bystander?.close(), watcher?.close()]);
    await stack?.stop();
  });

  it(`has at least 40 cases (${FRAMES.length + CONNECTS.length})`, () => {
    assert.ok(FRAMES.length + CONNECTS.length >= 40);
  });

  for (const c of FRAMES) {
    it(`${c.name}: ${JSON.stringify(c.expect).slice(0, 60)}`, async () => {
      const room = "delivered" in c.expect ? `${ROOM}-watch` : ROOM;
      const client = await Client.open(stack.outputs.url, { room, name: "prober" });
      try {
        await client.connectionId();
        const before = client.frames.length;
        const watched = watcher.frames.length;
        if (typeof c.send === "string") client.sendText(c.send);
        else client.socket.send(c.send, { binary: !c.text });
        // The first answer after the probe; presence frames (members coming and going) are not answers.
        const answerAfter = (c: Client, from: number) => c.frames.slice(from).find((f) => !isPresence(f));
        const firstAfter = (c: Client, from: number) => c.waitFor(() => answerAfter(c, from) !== undefined, 10_000).then(() => answerAfter(c, from)!);
        const reply = () => firstAfter(client, before);
        const e = c.expect;
        if ("close" in e) {
          assert.equal((await client.closed).code, e.close);
        } else if ("echo" in e) {
          assert.equal(await reply(), e.echo);
        } else if ("usage" in e) {
          const frame = JSON.parse(await reply());
          assert.deepEqual([frame.type, frame.reason], ["usage", e.usage]);
        } else if ("error" in e) {
          const frame = JSON.parse(await reply());
          assert.deepEqual(Object.keys(frame).sort(), ["code", "message", "type"]);
          assert.deepEqual([frame.type, frame.code], ["error", e.error]);
        } else {
          const frame = JSON.parse(await firstAfter(watcher, watched));
          assert.deepEqual(Object.keys(frame).sort(), ["cursor", "epoch", "from", "id", "message", "room", "ts", "type"]);
          assert.equal(frame.message, e.delivered);
          assert.deepEqual(frame.from, { name: "prober" });
        }
      } finally {
        everything.push(...client.frames);
        await client.close().catch(() => undefined);
      }
    });
  }

  for (const c of CONNECTS) {
    it(`connect with ${c.name}: HTTP ${c.status}`, async () => {
      await assert.rejects(Client.openRaw(`${stack.outputs.url}?${c.query}`), { status: c.status });
    });
  }

  it("a page-like client never resends a message whose frame closed the connection with 1009, and goes on after reconnecting", async () => {
    const query = { room: `${ROOM}-1009`, name: "pager" };
    // A client that believes in a limit above API Gateway's frame quota: its 33,000-byte frame closes the connection.
    const page = await PageLikeClient.open(stack.outputs.url, query, { maxMessageBytes: 40_000 });
    try {
      page.sender.send("big-1", "x".repeat(33_000));
      page.sender.send("small-1", "after the big one");
      assert.equal((await page.client.closed).code, 1009);
      await page.until(() => page.failures.length === 1, 10_000, "the big one failed");
      assert.deepEqual([page.failures[0].code, page.failures[0].id], ["message_too_large", "big-1"]);
      await page.reopen(stack.outputs.url, query);
      await page.until(() => page.acks.some((a) => a.id === "small-1"), 30_000, "the next one acknowledged");
      const { messages } = await page.client.history();
      assert.deepEqual(messages.map((m) => m.message), ["after the big one"]);
      assert.equal(page.client.closeCode, undefined, "the new connection stays open");
    } finally {
      await page.close();
    }
  });

  it("must never have produced 'Internal server error', a failed invocation, or a frame for the bystander", () => {
    assert.deepEqual(everything.filter((f) => f.includes("Internal server error")), []);
    assert.doesNotMatch(stack.logs(), /\[gateway\] \S+ \S+ \S+ \d+ms error /);
    assert.doesNotMatch(stack.logs(), /Invoke Error|Uncaught Exception/);
    // Members coming and going (presence) are all it may see.
    assert.deepEqual(bystander.frames.filter((f) => !f.includes('"type":"usage"') && !isPresence(f)), []);
  });
});
