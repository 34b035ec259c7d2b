/**
 * The two kinds of client the e2e suite drives: the real `wscat` CLI as a spawned process (what
 * the tutorial uses), and `ws` clients (for what wscat cannot do: binary frames, abrupt kills).
 */
import { ChildProcessWithoutNullStreams, spawn } from "node:child_process";
import * as path from "node:path";
import * as readline from "node:readline";
import WebSocket from "ws";
import { DEFAULT_MAX_MESSAGE_BYTES, frameBytes, OrderedSender, RoomStream, StreamFrame } from "../../web/room-stream";
import { PROJECT_DIR } from "./stack";

const WSCAT = path.join(PROJECT_DIR, "node_modules", ".bin", "wscat");

/** The frame types that are events of a room's sequence (each with a cursor). */
export const SEQUENCED = new Set(["message", "join", "leave", "edit", "delete", "tombstone"]);
export const isSequenced = (f: { type?: unknown }) => SEQUENCED.has(String(f.type));

abstract class Received {
  readonly frames: string[] = [];
  private waiters: (() => void)[] = [];
  /** The close code, once the connection closed (ws clients only). */
  closeCode: number | undefined;

  protected receive(frame: string) {
    this.frames.push(frame);
    for (const wake of this.waiters.splice(0)) wake();
  }

  protected ended(code: number) {
    this.closeCode = code;
    for (const wake of this.waiters.splice(0)) wake();
  }

  /** Resolves with the first frame (seen or to come) that matches; fails after `timeoutMs`. */
  async waitFor(match: (frame: string) => boolean, timeoutMs = 5_000): Promise<string> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const found = this.frames.find(match);
      if (found !== undefined) return found;
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`no matching frame in ${timeoutMs} ms; got ${JSON.stringify(this.frames)}`);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left);
        this.waiters.push(() => {
          clearTimeout(timer);
          resolve();
        });
      });
    }
  }

  json(): Record<string, unknown>[] {
    return this.frames.flatMap((f) => {
      try {
        return [JSON.parse(f)];
      } catch {
        return [];
      }
    });
  }

  /**
   * Asks $default for usage and returns this connection's id from it. The question is repeated
   * until answered, because wscat drops lines typed before its connection opens (and, without a
   * TTY, prints nothing when it does open).
   */
  async connectionId(timeoutMs = 10_000): Promise<string> {
    const deadline = Date.now() + timeoutMs;
    const isUsage = (f: string) => f.includes('"type":"usage"');
    // Each question spends the connection's budget: ask again only after a growing wait, so a busy
    // machine's slow answers do not use the budget up.
    for (let wait = 500; ; wait = Math.min(4_000, wait * 2)) {
      this.sendText("who am i");
      try {
        const usage = await this.waitFor(isUsage, wait);
        return (JSON.parse(usage).connection as { connectionId: string }).connectionId;
      } catch (err) {
        if (Date.now() > deadline) throw err;
      }
    }
  }

  /**
   * Asks `history` (since a cursor, or the latest) and returns the replayed message frames and the
   * closing history-end frame. Asks again when no history-end comes within `timeoutMs` (a fault
   * may cut a replay short), up to `attempts` times.
   */
  async history(since?: string, { attempts = 1, timeoutMs = 10_000 } = {}): Promise<{ messages: Frame[]; events: Frame[]; end: Frame }> {
    for (let attempt = 1; ; attempt++) {
      const before = this.frames.length;
      this.sendText(JSON.stringify({ action: "history", ...(since ? { since } : {}), limit: 100 }));
      try {
        await this.waitFor(() => this.frames.slice(before).some((f) => f.includes('"type":"history-end"')), timeoutMs);
      } catch (err) {
        if (attempt >= attempts) throw err;
        continue;
      }
      const frames = this.frames.slice(before).map((f) => JSON.parse(f) as Frame);
      return { messages: frames.filter((f) => f.type === "message"), events: frames.filter(isSequenced), end: frames.find((f) => f.type === "history-end")! };
    }
  }

  /**
   * Every event (messages, presence, edits, deletes and tombstones) after `since` (from the room's start by default), in
   * cursor order, as a page would read them:
   * pages on while `more`, and asks again after `retryAfterMs` when a page stopped at a number still
   * being written or the request was refused as unavailable or rate_limited.
   */
  async historyAll(since = "0000000000000000", timeoutMs = 60_000): Promise<Frame[]> {
    const deadline = Date.now() + timeoutMs;
    const byCursor = new Map<string, Frame>();
    const answered = (f: Frame) => f.type === "history-end" || (f.type === "error" && f.id === undefined);
    for (let cursor = since; ; ) {
      const before = this.frames.length;
      this.sendText(JSON.stringify({ action: "history", since: cursor, limit: 100 }));
      await this.waitFor(() => this.parsed(before).some(answered), Math.max(1, deadline - Date.now()));
      const frames = this.parsed(before);
      for (const f of frames) if (isSequenced(f) && String(f.cursor) > cursor) byCursor.set(String(f.cursor), f);
      const end = frames.find((f) => f.type === "history-end");
      if (end && !end.more) return [...byCursor.values()].sort((a, b) => (String(a.cursor) < String(b.cursor) ? -1 : 1));
      if (end?.cursor) cursor = String(end.cursor);
      const hint = Number((end ?? frames.find(answered))?.retryAfterMs ?? 0);
      if (hint > 0) await new Promise((r) => setTimeout(r, hint));
    }
  }

  /**
   * Sends a message with an id as the page does (web/room-stream.js, OrderedSender): resent with
   * the same id after `retryAfterMs` while refused as `unavailable` (shed under load, or a store
   * that failed), and when no answer comes within `ackTimeoutMs` (the ack's post can fail too);
   * resolves with the final answer, the ack or a final refusal. A frame over `maxMessageBytes`
   * (frameBytes, the page's rule) is refused before sending; nothing is resent once the
   * connection closed (a 1009 closes it for a frame too big).
   */
  async sendReliably(message: string, id: string, timeoutMs = 120_000, ackTimeoutMs = 15_000, maxMessageBytes = DEFAULT_MAX_MESSAGE_BYTES): Promise<Frame> {
    const frame = { action: "sendmessage", message, id };
    const bytes = frameBytes(frame);
    if (bytes > maxMessageBytes) throw new Error(`not sent: the frame is ${bytes} bytes; the limit is ${maxMessageBytes}`);
    const deadline = Date.now() + timeoutMs;
    const first = this.frames.length;
    const mine = (f: Frame) => f.id === id && (f.type === "ack" || f.type === "error");
    const isClosed = () => this.closeCode !== undefined;
    for (;;) {
      if (isClosed()) throw new Error(`not resent: the connection closed with ${this.closeCode}`);
      const before = this.frames.length;
      this.sendText(JSON.stringify(frame));
      try {
        await this.waitFor(() => isClosed() || this.parsed(before).some(mine), Math.max(1, Math.min(ackTimeoutMs, deadline - Date.now())));
      } catch (err) {
        if (Date.now() >= deadline) throw err;
        continue; // no answer: resend (a late answer to the first send counts too, below)
      }
      if (!this.parsed(before).some(mine)) continue; // closed: refused above
      const answer = this.parsed(first).filter(mine).find((f) => f.type === "ack") ?? this.parsed(before).find(mine)!;
      if (answer.type === "ack" || answer.code !== "unavailable") return answer;
      await new Promise((r) => setTimeout(r, Number(answer.retryAfterMs ?? 500)));
    }
  }

  private parsed(from: number): Frame[] {
    return this.frames.slice(from).flatMap((f) => {
      try {
        return [JSON.parse(f) as Frame];
      } catch {
        return [];
      }
    });
  }

  abstract sendText(text: string): void;
}

