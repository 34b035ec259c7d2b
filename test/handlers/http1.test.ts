import { spawn } from "child_process";
import { once } from "events";
import * as fs from "fs";
import * as http from "http";
import * as https from "https";
import * as net from "net";
import assert from "node:assert/strict";
import * as path from "path";
import { createCodec, createHttp1Client, Http1Client, Http1Error } from "../../handlers/shared/http1";

const { parseHead } = createCodec();

const TLS_DIR = path.join(__dirname, "fixtures-tls");

/** A server on port 0, closed (with its connections) after the test. */
async function listen<S extends net.Server>(server: S): Promise<{ server: S; port: number; connections: net.Socket[] }> {
  const connections: net.Socket[] = [];
  server.on(server instanceof https.Server ? "secureConnection" : "connection", (socket: net.Socket) => connections.push(socket));
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  opened.push(server);
  return { server, port: (server.address() as net.AddressInfo).port, connections };
}
const opened: net.Server[] = [];
const clients: Http1Client[] = [];
function client(options: Partial<Parameters<typeof createHttp1Client>[0]> = {}): Http1Client {
  const c = createHttp1Client({ maxSockets: 4, timeoutMs: 10_000, ...options });
  clients.push(c);
  return c;
}
afterEach(async () => {
  for (const c of clients.splice(0)) c.close();
  for (const s of opened.splice(0)) {
    (s as http.Server).closeAllConnections?.();
    s.close();
  }
});

/** An HTTP server that answers every request with what it received, as JSON. */
const echo = () =>
  listen(
    http.createServer((req, res) => {
      const chunks: Buffer[] = [];
      req.on("data", (c: Buffer) => chunks.push(c));
      req.on("end", () => res.end(JSON.stringify({ method: req.method, url: req.url, headers: req.headers, body: Buffer.concat(chunks).toString("utf8") })));
    }),
  );

/** A TCP server that answers each connection's first request with `answer` (raw bytes). */
const raw = (answer: (socket: net.Socket) => void | Promise<void>) =>
  listen(net.createServer((socket) => socket.once("data", () => void answer(socket))));

const url = (port: number, p = "/x") => new URL(`http://127.0.0.1:${port}${p}`);
const rejection = async (p: Promise<unknown>): Promise<Http1Error> => {
  try {
    await p;
  } catch (err) {
    return err as Http1Error;
  }
  throw new Error("expected a rejection");
};

