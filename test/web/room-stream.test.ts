/**
 * The client's delivery rules (web/room-stream.js), as the chat page and the test and benchmark
 * clients run them. Timers are real but short, and every test waits on the hook it expects.
 */
import assert from "node:assert/strict";
import { RANGES } from "../../handlers/shared/env";
import { readProjectFile } from "../../local/program";
import { DEFAULT_MAX_MESSAGE_BYTES, frameBytes, HistoryRequest, OrderedSender, RoomStream, sendFrame, StreamFrame } from "../../web/room-stream";

const pad = (n: number) => String(n).padStart(16, "0");
const message = (n: number, epoch = "E1"): StreamFrame => ({ type: "message", cursor: pad(n), epoch, message: `m${n}` });
const end = (cursor: number | null, more = false, extra: Partial<StreamFrame> = {}): StreamFrame => ({ type: "history-end", cursor: cursor === null ? null : pad(cursor), more, epoch: "E1", ...extra });

/** A stream whose hooks are recorded; `nextAsk()` resolves with the next history request. */
function follower(options = {}) {
  const events: StreamFrame[] = [];
  const resets: string[] = [];
  const asks: HistoryRequest[] = [];
  let waiting: ((r: HistoryRequest) => void) | undefined;
  const stream = new RoomStream(
    {
      event: (f) => events.push(f),
      reset: (e) => resets.push(e),
      history(request) {
        asks.push(request);
        waiting?.(request);
        waiting = undefined;
      },
    },
    { gapWaitMs: 5, historyTimeoutMs: 60_000, ...options },
  );
  const nextAsk = () => new Promise<HistoryRequest>((resolve) => (waiting = resolve));
  return { stream, events, resets, asks, nextAsk, shown: () => events.map((f) => Number(f.cursor)) };
}