export type Frame = { type: string; cursor?: string; message?: string; more?: boolean; from?: { name: string }; [key: string]: unknown };

/** The real wscat CLI, fed through its stdin, read from its stdout. */
export class Wscat extends Received {
  private child: ChildProcessWithoutNullStreams;
  readonly exited: Promise<number | null>;
  stderr = "";

  constructor(url: string) {
    super();
    this.child = spawn(WSCAT, ["-c", url], { cwd: PROJECT_DIR });
    this.child.stderr.on("data", (d) => (this.stderr += d));
    // Without a TTY, wscat writes its "> " prompt and each received frame on stdout.
    readline.createInterface({ input: this.child.stdout }).on("line", (line) => {
      const frame = line.replace(/^(> |< )+/, "");
      if (frame) this.receive(frame);
    });
    this.exited = new Promise((resolve) => this.child.once("exit", (code) => resolve(code)));
  }

  sendText(text: string) {
    this.child.stdin.write(text + "\n");
  }

  /** Ends wscat's input, which closes the connection (without a close code) and exits. */
  async close() {
    this.child.stdin.end();
    await this.exited;
  }
}

export class Client extends Received {
  closed: Promise<{ code: number; reason: string }>;

  private constructor(readonly socket: WebSocket) {
    super();
    socket.on("message", (data) => this.receive(data.toString()));
    this.closed = new Promise((resolve) =>
      socket.once("close", (code, reason) => {
        this.ended(code);
        resolve({ code, reason: reason.toString() });
      }),
    );
  }