describe("http1: the lean keep-alive HTTP/1.1 client", () => {
  it("sends method, path, query, headers and a UTF-8 body, and reads a Content-Length answer", async () => {
    const { port } = await echo();
    const body = JSON.stringify({ text: "héllo ✓ 😀" });
    const answer = await client().request(url(port, "/dev/@connections/a%3D?x=1"), "POST", { "X-Amz-Date": "20261201T000000Z" }, body);
    assert.equal(answer.status, 200);
    assert.match(answer.headers["content-length"], /^\d+$/);
    const seen = JSON.parse(answer.body);
    assert.equal(seen.method, "POST");
    assert.equal(seen.url, "/dev/@connections/a%3D?x=1");
    assert.equal(seen.headers["x-amz-date"], "20261201T000000Z");
    assert.equal(seen.headers.host, `127.0.0.1:${port}`);
    assert.equal(seen.headers["content-length"], String(Buffer.byteLength(body)));
    assert.equal(seen.body, body);
  });

  it("returns an error answer's status, headers and body (a 410 is an answer, not a failure)", async () => {
    const { port } = await listen(http.createServer((_req, res) => res.writeHead(410, { "x-amzn-ErrorType": "GoneException" }).end('{"message":null}')));
    const answer = await client().request(url(port), "POST", {}, "x");
    assert.deepEqual([answer.status, answer.headers["x-amzn-errortype"], answer.body], [410, "GoneException", '{"message":null}']);
  });

  it("reads a chunked answer that arrives one byte at a time, trailers included", async () => {
    const text = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhéllo\r\n0\r\nX-Trailer: t\r\n\r\n".replace("5;", `${Buffer.byteLength("héllo").toString(16)};`);
    const { port } = await raw(async (socket) => {
      for (const byte of Buffer.from(text)) {
        socket.write(Buffer.from([byte]));
        await new Promise((resolve) => setImmediate(resolve));
      }
    });
    const answer = await client().request(url(port), "GET", {}, "");
    assert.equal(answer.body, "héllo");
  });

  it("reads a 204 or 304 as bodiless whatever its Content-Length or Transfer-Encoding says", async () => {
    for (const head of ["HTTP/1.1 204 No Content\r\nTransfer-Encoding: chunked\r\n\r\n", "HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n"]) {
      const { port } = await raw((socket) => void socket.write(head));
      const answer = await client().request(url(port), "GET", {}, "");
      assert.deepEqual([answer.status, answer.body], [Number(head.slice(9, 12)), ""]);
    }
  });

  it("accepts a tab in a header value, and a header named like an Object property", async () => {
    const { port } = await raw((socket) => void socket.write("HTTP/1.1 200 OK\r\nConstructor: x\r\nContent-Length: 0\r\n\r\n"));
    const answer = await client().request(url(port), "GET", { "x-a": "1\t2" }, "");
    assert.equal(answer.headers.constructor, "x");
  });

  it("skips an interim 100 Continue and reads the final answer", async () => {
    const { port } = await raw((socket) => void socket.write("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok"));
    const answer = await client().request(url(port), "POST", {}, "x");
    assert.deepEqual([answer.status, answer.body], [201, "ok"]);
  });

  it("reads an answer without a length to the end of the connection, then opens a new connection", async () => {
    let served = 0;
    const { port, connections } = await raw((socket) => {
      served++;
      socket.end(`HTTP/1.1 200 OK\r\n\r\nanswer ${served}`);
    });
    const c = client();
    assert.equal((await c.request(url(port), "GET", {}, "")).body, "answer 1");
    assert.equal((await c.request(url(port), "GET", {}, "")).body, "answer 2");
    assert.equal(connections.length, 2);
  });

  it("reuses one keep-alive connection for requests in sequence", async () => {
    const { port, connections } = await echo();
    const c = client();
    for (let i = 0; i < 5; i++) assert.equal(JSON.parse((await c.request(url(port, `/n${i}`), "GET", {}, "")).body).url, `/n${i}`);
    assert.equal(connections.length, 1);
    assert.deepEqual(Object.values(c.connections()), [{ open: 1, idle: 1, queued: 0 }]);
  });

  it("must not open more than maxSockets connections: further requests wait their turn, and all are answered", async () => {
    const { port, connections } = await echo();
    const c = client({ maxSockets: 3 });
    const answers = await Promise.all(Array.from({ length: 20 }, (_, i) => c.request(url(port, `/r${i}`), "POST", {}, `body ${i}`)));
    assert.deepEqual(
      answers.map((a) => JSON.parse(a.body).body),
      Array.from({ length: 20 }, (_, i) => `body ${i}`),
    );
    assert.equal(connections.length, 3);
  });

  it("closes the connection after an answer with Connection: close, and the next request opens another", async () => {
    const { port, connections } = await listen(http.createServer((_req, res) => res.setHeader("connection", "close").end("bye")));
    const c = client();
    assert.equal((await c.request(url(port), "GET", {}, "")).body, "bye");
    assert.equal((await c.request(url(port), "GET", {}, "")).body, "bye");
    assert.equal(connections.length, 2);
  });

  it("retires an idle connection after idleMs, closing it from the client side", async () => {
    const { port, server, connections } = await echo();
    server.keepAliveTimeout = 60_000;
    const c = client({ idleMs: 20 });
    await c.request(url(port), "GET", {}, "");
    await once(connections[0], "close");
    assert.deepEqual(Object.values(c.connections()), [{ open: 0, idle: 0, queued: 0 }]);
  });

  it("retires an idle connection 1 s before the server's Keep-Alive timeout", async () => {
    // The server never closes it: only the client's retirement (timeout=1 less 1 s: at once) can.
    const { port, connections } = await raw((socket) => void socket.write("HTTP/1.1 200 OK\r\nKeep-Alive: timeout=1\r\nContent-Length: 0\r\n\r\n"));
    const c = client({ idleMs: 600_000 });
    await c.request(url(port), "GET", {}, "");
    await once(connections[0], "close");
    assert.deepEqual(Object.values(c.connections()), [{ open: 0, idle: 0, queued: 0 }]);
    assert.equal(parseHead("HTTP/1.1 200 OK\r\nKeep-Alive: timeout=5").idleMs, 4_000);
    assert.equal(parseHead("HTTP/1.1 200 OK\r\nConnection: keep-alive").idleMs, undefined);
    assert.equal(parseHead("HTTP/1.0 200 OK\r\nContent-Length: 0").keepAlive, false, "HTTP/1.0 closes unless it says keep-alive");
  });

  it("must not reuse an idle connection past its time when its timer could not run (a frozen Lambda)", async () => {
    const { port, connections } = await echo();
    const c = client({ idleMs: 20 });
    await c.request(url(port), "GET", {}, "");
    const frozenUntil = Date.now() + 60;
    while (Date.now() < frozenUntil); // the event loop is blocked: no timer runs, as under a freeze
    assert.equal((await c.request(url(port), "GET", {}, "")).status, 200);
    assert.equal(connections.length, 2, "a new connection, not the expired one");
  });

  it("must not keep the process alive with an idle connection", async () => {
    const { port, server } = await echo();
    server.keepAliveTimeout = 600_000; // neither side retires the connection first
    const script = `require(${JSON.stringify(path.join(__dirname, "../../handlers/shared/http1.ts"))}).createHttp1Client({ maxSockets: 1, timeoutMs: 5000, idleMs: 600000 })
      .request(new URL("http://127.0.0.1:${port}/"), "GET", {}, "").then((a) => console.log("answered", a.status));`;
    const child = spawn(process.execPath, ["-r", "ts-node/register/transpile-only", "-e", script], { stdio: ["ignore", "pipe", "inherit"] });
    let out = "";
    child.stdout.on("data", (d: Buffer) => (out += d));
    const [code] = await once(child, "exit");
    assert.equal(code, 0);
    assert.match(out, /answered 200/);
  });

  it("fails with TimeoutError when no answer comes, closes that connection, and the next request works", async () => {
    const { port, connections } = await listen(http.createServer((req, res) => void (req.url === "/hang" ? undefined : res.end("ok"))));
    const c = client({ timeoutMs: 100 });
    const err = await rejection(c.request(url(port, "/hang"), "GET", {}, ""));
    assert.deepEqual([err.name, err.code], ["TimeoutError", "TimeoutError"]);
    await once(connections[0], "close");
    assert.equal((await c.request(url(port, "/"), "GET", {}, "")).body, "ok");
  });

  it("bounds a queued request by the same timeout: it fails without ever opening a connection", async () => {
    const { port, connections } = await listen(http.createServer(() => undefined));
    const c = client({ maxSockets: 1, timeoutMs: 100 });
    const failures = await Promise.all(["/a", "/b", "/c"].map((p) => rejection(c.request(url(port, p), "GET", {}, ""))));
    assert.deepEqual(failures.map((f) => f.code), ["TimeoutError", "TimeoutError", "TimeoutError"]);
    assert.match(failures[2].message, /no free connection/);
    assert.equal(connections.length, 1, "one connection, for the first request only");
  });

  it("close() fails the running and the queued requests", async () => {
    const { port } = await listen(http.createServer(() => undefined));
    const c = client({ maxSockets: 1 });
    const running = rejection(c.request(url(port, "/a"), "GET", {}, ""));
    const queued = rejection(c.request(url(port, "/b"), "GET", {}, ""));
    assert.deepEqual(Object.values(c.connections()), [{ open: 1, idle: 0, queued: 1 }]);
    c.close();
    assert.deepEqual([(await running).code, (await queued).code], ["CLOSED", "CLOSED"]);
    assert.deepEqual(Object.values(c.connections()), [{ open: 0, idle: 0, queued: 0 }]);
  });

  it("fails with the socket's code and no status when the connection is refused", async () => {
    const { port, server } = await echo();
    server.close();
    await once(server, "close");
    const err = await rejection(client().request(url(port), "GET", {}, ""));
    assert.deepEqual([err.name, err.code], ["NetworkError", "ECONNREFUSED"]);
  });

  it("marks a request that never left as not sent: a refused connection, a TLS handshake that never ends, a queued request past its time", async () => {
    const { port, server } = await echo();
    server.close();
    await once(server, "close");
    assert.equal((await rejection(client().request(url(port), "POST", {}, "{}"))).notSent, true, "refused");
    // A TCP server that takes the TLS ClientHello and never answers: the request's bytes wait on the handshake.
    const { port: silent, connections } = await listen(net.createServer(() => undefined));
    const received: Buffer[] = [];
    const handshake = rejection(client({ timeoutMs: 200 }).request(new URL(`https://localhost:${silent}/`), "POST", {}, "{}"));
    await once(opened[opened.length - 1], "connection");
    connections[0].on("data", (b: Buffer) => received.push(b));
    const stalled = await handshake;
    assert.deepEqual([stalled.code, stalled.notSent], ["TimeoutError", true]);
    assert.ok(!Buffer.concat(received).includes("POST"), "no byte of the request reached the server");
    const { port: busy } = await listen(http.createServer(() => undefined));
    const c = client({ maxSockets: 1, timeoutMs: 100 });
    const [running, , queued] = await Promise.all(["/a", "/b", "/c"].map((p) => rejection(c.request(url(busy, p), "POST", {}, "{}"))));
    assert.match(queued.message, /no free connection/);
    assert.deepEqual([running.notSent, queued.notSent], [undefined, true], "written and unanswered: ambiguous; never started: not sent");
  });

  it("marks a request on a reused connection that fails before it is written whole as not sent", async () => {
    // The first request is answered on a keep-alive connection; the server resets that connection
    // as the second request starts to arrive, long before its 32 MB could all be written.
    let requests = 0;
    const { port, connections } = await listen(
      net.createServer((socket) =>
        socket.on("data", () => {
          if (++requests === 1) socket.write("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
          else if (requests === 2) socket.resetAndDestroy();
        }),
      ),
    );
    const c = client();
    assert.equal((await c.request(url(port), "GET", {}, "")).body, "ok");
    const err = await rejection(c.request(url(port), "POST", {}, "x".repeat(32 * 1024 * 1024)));
    assert.equal(connections.length, 1, "the same connection, reused");
    assert.deepEqual([err.name, err.notSent], ["NetworkError", true]);
  });

  it("must not mark a request written whole as not sent when the connection is then reset, fresh or reused", async () => {
    const head = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
    // Answers a request whose body is "answer", resets the connection after reading any other whole.
    const { port, connections } = await listen(
      net.createServer((socket) => {
        let text = "";
        socket.on("data", (b: Buffer) => {
          text += b.toString("latin1");
          if (!text.endsWith("answer") && !text.endsWith("reset")) return;
          if (text.endsWith("answer")) socket.write(head);
          else socket.resetAndDestroy();
          text = "";
        });
      }),
    );
    const fresh = await rejection(client().request(url(port), "POST", {}, "reset"));
    const c = client();
    assert.equal((await c.request(url(port), "POST", {}, "answer")).body, "ok");
    const reused = await rejection(c.request(url(port), "POST", {}, "reset"));
    assert.equal(connections.length, 2, "one fresh connection, one reused");
    assert.deepEqual([fresh.code, fresh.notSent, reused.code, reused.notSent], ["ECONNRESET", undefined, "ECONNRESET", undefined]);
  });

  it("fails when the server closes the connection part-way through an answer", async () => {
    const { port } = await raw((socket) => void socket.end("HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten b"));
    const err = await rejection(client().request(url(port), "GET", {}, ""));
    assert.equal(err.code, "ECONNRESET");
  });

  it("fails on a malformed status line, a bad chunk size or chunk end, a folded header, a head over 64 KB or bytes after the answer", async () => {
    const answers = [
      ["ICY 200 OK\r\n\r\n", "HPE_INVALID_STATUS"],
      ["HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "HPE_INVALID_CHUNK_SIZE"],
      [`HTTP/1.1 200 OK\r\nX-Big: ${"a".repeat(70_000)}`, "HPE_HEADER_OVERFLOW"],
      ["HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA", "HPE_UNEXPECTED_CONTENT"],
      ["HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nokXX0\r\n\r\n", "HPE_INVALID_CHUNK_SIZE"],
      ["HTTP/1.1 200 OK\r\nX-A: 1\r\n folded: yes\r\nContent-Length: 0\r\n\r\n", "HPE_INVALID_HEADER_TOKEN"],
    ];
    for (const [text, code] of answers) {
      const { port } = await raw((socket) => void socket.write(text));
      const err = await rejection(client().request(url(port), "GET", {}, ""));
      assert.equal(err.code, code, text.slice(0, 40));
    }
  });

  it("must not send a header, method or path with a control character (no header injection)", async () => {
    const { port, connections } = await echo();
    const c = client();
    await assert.rejects(c.request(url(port), "POST", { "x-a": "1\r\nx-injected: 1" }, ""), TypeError);
    await assert.rejects(c.request(url(port), "POST", { "bad name": "1" }, ""), TypeError);
    await assert.rejects(c.request(url(port), "GET\r\n", {}, ""), TypeError);
    assert.equal(connections.length, 0);
  });

  it("speaks TLS to an https origin and verifies the server's certificate", async () => {
    const cert = fs.readFileSync(path.join(TLS_DIR, "localhost.crt"));
    const { port } = await listen(https.createServer({ cert, key: fs.readFileSync(path.join(TLS_DIR, "localhost.key")) }, (_req, res) => res.end("secure")));
    const answer = await client({ tls: { ca: cert } }).request(new URL(`https://localhost:${port}/`), "GET", {}, "");
    assert.equal(answer.body, "secure");
    const err = await rejection(client().request(new URL(`https://localhost:${port}/`), "GET", {}, ""));
    assert.match(String(err.code), /SELF_SIGNED|UNABLE_TO_VERIFY/);
    const wrongName = await rejection(client({ tls: { ca: cert, servername: "example.com" } }).request(new URL(`https://localhost:${port}/`), "GET", {}, ""));
    assert.equal(wrongName.code, "ERR_TLS_CERT_ALTNAME_INVALID");
  });
});
