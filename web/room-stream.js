// The client's side of the delivery rules (README, "How delivery works"), in one place for the
// chat page and for the Node clients of the tests and benchmarks:
// - RoomStream follows a room's sequence: it drops repeats, notices gaps in live delivery and
//   fills them from `history`, skips tombstones, asks again (with backoff) while a number is still
//   being written, and starts over when the room's epoch changes.
// - OrderedSender keeps one unacknowledged message in flight per connection and queues the rest,
//   so a sender's messages are stored in the order it sent them; it resends a message refused as
//   `unavailable` with the same id after the server's `retryAfterMs`. It never puts a frame over
//   the size limit on the wire, and never resends one that closed the connection with 1009.
// - frameBytes is the size rule every client measures by: the frame as sent, in UTF-8 bytes
//   (README, "Protocol"; the server counts the same, handlers/shared/protocol.ts).
// No dependencies and no build step: a plain script in the browser (window.RoomStream), a
// CommonJS module in Node.
(function (root, factory) {
  if (typeof module === "object" && module.exports) module.exports = factory();
  else root.RoomStream = factory();
})(typeof self !== "undefined" ? self : this, function () {
  "use strict";

  const CURSOR_DIGITS = 16;
  const pad = (n) => String(n).padStart(CURSOR_DIGITS, "0");
  const DEFAULTS = {
    /**
     * A later message came first: wait this long for the one in flight before asking history. Two
     * fan-outs racing reorder messages by up to a few hundred ms under load; asking sooner only
     * adds history requests to an overloaded room.
     */
    gapWaitMs: 1000,
    /** A history request with no history-end after this long is asked again. */
    historyTimeoutMs: 10000,
    /** Longest pause between asks while a number is still being written. */
    maxRetryMs: 5000,
    historyLimit: 100,
  };

  class RoomStream {
    /**
     * hooks.event(frame): a sequenced event (message, join, leave, edit, delete or tombstone) seen
     *   for the first time, live or replayed (live ones may come before a gap below them is filled);
     * hooks.reset(epoch): numbering started again, everything shown is void;
     * hooks.history(request): send this `history` request.
     */
    constructor(hooks, options) {
      this.hooks = hooks;
      this.options = Object.assign({}, DEFAULTS, options);
      this.epoch = null;
      this.retired = new Set();
      /** Every cursor up to this one is settled (seen, tombstoned or expired); null before the first history-end. */
      this.cursor = null;
      /** Cursors seen above `cursor`. */
      this.ahead = new Set();
      this.timer = null;
      /** Whether `timer` is the watchdog of a request in flight (else a pause before the next ask). */
      this.asking = false;
      this.pendingTries = 0;
      /** The last number of the gap the outstanding request asks for (null: a catch-up). */
      this.gapEnd = null;
    }

    /** (Re)starts after a connect: asks what was missed, or the latest page. */
    start() {
      this.ask();
    }

    /** Feeds a frame; returns true for a sequenced event (message, join, leave, edit, delete, tombstone) or ack not seen before. */
    frame(frame) {
      switch (frame && frame.type) {
        case "message":
        case "join":
        case "leave":
        case "edit":
        case "delete":
        case "tombstone":
        case "ack":
          return this.take(frame);
        case "history-end":
          this.end(frame);
          return false;
        case "error":
          return this.refused(frame);
        default:
          return false;
      }
    }

    /**
     * An error frame without an id, while a history request is out, is that request's refusal
     * (rate_limited or unavailable, with retryAfterMs): it is asked again after the hint instead of
     * after the watchdog. Returns true when it was taken as such.
     */
    refused(frame) {
      if (frame.id !== undefined || !this.asking || typeof frame.retryAfterMs !== "number") return false;
      // A spent budget names when the next window starts: ask then, not sooner (no cap).
      const wait = Math.max(0, frame.retryAfterMs);
      this.schedule(frame.code === "rate_limited" ? wait : Math.min(this.options.maxRetryMs, wait));
      return true;
    }

    /**
     * The request that fetches what is missing: the latest page before the first history-end; the
     * numbers between the settled cursor and the first one already held, when live delivery left a
     * gap (not again what arrived live); otherwise everything after the settled cursor.
     */
    request() {
      return this.missing().request;
    }

    /** What `request()` asks for, and the last number of the gap it fills (null: a catch-up). */
    missing() {
      if (this.cursor === null) return { request: { action: "history", limit: this.options.historyLimit }, gapEnd: null };
      const held = this.ahead.size ? Math.min(...this.ahead) : Infinity;
      const gap = held - this.cursor - 1;
      const limit = Math.max(1, Math.min(this.options.historyLimit, gap));
      // With the epoch the cursor belongs to: if the room's stream changed meanwhile, the server
      // answers with the new stream's latest page instead of settling a cursor that means nothing there.
      const request = { action: "history", since: pad(this.cursor), limit };
      if (this.epoch !== null) request.epoch = this.epoch;
      return { request, gapEnd: gap <= this.options.historyLimit ? held - 1 : null };
    }

    take(frame) {
      // An event that starts a new stream is taken as its first: dropped, the history-end of the
      // reply it came in would settle its cursor unseen (a reconnect lost a new stream's first event).
      if (!this.sameEpoch(frame.epoch)) return false;
      const n = Number(frame.cursor);
      if ((this.cursor !== null && n <= this.cursor) || this.ahead.has(n)) return false;
      this.ahead.add(n);
      if (frame.type !== "ack") this.hooks.event(frame);
      this.advance();
      return true;
    }

    end(frame) {
      if (this.sameEpoch(frame.epoch) !== true) return;
      this.clearTimer();
      const settled = frame.cursor === null ? 0 : Number(frame.cursor);
      const moved = this.cursor === null || settled > this.cursor;
      if (moved) this.cursor = settled;
      for (const n of this.ahead) if (n <= this.cursor) this.ahead.delete(n);
      this.consumeHeld();
      if (frame.more && frame.retryAfterMs !== undefined) {
        // Stopped at a number still being written: ask again after the hint, longer each time it does not move.
        this.pendingTries = moved ? 0 : this.pendingTries + 1;
        return this.schedule(Math.min(this.options.maxRetryMs, frame.retryAfterMs * 2 ** this.pendingTries));
      }
      this.pendingTries = 0;
      // A full page of a catch-up: the next one at once. A gap's page is full by design (what
      // follows it was held already): once the gap is filled, advance() asks again only for another.
      const gapFilled = this.gapEnd !== null && settled >= this.gapEnd;
      if (frame.more && !gapFilled) return this.ask();
      this.advance();
    }

    advance() {
      if (this.cursor === null) return; // the first history-end sets where we stand
      this.consumeHeld();
      if (this.ahead.size > 0 && this.timer === null) this.schedule(this.options.gapWaitMs);
      else if (this.ahead.size === 0 && !this.asking) this.clearTimer();
    }

    /** Moves the settled cursor over the held cursors that follow it without a gap. */
    consumeHeld() {
      while (this.ahead.delete(this.cursor + 1)) this.cursor++;
    }

    /**
     * True for a frame of the current stream, false for one of an old stream, "new" for the first of
     * a new stream (then everything restarts, and a history request for it is out).
     */
    sameEpoch(epoch) {
      if (!epoch) return true;
      if (this.epoch === null) this.epoch = epoch;
      if (epoch === this.epoch) return true;
      if (this.retired.has(epoch)) return false;
      this.retired.add(this.epoch);
      this.epoch = epoch;
      this.cursor = null;
      this.ahead.clear();
      this.pendingTries = 0;
      this.hooks.reset(epoch);
      this.ask();
      return "new";
    }

    ask() {
      // Watchdog: a lost request or reply (a dropped connection, a failed run) is asked again.
      this.schedule(this.options.historyTimeoutMs);
      this.asking = true;
      const { request, gapEnd } = this.missing();
      this.gapEnd = gapEnd;
      this.hooks.history(request);
    }

    schedule(ms) {
      this.clearTimer();
      this.timer = setTimeout(() => {
        this.timer = null;
        this.ask();
      }, ms);
    }

    clearTimer() {
      this.asking = false;
      if (this.timer !== null) clearTimeout(this.timer);
      this.timer = null;
    }

    /** Stops every timer (the connection is closing for good). */
    stop() {
      this.clearTimer();
    }
  }

  /**
   * The stacks' default maxMessageBytes (Pulumi.yaml; a test keeps them in step): the largest
   * sendmessage or edit frame, within API Gateway's 32 KB frame quota however KB is read.
   */
  const DEFAULT_MAX_MESSAGE_BYTES = 32000;
  const encoder = new TextEncoder();

  /** The size of a frame as it goes on the wire: the UTF-8 bytes of its JSON, envelope and escapes included. */
  function frameBytes(frame) {
    return encoder.encode(JSON.stringify(frame)).length;
  }

  /** The frame OrderedSender sends for a message, an edit (extra: action, cursor) or a delete. */
  function sendFrame(id, message, extra) {
    return Object.assign({ action: "sendmessage", message, id }, extra);
  }

  /** Refusals that are final for that message: it is failed and never resent. */
  const FINAL = ["message_too_large", "rate_limited", "invalid_message", "invalid_id", "invalid_target", "not_found", "not_author", "edit_window_passed", "message_deleted", "too_many_edits"];

  class OrderedSender {
    /**
     * hooks.send(frame): put a sendmessage frame on the socket; false when it is not open (not sent);
     * hooks.acked(item, ack), hooks.failed(item, errorFrame), hooks.retrying(item, delayMs): optional.
     */
    constructor(hooks, options) {
      this.hooks = hooks;
      // ackTimeoutMs: no answer at all this long after a send (a lost ack) sends it again; longer
      // than API Gateway's 29 s integration timeout, after which it answers "Internal server error".
      // maxMessageBytes: a frame over it (frameBytes) is failed as message_too_large, never sent.
      this.options = Object.assign({ resendBaseMs: 1000, resendMaxMs: 30000, ackTimeoutMs: 35000, maxMessageBytes: DEFAULT_MAX_MESSAGE_BYTES }, options);
      this.queue = [];
      this.inFlight = null;
      this.timer = null;
    }

    /** Queues a message; it is sent when every earlier one is acknowledged or failed. */
    send(id, message, extra) {
      const item = { id, message, extra: extra || {}, resends: 0 };
      this.queue.push(item);
      this.next();
      return item;
    }

    next() {
      if (this.inFlight || this.queue.length === 0) return;
      this.inFlight = this.queue.shift();
      this.transmit();
    }

    transmit() {
      const item = this.inFlight;
      if (!item) return;
      const frame = sendFrame(item.id, item.message, item.extra);
      const bytes = frameBytes(frame);
      const limit = this.options.maxMessageBytes;
      if (bytes > limit) return this.giveUp(item, `the frame is ${bytes} bytes (the message in its JSON envelope); the limit is ${limit}; it was not sent`);
      // item.bytes: the frame is on the wire of the open connection (closed() clears it).
      item.bytes = this.hooks.send(frame) === false ? undefined : bytes;
      clearTimeout(this.timer);
      this.timer = setTimeout(() => this.retry(item, 0), this.options.ackTimeoutMs);
    }

    /** After a reconnect: the unacknowledged message goes again, with its id (stored once). */
    resume() {
      clearTimeout(this.timer);
      this.transmit();
      this.next();
    }

    /** Feeds a frame; returns true when it answered the message in flight. */
    frame(frame) {
      const item = this.inFlight;
      if (!item || !frame) return false;
      // API Gateway's own answer when the integration failed (a timeout, a crash): no type, no id.
      // With one message in flight it can only be that one: resend it (its id makes that safe).
      if (frame.type === undefined && frame.message === "Internal server error") return this.retry(item, 0);
      if (frame.id !== item.id) return false;
      if (frame.type === "ack") {
        this.finish();
        if (this.hooks.acked) this.hooks.acked(item, frame);
        this.next();
        return true;
      }
      if (frame.type !== "error") return false;
      if (frame.code === "unavailable") return this.retry(item, frame.retryAfterMs || 0);
      // Over the connection's budget, with the time until the next window: nothing was stored, so it
      // goes again then (history and echo spend the same budget as messages).
      if (frame.code === "rate_limited" && typeof frame.retryAfterMs === "number") return this.retry(item, frame.retryAfterMs);
      if (FINAL.includes(frame.code)) {
        this.finish();
        if (this.hooks.failed) this.hooks.failed(item, frame);
        this.next();
        return true;
      }
      return false;
    }

    /**
     * The connection closed with `code`. 1009 is API Gateway's "message too big": the frame in
     * flight (every other frame a client sends is a few hundred bytes) was over its frame quota.
     * That message is failed, never resent, and the limit drops below its frame, so no later
     * frame of that size closes the connection again. Only a frame sent on the connection that
     * closed counts: one sent on an earlier connection and not yet resent (resume) did not close
     * it. Returns the failed item, or null.
     */
    closed(code) {
      const item = this.inFlight;
      const bytes = item ? item.bytes : undefined;
      if (item) item.bytes = undefined;
      if (code !== 1009 || bytes === undefined) return null;
      this.options.maxMessageBytes = Math.min(this.options.maxMessageBytes, bytes - 1);
      this.giveUp(item, `the connection was closed (1009, message too big) by its ${bytes}-byte frame; it was not sent again; the limit is ${this.options.maxMessageBytes}`);
      return item;
    }

    /**
     * Fails the item in flight as message_too_large without asking the server. The hook runs a
     * moment later: the caller of send() gets its item back, and labels it, first.
     */
    giveUp(item, message) {
      this.finish();
      const error = { type: "error", code: "message_too_large", message, id: item.id };
      Promise.resolve().then(() => {
        if (this.hooks.failed) this.hooks.failed(item, error);
        this.next();
      });
      return true;
    }

    /** Sends the message in flight again after the server's hint or a growing pause, whichever is longer. */
    retry(item, retryAfterMs) {
      const backoff = Math.min(this.options.resendMaxMs, this.options.resendBaseMs * 2 ** item.resends);
      const delay = Math.max(retryAfterMs, backoff);
      item.resends++;
      if (this.hooks.retrying) this.hooks.retrying(item, delay);
      clearTimeout(this.timer);
      this.timer = setTimeout(() => this.transmit(), delay);
      return true;
    }

    finish() {
      clearTimeout(this.timer);
      this.inFlight = null;
    }

    /** Every message not yet acknowledged, the one in flight first. */
    unacknowledged() {
      return (this.inFlight ? [this.inFlight] : []).concat(this.queue);
    }

    stop() {
      clearTimeout(this.timer);
    }
  }

  return { RoomStream, OrderedSender, pad, FINAL, DEFAULT_MAX_MESSAGE_BYTES, frameBytes, sendFrame };
});