describe("the room stream (web/room-stream.js)", () => {
  it("asks for the latest page first, then follows live messages from where that page ended", () => {
    const f = follower();
    f.stream.start();
    assert.deepEqual(f.asks, [{ action: "history", limit: 100 }]);
    f.stream.frame(message(4));
    f.stream.frame(message(5));
    f.stream.frame(end(5));
    f.stream.frame(message(6));
    assert.deepEqual(f.shown(), [4, 5, 6]);
    assert.equal(f.stream.cursor, 6);
    f.stream.stop();
  });

  it("drops a repeated cursor, live or replayed", () => {
    const f = follower();
    f.stream.start();
    f.stream.frame(end(0));
    for (const n of [1, 1, 2, 1, 2]) f.stream.frame(message(n));
    assert.deepEqual(f.shown(), [1, 2]);
    f.stream.stop();
  });

  it("fills a gap in live delivery from history since the last settled cursor, asking only for the missing numbers", async () => {
    const f = follower();
    f.stream.start();
    f.stream.frame(end(0));
    f.stream.frame(message(1));
    const ask = f.nextAsk();
    f.stream.frame(message(3)); // 2's fan-out is slower
    assert.deepEqual(await ask, { action: "history", since: pad(1), limit: 1, epoch: "E1" }, "not 3 again, which arrived live");
    f.stream.frame(message(2));
    f.stream.frame(end(2, true)); // more: 3 follows, and is held already
    assert.deepEqual(f.shown(), [1, 3, 2]);
    assert.equal(f.stream.cursor, 3);
    assert.equal(f.asks.length, 2, "the gap is filled: nothing more to ask");
    f.stream.stop();
  });

  it("pages on at once through a catch-up whose page was full", async () => {
    const f = follower();
    f.stream.start();
    f.stream.frame(end(0));
    const next = f.nextAsk();
    f.stream.frame(end(100, true)); // a full page, nothing held: there is more to fetch
    assert.deepEqual(await next, { action: "history", since: pad(100), limit: 100, epoch: "E1" });
    f.stream.stop();
  });

  it("skips a tombstoned cursor: it settles the number and shows nothing for it", () => {
    const f = follower();
    f.stream.start();
    f.stream.frame(end(0));
    f.stream.frame({ type: "tombstone", cursor: pad(1), epoch: "E1" });
    f.stream.frame(message(2));
    assert.equal(f.stream.cursor, 2);
    assert.deepEqual(f.events.map((e) => e.type), ["tombstone", "message"]);
    f.stream.stop();
  });

  it("asks again after retryAfterMs while a number is still being written, waiting longer each time it does not move, and never stops asking", async () => {
    const f = follower({ maxRetryMs: 80 });
    f.stream.start();
    f.stream.frame(end(1));
    const times: number[] = [];
    for (let i = 0; i < 4; i++) {
      const ask = f.nextAsk();
      const at = Date.now();
      f.stream.frame(end(1, true, { retryAfterMs: 10 }));
      assert.deepEqual(await ask, { action: "history", since: pad(1), limit: 100, epoch: "E1" });
      times.push(Date.now() - at);
    }
    // 10, 20, 40, then capped at 80 ms: at least those long (timers never fire early).
    assert.ok(times[1] >= 20 && times[2] >= 40 && times[3] >= 80, `backed off: ${times.join(", ")} ms`);
    f.stream.frame(end(2));
    assert.equal(f.stream.cursor, 2);
    f.stream.stop();
  });

  it("must not let a reply to a request asked under an old epoch move the new stream's cursor: the request names its epoch", async () => {
    const f = follower();
    f.stream.start();
    f.stream.frame(message(3));
    f.stream.frame(end(3));
    const gapFill = f.nextAsk();
    f.stream.frame(message(5)); // a gap: 4 is asked for, under E1
    const asked = await gapFill;
    assert.equal(asked.epoch, "E1", "the server answers another stream's latest page instead of settling since 3 there");
    f.stream.frame(message(1, "E2")); // the stream started again meanwhile
    assert.deepEqual([f.resets, f.stream.cursor], [["E2"], null]);
    f.stream.frame({ ...message(1, "E2") }); // that reply's page (the new stream's latest), then its end
    f.stream.frame(end(1, false, { epoch: "E2" }));
    assert.equal(f.stream.cursor, 1);
    assert.deepEqual(f.events.filter((e) => e.epoch === "E2").map((e) => e.message), ["m1"], "shown once");
    f.stream.stop();
  });

  it("takes an id-less refusal with retryAfterMs as its history request's answer, and asks again after the hint", async () => {
    const f = follower();
    f.stream.start();
    const again = f.nextAsk();
    assert.equal(f.stream.frame({ type: "error", code: "rate_limited", retryAfterMs: 20 }), true);
    assert.deepEqual(await again, { action: "history", limit: 100 });
    assert.equal(f.stream.frame({ type: "error", code: "rate_limited", id: "a-send", retryAfterMs: 20 }), false, "a send's refusal is not the stream's");
    f.stream.frame(end(0));
    assert.equal(f.stream.frame({ type: "error", code: "unavailable", retryAfterMs: 20 }), false, "nothing was asked");
    f.stream.stop();
  });

  it("asks again when a history request goes unanswered", async () => {
    const f = follower({ historyTimeoutMs: 20 });
    f.stream.start();
    await f.nextAsk();
    assert.equal(f.asks.length, 2);
    f.stream.stop();
  });

  it("starts over on a new epoch: resets, asks for the latest page, and shows the new stream's cursor 1", async () => {
    const f = follower();
    f.stream.start();
    f.stream.frame(end(3));
    f.stream.frame(message(4));
    const ask = f.nextAsk();
    f.stream.frame(message(1, "E2")); // numbering started again
    assert.deepEqual(await ask, { action: "history", limit: 100 });
    assert.deepEqual(f.resets, ["E2"]);
    f.stream.frame(message(1, "E2"));
    f.stream.frame({ ...end(1), epoch: "E2" });
    f.stream.frame(message(5)); // a late frame of the old stream is ignored
    assert.deepEqual(f.shown(), [4, 1]);
    assert.equal(f.stream.cursor, 1);
    f.stream.stop();
  });

  it("must not lose a new stream's first event that comes in a reply: the reply's history-end settles only what was shown", () => {
    const f = follower();
    f.stream.start();
    f.stream.frame(end(3));
    // A reconnect asks since 3 under E1; the room's stream is now E2, so the server answers with its
    // latest page: a join at 1, a message at 2, then history-end at 2.
    f.stream.frame({ type: "join", cursor: pad(1), epoch: "E2" });
    f.stream.frame(message(2, "E2"));
    f.stream.frame({ ...end(2), epoch: "E2" });
    assert.deepEqual(f.resets, ["E2"]);
    assert.deepEqual(f.shown(), [1, 2], "both shown, the first included");
    assert.equal(f.stream.cursor, 2);
    f.stream.stop();
  });
});