  /** Opens a connection; rejects with the HTTP status when the handshake is refused. */
  static open(url: string, query: Record<string, string> = {}): Promise<Client> {
    const target = new URL(url);
    for (const [k, v] of Object.entries(query)) target.searchParams.append(k, v);
    return Client.openRaw(target.toString());
  }

  static openRaw(url: string): Promise<Client> {
    return new Promise((resolve, reject) => {
      const socket = new WebSocket(url);
      socket.once("open", () => resolve(new Client(socket)));
      socket.once("unexpected-response", (_req, res) => reject(Object.assign(new Error(`Unexpected server response: ${res.statusCode}`), { status: res.statusCode })));
      socket.once("error", reject);
    });
  }

  sendText(text: string) {
    this.socket.send(text);
  }

  send(message: unknown) {
    this.socket.send(JSON.stringify(message));
  }

  async close() {
    if (this.socket.readyState === WebSocket.OPEN) this.socket.close(1000);
    await this.closed;
  }

  /** Drops the TCP connection without a close frame, as a crashed client or a lost network does. */
  kill() {
    this.socket.terminate();
  }
}

export interface PageLikeOptions {
  resendBaseMs?: number;
  gapWaitMs?: number;
  /** The stack's maxMessageBytes: a larger frame is failed before sending, as the page does. */
  maxMessageBytes?: number;
}

/**
 * A client that behaves as the chat page does (web/room-stream.js): it follows the room's sequence,
 * fills gaps from history, skips tombstones, starts over on a new epoch, and sends one message at a
 * time, resending refused or failed ones with the same id.
 */
export class PageLikeClient {
  readonly events: StreamFrame[] = [];
  readonly resets: string[] = [];
  readonly acks: StreamFrame[] = [];
  /** Final refusals of its sends, the server's or its own (a frame over the limit, or one that closed the connection with 1009). */
  readonly failures: StreamFrame[] = [];
  readonly stream: RoomStream;
  readonly sender: OrderedSender;
  private changed: (() => void)[] = [];

  private constructor(
    public client: Client,
    options: PageLikeOptions = {},
  ) {
    this.stream = new RoomStream(
      {
        event: (frame) => this.record(() => this.events.push(frame)),
        reset: (epoch) => this.record(() => this.resets.push(epoch)),
        history: (request) => this.client.send(request),
      },
      { gapWaitMs: options.gapWaitMs ?? 100 },
    );
    this.sender = new OrderedSender(
      {
        send: (frame) => this.client.send(frame),
        acked: (_item, ack) => this.record(() => this.acks.push(ack)),
        failed: (_item, error) => this.record(() => this.failures.push(error)),
      },
      { resendBaseMs: options.resendBaseMs ?? 200, maxMessageBytes: options.maxMessageBytes ?? DEFAULT_MAX_MESSAGE_BYTES },
    );
    this.listen();
  }

  /** Opens a connection and starts following the room. */
  static async open(url: string, query: Record<string, string>, options?: PageLikeOptions): Promise<PageLikeClient> {
    const page = new PageLikeClient(await Client.open(url, query), options);
    page.stream.start();
    return page;
  }

  /** Connects again after the socket closed, as the page does: the same stream and queue go on. */
  async reopen(url: string, query: Record<string, string>): Promise<void> {
    this.client = await Client.open(url, query);
    this.listen();
    this.stream.start();
    this.sender.resume();
  }

  private listen() {
    // As the page does: a 1009 close fails the message in flight instead of resending it.
    this.client.socket.once("close", (code) => this.record(() => this.sender.closed(code)));
    this.client.socket.on("message", (data) => {
      let frame: StreamFrame;
      try {
        frame = JSON.parse(data.toString()) as StreamFrame;
      } catch {
        return;
      }
      this.sender.frame(frame);
      this.stream.frame(frame);
      this.record(() => undefined);
    });
  }

  /** The messages shown, in cursor order. */
  messages(): StreamFrame[] {
    return this.events.filter((e) => e.type === "message").sort((a, b) => Number(a.cursor) - Number(b.cursor));
  }

  /** Resolves when `check` holds, re-checked on every frame and hook; fails after `timeoutMs`. */
  async until(check: () => boolean, timeoutMs = 30_000, what = "the expected state"): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!check()) {
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`${what} not reached in ${timeoutMs} ms; cursor ${this.stream.cursor}, events ${JSON.stringify(this.events.map((e) => [e.type, e.cursor]))}`);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left);
        this.changed.push(() => {
          clearTimeout(timer);
          resolve();
        });
      });
    }
  }

  private record(change: () => void) {
    change();
    for (const wake of this.changed.splice(0)) wake();
  }

  async close() {
    this.stream.stop();
    this.sender.stop();
    await this.client.close();
  }
}
