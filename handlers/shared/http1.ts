/**
 * A lean HTTP/1.1 client: a keep-alive pool of `net`/`tls` connections per origin, one request at
 * a time on each (no pipelining), for the calls made once per recipient (PostToConnection) and the
 * functions' DynamoDB calls. It sends a request as one write and reads the answer by
 * Content-Length, chunked transfer coding or connection close, as RFC 9112 section 6.3 orders them.
 *
 * Why not a kept client. Measured on Node 22, 20,000 POSTs to a local server, 16 in flight, CPU of
 * the client process per request (issue 10): `http.request` on a keep-alive Agent 76–84 µs; global
 * `fetch` 267–354 µs; undici 7.30 `Pool.request` 31–38 µs, but undici is 2.2 MB (520 KB zipped) in
 * every archive that posts, and requiring it takes 92–99 ms of each cold start; a bare socket
 * 20–25 µs; this client 26–38 µs. A room of 100 makes 99 posts per message, so the client's CPU is
 * most of a message's cost (README, "Room capacity").
 *
 * HTTP/1.1 only (ALPN offers nothing else): the SDK's default Node handler (NodeHttpHandler, over
 * `https.request`) speaks HTTP/1.1 to every endpoint used here, API Gateway's @connections,
 * DynamoDB and Lambda's Invoke. Certificates are verified against Node's trust store, as `https` does.
 *
 * Behaviour, each case tested in test/handlers/http1.test.ts:
 * - `maxSockets` connections per origin at most; further requests wait in order for a free one.
 * - An idle connection is reused (the most recent first) and retired after `idleMs` (30 s), or 1 s
 *   before the server's own `Keep-Alive: timeout`, whichever is sooner; a connection past that
 *   time is not taken even if its timer has not run (Lambda freezes the process between
 *   invocations). A request can still meet a connection the server has just closed: it then fails
 *   as a network error (no status). Idle connections do not keep the process alive. TLS sessions
 *   are resumed, as the https Agent does.
 * - A failure is marked `notSent` when the request never left whole: the connection could not be
 *   made (refused, unreachable, a TLS or connect timeout), or it failed before the socket reported
 *   the whole request written (its write callback; a request on a reused connection that the
 *   kernel refuses, or that the server cut off part-way). The server then cannot hold the whole
 *   request, so cannot have acted on it, and sending it again is safe even for a write that must
 *   apply at most once (dynamodb.ts resends those only then). A request written whole and not
 *   answered is not marked, even when the server had closed the connection just before it arrived:
 *   the client cannot tell that from a server that acted and then failed. Go's net/http draws the
 *   same line: it resends a non-idempotent request only when nothing was written
 *   (`nothingWrittenError` in https://github.com/golang/go/blob/master/src/net/http/transport.go).
 *   What callers do with other failures: a post is retried (broadcaster.ts; a repeat is dropped by
 *   its message id), a DynamoDB call is retried unless it must apply at most once (dynamodb.ts,
 *   docs/retries.md), a failed fan-out Invoke is delivered by its caller instead (fanout.ts).
 *   (?) 30 s is our choice: AWS does not document the idle timeout of these endpoints, and the
 *   SDK's Agent keeps idle sockets until the server closes them.
 * - `Connection: close` or an HTTP/1.0 answer ends the connection after the answer.
 * - Interim 1xx answers are skipped. A head over 64 KB, a bad status line or chunk size, or bytes
 *   after an answer fail the request and close the connection.
 * - `timeoutMs` bounds a request from its start, queueing included; it fails with `TimeoutError`,
 *   and a queued request past it never opens a connection.
 * - A header name or value, method or path with a control character is refused before sending.
 */
import * as net from "net";
import * as tls from "tls";

export interface Http1Response {
  status: number;
  /** Lower-case names; repeated headers joined with ", ". */
  headers: Record<string, string>;
  body: string;
}

export interface Http1Options {
  /** Connections per origin at most. */
  maxSockets: number;
  /** A request with no complete answer after this long fails with TimeoutError. */
  timeoutMs: number;
  /** An idle connection is closed after this long (default 4 s). */
  idleMs?: number;
  /** TLS settings for https origins (tests pass a CA); the system's trust store otherwise. */
  tls?: tls.ConnectionOptions;
}