describe("the ordered sender (web/room-stream.js)", () => {
  function sender(options = {}) {
    const sent: Record<string, unknown>[] = [];
    const acked: string[] = [];
    const failed: string[] = [];
    let onSend: (() => void) | undefined;
    const s = new OrderedSender(
      {
        send(frame) {
          sent.push(frame);
          onSend?.();
        },
        acked: (item) => acked.push(item.id),
        failed: (item, error) => {
          failed.push(item.id);
          errors.push(error);
          onFail?.();
        },
      },
      { resendBaseMs: 5, ...options },
    );
    const errors: StreamFrame[] = [];
    let onFail: (() => void) | undefined;
    const nextSend = () => new Promise<void>((resolve) => (onSend = resolve));
    const nextFail = () => new Promise<void>((resolve) => (onFail = resolve));
    return { s, sent, acked, failed, errors, nextSend, nextFail, ids: () => sent.map((f) => f.id) };
  }

  it("keeps one message in flight: the next goes only when the previous is acknowledged", () => {
    const t = sender();
    t.s.send("a", "one");
    t.s.send("b", "two");
    t.s.send("c", "three");
    assert.deepEqual(t.ids(), ["a"]);
    t.s.frame({ type: "ack", id: "a", cursor: pad(1) });
    assert.deepEqual(t.ids(), ["a", "b"]);
    t.s.frame({ type: "ack", id: "x", cursor: pad(9) }); // not the one in flight
    assert.deepEqual(t.ids(), ["a", "b"]);
    t.s.frame({ type: "ack", id: "b", cursor: pad(2) });
    t.s.frame({ type: "ack", id: "c", cursor: pad(3) });
    assert.deepEqual(t.acked, ["a", "b", "c"]);
    t.s.stop();
  });

  it("resends a message refused as unavailable with the same id after retryAfterMs, and keeps the rest queued", async () => {
    const t = sender();
    t.s.send("a", "one");
    t.s.send("b", "two");
    const resent = t.nextSend();
    const at = Date.now();
    t.s.frame({ type: "error", code: "unavailable", id: "a", retryAfterMs: 30 });
    await resent;
    assert.ok(Date.now() - at >= 30, "waited for the hint");
    assert.deepEqual(t.ids(), ["a", "a"]);
    t.s.stop();
  });

  it("resends a message refused as rate_limited with retryAfterMs when the window has passed; without a hint, it is final", async () => {
    const t = sender();
    t.s.send("a", "one");
    t.s.send("b", "two");
    const resent = t.nextSend();
    t.s.frame({ type: "error", code: "rate_limited", id: "a", retryAfterMs: 20 });
    await resent;
    assert.deepEqual([t.failed, t.ids()], [[], ["a", "a"]]);
    t.s.frame({ type: "error", code: "rate_limited", id: "a" });
    assert.deepEqual([t.failed, t.ids()], [["a"], ["a", "a", "b"]]);
    t.s.stop();
  });

  it("resends after API Gateway's 'Internal server error' (the run failed), and moves on after a final refusal", async () => {
    const t = sender();
    t.s.send("a", "one");
    t.s.send("b", "two");
    const resent = t.nextSend();
    t.s.frame({ type: undefined as unknown as string, message: "Internal server error" });
    await resent;
    t.s.frame({ type: "error", code: "message_too_large", id: "a" });
    assert.deepEqual([t.failed, t.ids()], [["a"], ["a", "a", "b"]]);
    t.s.stop();
  });

  it("resends a message whose ack never came, and again after a reconnect", async () => {
    const t = sender({ ackTimeoutMs: 20 });
    t.s.send("a", "one");
    const resent = t.nextSend();
    await resent;
    t.s.resume();
    assert.deepEqual(t.ids(), ["a", "a", "a"]);
    t.s.stop();
  });

  describe("the size rule", () => {
    /** A message whose sendmessage frame (id "a") is exactly `bytes` long. */
    const sized = (bytes: number, id = "a") => "x".repeat(bytes - frameBytes(sendFrame(id, "")));

    it("defaults to the stacks' maxMessageBytes, within the handlers' range", () => {
      const declared = readProjectFile().config?.maxMessageBytes as { default?: unknown } | undefined;
      assert.equal(DEFAULT_MAX_MESSAGE_BYTES, declared?.default);
      assert.ok(DEFAULT_MAX_MESSAGE_BYTES <= RANGES.maxMessageBytes.max);
    });

    it("counts the frame as sent: UTF-8 bytes of the JSON, envelope and escapes included", () => {
      assert.equal(frameBytes(sendFrame("a", "가")), Buffer.byteLength('{"action":"sendmessage","message":"가","id":"a"}'));
      assert.equal(frameBytes(sendFrame("a", '"\n\u0001\\')) - frameBytes(sendFrame("a", "")), 12, "quote 2, newline 2, U+0001 6, backslash 2");
      assert.deepEqual(sendFrame("e", "t", { action: "edit", cursor: pad(3) }), { action: "edit", message: "t", id: "e", cursor: pad(3) });
    });

    it("sends a frame of exactly maxMessageBytes, and fails one a byte over as message_too_large without sending it; the next goes on", async () => {
      const t = sender({ maxMessageBytes: 1000 });
      t.s.send("a", sized(1000));
      assert.deepEqual(t.ids(), ["a"]);
      t.s.frame({ type: "ack", id: "a", cursor: pad(1) });
      const failed = t.nextFail();
      t.s.send("b", sized(1001, "b"));
      t.s.send("c", "small");
      await failed;
      assert.deepEqual([t.failed, t.ids()], [["b"], ["a", "c"]]);
      assert.equal(t.errors[0].code, "message_too_large");
      assert.match(String(t.errors[0].message), /the frame is 1001 bytes .*the limit is 1000/);
      t.s.stop();
    });

    it("must not send a frame over the limit once escaped, though its text is under it", async () => {
      const t = sender({ maxMessageBytes: 1000 });
      const failed = t.nextFail();
      t.s.send("a", "\u0001".repeat(200)); // 200 bytes of text, 1,200 of frame
      await failed;
      assert.deepEqual([t.failed, t.ids()], [["a"], []]);
      t.s.stop();
    });

    it("must never resend a message whose frame closed the connection with 1009, and fails later frames of its size before sending", async () => {
      const t = sender();
      t.s.send("big", sized(20_000, "big"));
      t.s.send("after", "small");
      assert.deepEqual(t.ids(), ["big"]);
      const failed = t.nextFail();
      assert.equal(t.s.closed(1009)?.id, "big");
      await failed;
      assert.equal(t.errors[0].code, "message_too_large");
      assert.match(String(t.errors[0].message), /1009/);
      t.s.resume(); // the reconnect
      assert.deepEqual([t.ids().filter((id) => id === "big").length, t.ids().at(-1)], [1, "after"], "the big one never again; the next one goes");
      t.s.frame({ type: "ack", id: "after", cursor: pad(1) });
      const again = t.nextFail();
      t.s.send("same-size", sized(20_000, "same-size"));
      await again;
      assert.deepEqual([t.failed, t.ids().includes("same-size")], [["big", "same-size"], false], "refused before sending");
      t.s.stop();
    });

    it("fails on a 1009 only the frame sent on the connection that closed: not one sent before a reconnect and not yet resent", () => {
      const t = sender({ maxMessageBytes: 30_000 });
      t.s.send("big", sized(20_000, "big"));
      assert.equal(t.s.closed(1006), null, "the first connection drops");
      // The next connection closes 1009 before resume() sent anything on it.
      assert.equal(t.s.closed(1009), null);
      assert.deepEqual([t.failed, t.s.options.maxMessageBytes], [[], 30_000], "nothing failed, the limit unchanged");
      t.s.resume();
      assert.deepEqual(t.ids(), ["big", "big"], "sent again on the next connection");
      assert.equal(t.s.closed(1009)?.id, "big", "a 1009 after that resend is its own");
      t.s.stop();
    });

    it("fails nothing on a 1009 when the frame's resend found the socket closed (send answered false)", async () => {
      let open = true;
      let resent: (() => void) | undefined;
      const failed: string[] = [];
      const hooks = { send: () => (resent?.(), open), failed: (item: { id: string }) => failed.push(item.id) };
      const s = new OrderedSender(hooks, { maxMessageBytes: 30_000, ackTimeoutMs: 1, resendBaseMs: 1 });
      s.send("big", sized(20_000, "big"));
      open = false;
      s.closed(1006);
      await new Promise<void>((resolve) => (resent = resolve)); // the ack timeout's resend, while disconnected
      assert.equal(s.closed(1009), null);
      assert.deepEqual([failed, s.options.maxMessageBytes], [[], 30_000]);
      s.stop();
    });

    it("resends after any other close (1001, 1006), and does nothing on a 1009 with nothing on the wire", () => {
      const t = sender();
      assert.equal(t.s.closed(1009), null);
      t.s.send("a", "one");
      assert.equal(t.s.closed(1006), null);
      t.s.resume();
      assert.deepEqual([t.failed, t.ids()], [[], ["a", "a"]]);
      t.s.stop();
    });
  });
});
