import * as assert from "node:assert/strict";
import { createServer, IncomingMessage, Server } from "node:http";
import { AddressInfo, connect, Socket } from "node:net";
import { WebSocket, WebSocketServer } from "ws";
import { LeanAnswer, LeanRequest, LeanRouter, routeLeanConnections } from "../../local/lean-http";

/** Reads raw HTTP from a socket: the bytes so far, and a wait for a condition on them. */
class Raw {
  text = "";
  closed: Promise<void>;
  private waiters: (() => void)[] = [];
  constructor(readonly socket: Socket) {
    socket.setEncoding("latin1");
    socket.on("data", (chunk: string) => {
      this.text += chunk;
      for (const w of this.waiters.splice(0)) w();
    });
    this.closed = new Promise((resolve) => socket.on("close", () => resolve()));
  }
  async until(done: (text: string) => boolean): Promise<string> {
    while (!done(this.text)) await new Promise<void>((resolve) => this.waiters.push(resolve));
    return this.text;
  }
  /** Waits for `count` complete answers (framed by Content-Length; none means no body). */
  answers(count: number): Promise<string> {
    return this.until((t) => complete(t) >= count);
  }
}

/** How many complete answers `text` holds. */
function complete(text: string): number {
  let n = 0;
  for (let at = 0; ; n++) {
    const headEnd = text.indexOf("\r\n\r\n", at);
    if (headEnd < 0) return n;
    const length = Number(/content-length: (\d+)/i.exec(text.slice(at, headEnd))?.[1] ?? 0);
    if (text.length < headEnd + 4 + length) return n;
    at = headEnd + 4 + length;
  }
}