export interface Http1Client {
  request(url: URL, method: string, headers: Record<string, string>, body: string): Promise<Http1Response>;
  /** Open connections per origin (`protocol//host`), for tests and diagnostics. */
  connections(): Record<string, { open: number; idle: number; queued: number }>;
  /** Closes every connection; queued and running requests fail. */
  close(): void;
}

/**
 * A request that failed without an answer: `code` is the socket error's (ECONNRESET …) or
 * TimeoutError; `notSent` when the request never left whole (see the module comment).
 */
export type Http1Error = Error & { code?: string; notSent?: boolean };

const MAX_HEAD_BYTES = 64 * 1024;

interface Job {
  head: string;
  body: string;
  resolve(response: Http1Response): void;
  reject(err: Http1Error): void;
  timer?: NodeJS.Timeout;
  /** Epoch ms after which the request has failed (`timeoutMs` from its start). */
  deadline: number;
  settled: boolean;
  /** The socket reported the whole request written (its write callback, without an error). */
  written: boolean;
}

interface Answer {
  status: number;
  headers: Record<string, string>;
  keepAlive: boolean;
  idleMs?: number;
  /** Content-Length, "chunked", or "close" (read to the end of the connection). */
  framing: number | "chunked" | "close";
}

interface Connection {
  socket: net.Socket;
  job?: Job;
  answer?: Answer;
  buffer: Buffer;
  parts: Buffer[];
  idleTimer?: NodeJS.Timeout;
  /** Epoch ms when an idle connection is retired. Checked when taken too: timers do not run while Lambda freezes the process. */
  expiresAt: number;
  closed: boolean;
}

interface Pool {
  /** `protocol//host`, the connections' address. */
  origin: URL;
  open: Connection[];
  idle: Connection[];
  queue: Job[];
  /** The last TLS session, to resume on the next connection (as the https Agent does). */
  session?: Buffer;
}

/**
 * Writing requests and reading answers. A factory, as is createHttp1Client, for the per-request
 * path of serialized code: the closure serializer puts each function inside a `with` block, where
 * a global or module-level name costs a dynamic lookup (aws-http.ts, createSigner), so the globals
 * and constants used per request are bound once here and the functions are its own.
 */