describe("local lean HTTP path (lean-http.ts)", () => {
  let server: Server;
  let router: LeanRouter;
  let port: number;
  let leanSeen: LeanRequest[];
  let nodeSeen: { method?: string; url?: string; body: string }[];
  /** What a request to /lean/gated waits for. */
  let gate: Promise<void> = Promise.resolve();
  const sockets: Socket[] = [];

  /** A server with the lean path, keeping idle connections for `keepAliveMs`. */
  async function start(keepAliveMs: number) {
    server = createServer((req: IncomingMessage, res) => {
      const chunks: Buffer[] = [];
      req.on("data", (c: Buffer) => chunks.push(c));
      req.on("end", () => {
        nodeSeen.push({ method: req.method, url: req.url, body: Buffer.concat(chunks).toString() });
        res.writeHead(200, { "Content-Type": "text/plain", "Content-Length": "4" });
        res.end("node");
      });
    });
    server.keepAliveTimeout = keepAliveMs;
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", () => resolve()));
    port = (server.address() as AddressInfo).port;
    router = routeLeanConnections(
      server,
      {
        accepts: (_method, url) => url.startsWith("/lean/"),
        maxBodyBytes: 1000,
        handle: async (request): Promise<LeanAnswer> => {
          leanSeen.push(request);
          if (request.url === "/lean/gated") await gate;
          if (request.url === "/lean/none") return { status: 204, headers: {}, body: "" };
          return { status: 200, headers: { "x-seen": String(request.headers["x-n"]) }, body: `lean:${request.body.toString()}` };
        },
      },
      keepAliveMs,
    );
  }

  async function stop() {
    for (const s of sockets.splice(0)) s.destroy();
    router.closeAll();
    server.closeAllConnections();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  }

  beforeEach(async () => {
    leanSeen = [];
    nodeSeen = [];
    await start(60_000);
  });

  afterEach(() => stop());

  const open = async () => {
    const socket = connect(port, "127.0.0.1");
    socket.setNoDelay(true); // each write its own segment: the pieces below arrive apart
    sockets.push(socket);
    await new Promise((resolve) => socket.once("connect", resolve));
    return new Raw(socket);
  };
  const post = (path: string, body: string, extra = "") => `POST ${path} HTTP/1.1\r\nhost: x\r\ncontent-length: ${Buffer.byteLength(body)}\r\n${extra}\r\n${body}`;

  it("answers an accepted request itself, with keep-alive, and answers pipelined ones in order", async () => {
    const raw = await open();
    raw.socket.write(post("/lean/a", "one", "x-n: 1\r\n") + post("/lean/b", "two", "x-n: 2\r\n"));
    const text = await raw.answers(2);
    assert.match(text, /^HTTP\/1\.1 200 OK\r\nx-seen: 1\r\nContent-Length: 8\r\nDate: .+ GMT\r\nConnection: keep-alive\r\nKeep-Alive: timeout=60\r\n\r\nlean:one/);
    assert.ok(text.indexOf("lean:one") < text.indexOf("lean:two"));
    assert.deepEqual(leanSeen.map((r) => [r.method, r.url, r.body.toString()]), [["POST", "/lean/a", "one"], ["POST", "/lean/b", "two"]]);
    assert.equal(nodeSeen.length, 0);
  });

  it("waits for a head and a body that arrive in pieces", async () => {
    const raw = await open();
    const request = post("/lean/split", "a body in parts");
    for (const piece of [request.slice(0, 3), request.slice(3, 40), request.slice(40, -4), request.slice(-4)]) {
      raw.socket.write(piece);
      await new Promise((resolve) => setImmediate(resolve));
    }
    assert.match(await raw.answers(1), /lean:a body in parts$/);
  });

  it("a 204 carries no Content-Length and no body", async () => {
    const raw = await open();
    raw.socket.write("DELETE /lean/none HTTP/1.1\r\nhost: x\r\n\r\n");
    const text = await raw.until((t) => t.endsWith("\r\n\r\n"));
    assert.match(text, /^HTTP\/1\.1 204 No Content\r\n/);
    assert.doesNotMatch(text, /Content-Length/);
  });

  it("hands a connection whose first request it does not accept to Node's server, bytes and all", async () => {
    const raw = await open();
    raw.socket.write(post("/elsewhere", "for node"));
    assert.match(await raw.answers(1), /\r\n\r\nnode$/);
    assert.deepEqual(nodeSeen, [{ method: "POST", url: "/elsewhere", body: "for node" }]);
    assert.equal(leanSeen.length, 0);
  });

  it("hands a connection over mid-way, at the first request it does not accept", async () => {
    const raw = await open();
    // In one write: the request Node gets waits behind the lean one's answer.
    raw.socket.write(post("/lean/first", "1") + post("/elsewhere", "2") + post("/lean/after", "3"));
    const text = await raw.answers(3);
    assert.ok(text.indexOf("lean:1") < text.indexOf("node"));
    assert.deepEqual(leanSeen.map((r) => r.url), ["/lean/first"]);
    // Once Node's, the connection stays Node's: the later /lean/ request is Node's too.
    assert.deepEqual(nodeSeen.map((r) => r.url), ["/elsewhere", "/lean/after"]);
  });

  for (const [what, extra] of [
    ["a chunked body", "transfer-encoding: chunked\r\n"],
    ["Expect: 100-continue", "expect: 100-continue\r\n"],
    ["a repeated header", "x-n: 1\r\nX-N: 2\r\n"],
  ] as const) {
    it(`leaves ${what} to Node's server`, async () => {
      const raw = await open();
      const request = what === "a chunked body" ? "POST /lean/c HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n" : post("/lean/c", "abc", extra);
      raw.socket.write(request);
      await raw.until((t) => t.endsWith("node")); // after Node's own 100 Continue, for Expect
      assert.deepEqual(nodeSeen.map((r) => [r.url, r.body]), [["/lean/c", "abc"]]);
    });
  }

  for (const [what, request] of [
    ["HTTP/1.0", "POST /lean/old HTTP/1.0\r\ncontent-length: 3\r\n\r\nabc"],
    ["a folded header", "POST /lean/fold HTTP/1.1\r\nhost: x\r\nx-a: 1\r\n 2\r\ncontent-length: 3\r\n\r\nabc"],
  ] as const) {
    it(`leaves ${what} to Node's server`, async () => {
      const raw = await open();
      raw.socket.write(request);
      await raw.until((t) => /\r\n\r\n/.test(t) && (t.endsWith("node") || /^HTTP\/1\.1 400/.test(t)));
      assert.equal(leanSeen.length, 0);
    });
  }

  it("answers a request whose sender half-closed, then closes", async () => {
    const raw = await open();
    raw.socket.end(post("/lean/last", "z"));
    await raw.closed;
    assert.match(raw.text, /lean:z$/);
  });

  it("sends a held answer before the connection ends at a request it leaves to Node, after a half-close", async () => {
    // The server's socket: its end is seen (after the lean path's own handler) before the answer is released.
    let open_!: () => void;
    gate = new Promise<void>((resolve) => (open_ = resolve));
    server.once("connection", (socket: Socket) => socket.once("end", () => open_()));
    const raw = await open();
    raw.socket.end(post("/lean/gated", "a") + post("/elsewhere", "b"));
    await raw.closed;
    assert.match(raw.text, /^HTTP\/1\.1 200 [^]*lean:a$/);
    assert.equal(nodeSeen.length, 0, "a request after the end of the stream is not answered");
  });

  it("leaves a body over the route's bound to Node's server", async () => {
    const raw = await open();
    raw.socket.write(post("/lean/big", "b".repeat(1001)));
    await raw.answers(1);
    assert.equal(nodeSeen[0]?.body.length, 1001);
  });

  it("hands a WebSocket upgrade over to Node's server", async () => {
    const wss = new WebSocketServer({ noServer: true });
    server.on("upgrade", (req, socket, head) => wss.handleUpgrade(req, socket, head, (ws) => ws.send("hello")));
    const ws = new WebSocket(`ws://127.0.0.1:${port}/lean/not-an-upgrade-route`);
    const first = await new Promise<string>((resolve, reject) => {
      ws.once("message", (data) => resolve(data.toString()));
      ws.once("error", reject);
    });
    assert.equal(first, "hello");
    ws.terminate();
    wss.close();
  });

  it("answers `Connection: close` and then closes", async () => {
    const raw = await open();
    raw.socket.write(post("/lean/bye", "x", "connection: close\r\n"));
    await raw.closed;
    assert.match(raw.text, /Connection: close\r\n\r\nlean:x$/);
  });

  it("closes a connection idle for the keep-alive time, and closeAll() closes the rest", async () => {
    await stop();
    await start(200);
    const idle = await open();
    idle.socket.write(post("/lean/1", "x"));
    await idle.answers(1);
    await idle.closed; // 200 ms of keep-alive
    const busy = await open();
    busy.socket.write(post("/lean/2", "y"));
    await busy.answers(1);
    router.closeAll();
    await busy.closed;
  });
});