export function createCodec() {
  const { Error, TypeError, Object, Buffer, JSON, Number, Math, parseInt } = globalThis;
  const MAX_HEAD = MAX_HEAD_BYTES;
  const CONTROL = /[\0-\x1f\x7f]/;
  const CONTROL_BUT_TAB = /[\0-\x08\x0a-\x1f\x7f]/; // a header value may hold tabs (RFC 9110 5.5)

  function networkError(message: string, code: string): Http1Error {
    const err = new Error(message) as Http1Error;
    err.name = code === "TimeoutError" ? "TimeoutError" : "NetworkError";
    err.code = code;
    return err;
  }

  /** The request line and headers; Content-Length is added when absent. Refuses control characters. */
  function requestHead(url: URL, method: string, headers: Record<string, string>, body: string): string {
    const path = url.pathname + url.search;
    if (!/^[A-Z]+$/.test(method) || CONTROL.test(path) || path.includes(" ")) throw new TypeError(`invalid request line: ${method} ${path}`);
    let head = `${method} ${path} HTTP/1.1\r\n`;
    let hasHost = false;
    let hasLength = false;
    for (const name of Object.keys(headers)) {
      const value = headers[name];
      if (!/^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/.test(name) || CONTROL_BUT_TAB.test(value)) throw new TypeError(`invalid header: ${name}`);
      const lower = name.toLowerCase();
      if (lower === "host") hasHost = true;
      if (lower === "content-length") hasLength = true;
      head += `${name}: ${value}\r\n`;
    }
    if (!hasHost) head += `host: ${url.host}\r\n`;
    if (!hasLength && (body.length > 0 || method === "POST" || method === "PUT")) head += `content-length: ${Buffer.byteLength(body)}\r\n`;
    return head + "\r\n";
  }

  /** Parses a response head (without its blank line). Throws on a malformed one. */
  function parseHead(text: string): Answer {
    const lines = text.split("\r\n");
    const status = /^HTTP\/1\.([01]) (\d{3})(?: .*)?$/.exec(lines[0]);
    if (!status) throw networkError(`malformed status line: ${JSON.stringify(lines[0].slice(0, 100))}`, "HPE_INVALID_STATUS");
    const headers: Record<string, string> = Object.create(null);
    for (let i = 1; i < lines.length; i++) {
      const colon = lines[i].indexOf(":");
      // Obsolete line folding (a line starting with a space or tab) is refused, as RFC 9112 5.2 allows.
      if (colon <= 0 || lines[i][0] === " " || lines[i][0] === "\t") throw networkError(`malformed header line: ${JSON.stringify(lines[i].slice(0, 100))}`, "HPE_INVALID_HEADER_TOKEN");
      const name = lines[i].slice(0, colon).trim().toLowerCase();
      const value = lines[i].slice(colon + 1).trim();
      headers[name] = name in headers ? `${headers[name]}, ${value}` : value;
    }
    const code = Number(status[2]);
    const connection = (headers.connection ?? "").toLowerCase();
    const keepAlive = status[1] === "1" ? !/\bclose\b/.test(connection) : /\bkeep-alive\b/.test(connection);
    const serverTimeout = /\btimeout=(\d+)/.exec(headers["keep-alive"] ?? "");
    const idleMs = serverTimeout ? Math.max(0, Number(serverTimeout[1]) * 1000 - 1000) : undefined;
    let framing: Answer["framing"];
    if (code === 204 || code === 304 || code < 200) framing = 0; // never a body (RFC 9112 6.3, rule 1)
    else if (/\bchunked\s*$/i.test(headers["transfer-encoding"] ?? "")) framing = "chunked";
    else if (headers["content-length"] !== undefined) {
      if (!/^\d+$/.test(headers["content-length"])) throw networkError(`bad Content-Length: ${headers["content-length"]}`, "HPE_INVALID_CONTENT_LENGTH");
      framing = Number(headers["content-length"]);
    } else framing = "close";
    return { status: code, headers, keepAlive: keepAlive && framing !== "close", idleMs, framing };
  }

  /**
   * Consumes chunked body bytes from `c.buffer` into `c.parts`. Returns true once the last chunk
   * and any trailers are read; false when more bytes are needed.
   */
  function readChunks(c: Connection): boolean {
    let at = 0;
    const buffer = c.buffer;
    for (;;) {
      const eol = buffer.indexOf("\r\n", at);
      if (eol < 0) break;
      const size = /^([0-9A-Fa-f]{1,8})(?:[ \t]*;.*)?$/.exec(buffer.toString("latin1", at, eol));
      if (!size) throw networkError("malformed chunk size", "HPE_INVALID_CHUNK_SIZE");
      const length = parseInt(size[1], 16);
      if (length === 0) {
        // Trailers end with an empty line: right away ("0\r\n\r\n"), or after the trailer fields.
        const end = buffer.indexOf("\r\n\r\n", eol);
        if (end < 0) break;
        c.buffer = buffer.subarray(end + 4);
        return true;
      }
      if (buffer.length < eol + 2 + length + 2) break;
      if (buffer[eol + 2 + length] !== 13 || buffer[eol + 3 + length] !== 10) throw networkError("chunk not followed by CRLF", "HPE_INVALID_CHUNK_SIZE");
      c.parts.push(buffer.subarray(eol + 2, eol + 2 + length));
      at = eol + 2 + length + 2;
    }
    c.buffer = buffer.subarray(at);
    return false;
  }

  /** Reads what has arrived; returns the response once complete. Throws on a protocol error. */
  function readAnswer(c: Connection): Http1Response | undefined {
    while (!c.answer) {
      const end = c.buffer.indexOf("\r\n\r\n");
      if (end < 0) {
        if (c.buffer.length > MAX_HEAD) throw networkError("response head over 64 KB", "HPE_HEADER_OVERFLOW");
        return undefined;
      }
      const answer = parseHead(c.buffer.toString("latin1", 0, end));
      c.buffer = c.buffer.subarray(end + 4);
      if (answer.status >= 200 || answer.status === 101) c.answer = answer; // 1xx: interim, skipped
    }
    const { framing } = c.answer;
    if (framing === "close") {
      c.parts.push(c.buffer);
      c.buffer = Buffer.alloc(0);
      return undefined; // completed by the end of the connection
    }
    if (framing === "chunked") {
      if (!readChunks(c)) return undefined;
    } else {
      if (c.buffer.length < framing) return undefined;
      c.parts.push(c.buffer.subarray(0, framing));
      c.buffer = c.buffer.subarray(framing);
    }
    if (c.buffer.length > 0) throw networkError("bytes after the response", "HPE_UNEXPECTED_CONTENT");
    return responseOf(c);
  }

  /** The response read so far on `c`: its head, and the body parts joined. */
  function responseOf(c: Connection): Http1Response {
    return { status: c.answer!.status, headers: c.answer!.headers, body: Buffer.concat(c.parts).toString("utf8") };
  }

  return { networkError, requestHead, parseHead, readAnswer, responseOf };
}

/** A keep-alive HTTP/1.1 client; see the module comment. */
export function createHttp1Client(options: Http1Options): Http1Client {
  const { Buffer, Math, Object, Promise, setTimeout, clearTimeout, URL, Number, TypeError, Date } = globalThis;
  const { networkError, requestHead, readAnswer, responseOf } = createCodec();
  const connectTcp = net.connect;
  const connectTls = tls.connect;
  const isIP = net.isIP;
  const pools: Record<string, Pool> = {};
  const readBuffer = Buffer.allocUnsafe(64 * 1024);
  const idleMs = options.idleMs ?? 30_000;

  const settle = (job: Job | undefined, err: Http1Error | undefined, response?: Http1Response) => {
    if (!job || job.settled) return;
    job.settled = true;
    clearTimeout(job.timer);
    if (err) {
      if (!job.written) err.notSent = true;
      job.reject(err);
    } else job.resolve(response!);
  };

  // Assigned below: `drop` and `next` call each other (through `connect`). Declared first because
  // the closure serializer resolves names in source order and fails on a later `const`.
  let next: (pool: Pool) => void;

  const drop = (pool: Pool, c: Connection, err: Http1Error) => {
    if (c.closed) return;
    c.closed = true;
    clearTimeout(c.idleTimer);
    pool.open.splice(pool.open.indexOf(c), 1);
    const idle = pool.idle.indexOf(c);
    if (idle >= 0) pool.idle.splice(idle, 1);
    c.socket.destroy();
    settle(c.job, err);
    c.job = undefined;
    next(pool);
  };

  const run = (c: Connection, job: Job) => {
    clearTimeout(c.idleTimer);
    c.socket.ref();
    Object.assign(c, { job, answer: undefined, parts: [] });
    // The callback runs once the kernel has taken every byte (net), or every encrypted byte (tls),
    // before any later event of the socket; a connection not made yet holds the bytes until it is.
    c.socket.write(job.head + job.body, (err) => {
      if (!err) job.written = true;
    });
  };

  const queueTimeout = (pool: Pool) => networkError(`no free connection to ${pool.origin.host} in ${options.timeoutMs} ms`, "TimeoutError");

  /** The next queued request still within its time; expired ones fail here instead of starting. */
  const takeJob = (pool: Pool): Job | undefined => {
    for (let job = pool.queue.shift(); job; job = pool.queue.shift()) {
      if (job.settled) continue;
      if (Date.now() < job.deadline) return job;
      settle(job, queueTimeout(pool));
    }
    return undefined;
  };

  /** The most recently used idle connection that has not expired; expired ones are closed. */
  const takeIdle = (pool: Pool): Connection | undefined => {
    for (let c = pool.idle.pop(); c; c = pool.idle.pop()) {
      if (Date.now() < c.expiresAt) return c;
      drop(pool, c, networkError("idle connection retired", "IDLE"));
    }
    return undefined;
  };

  const release = (pool: Pool, c: Connection, keepFor: number) => {
    c.job = undefined;
    const waiting = takeJob(pool);
    if (waiting) return run(c, waiting);
    c.socket.unref();
    c.expiresAt = Date.now() + keepFor;
    pool.idle.push(c);
    c.idleTimer = setTimeout(() => drop(pool, c, networkError("idle connection retired", "IDLE")), keepFor);
    c.idleTimer.unref();
  };

  const onData = (pool: Pool, c: Connection, data: Buffer) => {
    if (!c.job) return drop(pool, c, networkError("data on an idle connection", "HPE_UNEXPECTED_CONTENT"));
    c.buffer = c.buffer.length ? Buffer.concat([c.buffer, data]) : data;
    let response: Http1Response | undefined;
    try {
      response = readAnswer(c);
    } catch (err) {
      return drop(pool, c, err as Http1Error);
    }
    if (!response) return;
    const answer = c.answer!;
    settle(c.job, undefined, response);
    if (!answer.keepAlive) return drop(pool, c, networkError("closed after the answer", "CLOSED"));
    release(pool, c, Math.min(idleMs, answer.idleMs ?? idleMs));
  };

  const onEnd = (pool: Pool, c: Connection) => {
    if (c.job && c.answer?.framing === "close") settle(c.job, undefined, responseOf(c));
    drop(pool, c, networkError("connection closed before the answer was complete", "ECONNRESET"));
  };

  const connect = (pool: Pool): Connection => {
    const origin = pool.origin;
    const port = Number(origin.port || (origin.protocol === "https:" ? 443 : 80));
    const host = origin.hostname.replace(/^\[|\]$/g, "");
    // Reads land in the client's one buffer and reach onData without the stream machinery (a
    // 'data' event per read cost a few µs, per request); what is kept of them is copied first.
    // TLS sockets take `onread` too (nodejs/node#35753), though @types/node lists it for net only.
    let c!: Connection; // before the callback that uses it: the closure serializer resolves names in source order
    const onread = {
      buffer: readBuffer,
      callback: (length: number, buffer: Uint8Array) => {
        onData(pool, c, Buffer.from(buffer.subarray(0, length)));
        return true; // false would pause the socket
      },
    };
    const tlsOnread = { onread } as tls.ConnectionOptions;
    const socket =
      origin.protocol === "https:"
        ? connectTls({ host, port, servername: isIP(host) ? undefined : host, ALPNProtocols: ["http/1.1"], session: pool.session, ...tlsOnread, ...options.tls })
        : connectTcp({ host, port, onread });
    socket.setNoDelay(true);
    if (origin.protocol === "https:") socket.on("session", (session: Buffer) => (pool.session = session));
    c = { socket, buffer: Buffer.alloc(0), parts: [], expiresAt: 0, closed: false };
    socket.on("end", () => onEnd(pool, c));
    socket.on("error", (err: NodeJS.ErrnoException) => drop(pool, c, networkError(err.message, err.code ?? "NetworkError")));
    socket.on("close", () => drop(pool, c, networkError("connection closed", "ECONNRESET")));
    pool.open.push(c);
    return c;
  };

  /** Runs a job on a new connection; a connection that cannot even be made (bad TLS options) fails the job. */
  const start = (pool: Pool, job: Job) => {
    try {
      run(connect(pool), job);
    } catch (err) {
      settle(job, networkError((err as Error).message, (err as NodeJS.ErrnoException).code ?? "NetworkError"));
    }
  };

  /** Starts queued jobs while connections can be opened (after one closed). */
  next = (pool: Pool) => {
    while (pool.open.length < options.maxSockets) {
      const job = takeJob(pool);
      if (!job) return;
      start(pool, job);
    }
  };


  const request: Http1Client["request"] = (url, method, headers, body) => {
    if (url.protocol !== "http:" && url.protocol !== "https:") return Promise.reject(new TypeError(`unsupported protocol ${url.protocol}`));
    let head: string;
    try {
      head = requestHead(url, method, headers, body);
    } catch (err) {
      return Promise.reject(err);
    }
    const key = `${url.protocol}//${url.host}`;
    const pool = (pools[key] ??= { origin: new URL(key), open: [], idle: [], queue: [] });
    return new Promise<Http1Response>((resolve, reject) => {
      const job: Job = { head, body, resolve, reject, deadline: Date.now() + options.timeoutMs, settled: false, written: false };
      job.timer = setTimeout(() => {
        const holder = pool.open.find((c) => c.job === job);
        if (holder) return drop(pool, holder, networkError(`no answer from ${url.host} in ${options.timeoutMs} ms`, "TimeoutError"));
        const queued = pool.queue.indexOf(job);
        if (queued >= 0) pool.queue.splice(queued, 1);
        settle(job, queueTimeout(pool));
      }, options.timeoutMs);
      const idle = takeIdle(pool);
      if (idle) run(idle, job);
      else if (pool.open.length < options.maxSockets) start(pool, job);
      else pool.queue.push(job);
    });
  };

  return {
    request,
    connections: () => Object.fromEntries(Object.entries(pools).map(([key, p]) => [key, { open: p.open.length, idle: p.idle.length, queued: p.queue.length }])),
    close() {
      for (const pool of Object.values(pools)) {
        for (const job of pool.queue.splice(0)) settle(job, networkError("client closed", "CLOSED"));
        for (const c of [...pool.open]) drop(pool, c, networkError("client closed", "CLOSED"));
      }
    },
  };
}
