/**
 * The WebSocket API emulator: API Gateway's WebSocket behaviour on a local `ws` server, following
 * ../shared/docs/apigw-websocket.md. Choices where AWS's behaviour is unconfirmed are marked (?).
 */
import type { IncomingMessage, Server, ServerResponse } from "http";
import type { Duplex } from "stream";
import { WebSocket, WebSocketServer } from "ws";
import { holdWrites } from "./write-batch";
import { API_FRAME_BYTES, API_MESSAGE_BYTES } from "../handlers/shared/protocol";
import { ApiFacts, awsId, ConnectionFacts, connectEvent, disconnectEvent, messageEvent, RawRequest, selectRouteValue } from "./events";
import { policyAllows } from "./iam";
import type { InvokeOutcome } from "./lambda";

export interface RouteAuthorizer {
  functionName: string;
  /** `route.request.querystring.X` or `route.request.header.X`. */
  identitySources: string[];
  invoke(event: unknown): Promise<InvokeOutcome>;
}

export interface RouteTarget {
  routeKey: string;
  functionName: string;
  /** A REQUEST authorizer that runs before the route ($connect only). */
  authorizer?: RouteAuthorizer;
  /** True when the route has a `$default` route response: the Lambda's body goes back to the client. */
  twoWay: boolean;
  invoke(event: unknown): Promise<InvokeOutcome>;
}

export interface GatewayOptions {
  api: ApiFacts;
  /** `arn:aws:execute-api:{region}:{account}:{apiId}/{stage}`: authorizers get `${this}/$connect`. */
  methodArnPrefix?: string;
  routeSelectionExpression: string;
  routes: RouteTarget[];
  idleTimeoutMs?: number;
  maxDurationMs?: number;
  /**
   * Fault injection: when a client vanishes without a close frame (1006), do not run $disconnect,
   * as happens on AWS when the network drops. Leaves a stale record for the next broadcast to find.
   */
  loseAbnormalDisconnects?: boolean;
  log?: (line: string) => void;
}

export interface Connection extends ConnectionFacts {
  state: "connecting" | "open" | "closed";
  socket?: WebSocket;
  /** The TCP connection under `socket`. */
  raw?: Duplex;
  lastActiveAt: number;
  /** The status and reason that $disconnect will report, when the gateway itself closed the socket. */
  closing?: { code: number; reason: string };
}

export interface Gateway {
  connections: Map<string, Connection>;
  /** Closes one connection from the server side (DeleteConnection, timeouts). */
  disconnect(connectionId: string, code: number, reason: string): void;
  /** Sends a text frame (a Buffer holds its UTF-8) to an open connection; refreshes its idle timer. */
  send(connectionId: string, data: string | Buffer): boolean;
  /** From now on a new connection is refused with 503 (the stop's first step); open ones carry on. */
  stopAccepting(): void;
  /**
   * Refuses new connections, closes every open one with 1001 "Going away", and waits (up to
   * `timeoutMs`, default 5 s) for their `$disconnect` and for handshakes still under way; what is
   * left then is cut off.
   */
  close(timeoutMs?: number): Promise<void>;
}

/** ws error codes → the close status the client received. 1007 for invalid UTF-8 is RFC 6455's (?). */
const PROTOCOL_CLOSES: Record<string, { code: number; reason: string }> = {
  WS_ERR_UNSUPPORTED_MESSAGE_LENGTH: { code: 1009, reason: "Message too big" },
  WS_ERR_INVALID_UTF8: { code: 1007, reason: "Invalid frame payload data" },
};

const DEFAULT_IDLE_MS = 10 * 60 * 1000;
const DEFAULT_MAX_DURATION_MS = 2 * 60 * 60 * 1000;
const CLOSE_TIMEOUT_MS = 5_000;

const STATUS_TEXT: Record<number, string> = {
  400: "Bad Request",
  401: "Unauthorized",
  403: "Forbidden",
  429: "Too Many Requests",
  500: "Internal Server Error",
  502: "Bad Gateway",
  503: "Service Unavailable",
};

/** Answers an upgrade request with an HTTP status instead of the 101, and ends the socket. */
export function refuseUpgrade(socket: Duplex, status: number, body = "", headers: Record<string, string> = {}): void {
  const lines = [`HTTP/1.1 ${status} ${STATUS_TEXT[status] ?? "Error"}`, "Connection: close", `Content-Length: ${Buffer.byteLength(body)}`];
  for (const [k, v] of Object.entries(headers)) lines.push(`${k}: ${v}`);
  socket.end(`${lines.join("\r\n")}\r\n\r\n${body}`);
}

/**
 * Calls `tooBig` on the first data frame (text, binary or continuation) whose payload is over
 * `maxFrameBytes`, as soon as its header arrives, with the number of whole messages that came
 * before it (those still go to their routes). `ws` limits only whole messages (maxPayload counts
 * the fragments together), so each frame's header is read here, from the same bytes `ws` reads;
 * this listener goes first (prependListener). Frame layout: RFC 6455, section 5.2.
 */
export function watchFrameSizes(raw: Duplex, maxFrameBytes: number, tooBig: (bytes: number, messagesBefore: number) => void): void {
  const header = Buffer.alloc(14); // the longest header: 2 + 8 (64-bit length) + 4 (mask)
  let held = 0; // header bytes held from earlier chunks
  let skip = 0; // payload bytes of the current frame still to come
  let messages = 0; // data frames with FIN set: messages complete
  const scan = (chunk: Buffer) => {
    for (let at = 0; at < chunk.length; ) {
      if (skip > 0) {
        const n = Math.min(skip, chunk.length - at);
        skip -= n;
        at += n;
        continue;
      }
      const copied = chunk.copy(header, held, at, at + Math.max(0, (held < 2 ? 2 : headerLength(header)) - held));
      held += copied;
      at += copied;
      if (held < 2 || held < headerLength(header)) continue;
      const opcode = header[0] & 0x0f;
      const code = header[1] & 0x7f;
      const length = code === 126 ? header.readUInt16BE(2) : code === 127 ? Number(header.readBigUInt64BE(2)) : code;
      held = 0;
      skip = length;
      if (opcode > 0x2) continue; // a control frame (close, ping, pong)
      if (length > maxFrameBytes) {
        raw.removeListener("data", scan);
        return tooBig(length, messages);
      }
      if (header[0] & 0x80) messages++;
    }
  };
  raw.prependListener("data", scan);
}

/** The length of a frame's header from its first two bytes: extended length and mask key included. */
function headerLength(header: Buffer): number {
  const code = header[1] & 0x7f;
  return 2 + (code === 126 ? 2 : code === 127 ? 8 : 0) + (header[1] & 0x80 ? 4 : 0);
}

/** Waits until every promise in `pending` (which may grow meanwhile) has settled, or the deadline passes. */
async function settle(pending: Set<Promise<unknown>>, timeoutMs: number): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<void>((resolve) => (timer = setTimeout(resolve, timeoutMs)));
  let expired = false;
  void deadline.then(() => (expired = true));
  while (pending.size > 0 && !expired) await Promise.race([Promise.allSettled([...pending]), deadline]);
  clearTimeout(timer);
}

export function createGateway(server: Server, options: GatewayOptions): Gateway {
  const log = options.log ?? ((line: string) => console.log(line));
  const routes = new Map(options.routes.map((r) => [r.routeKey, r]));
  const connections = new Map<string, Connection>();
  const timers = new Map<string, { idle?: NodeJS.Timeout; max?: NodeJS.Timeout }>();
  const wss = new WebSocketServer({ noServer: true, maxPayload: API_MESSAGE_BYTES });
  const idleMs = options.idleTimeoutMs ?? DEFAULT_IDLE_MS;
  const stagePath = `/${options.api.stage}`;
  /** Handshakes under way, sockets closing and `$disconnect`s running: what close() waits for. */
  const settling = new Set<Promise<unknown>>();
  let accepting = true;
  let closing = false;

  function track<T>(promise: Promise<T>): Promise<T> {
    settling.add(promise);
    void promise.finally(() => settling.delete(promise)).catch(() => undefined);
    return promise;
  }

  async function run(route: RouteTarget, conn: Connection, event: unknown): Promise<InvokeOutcome> {
    const outcome = await route.invoke(event);
    if (outcome.cancelled) return outcome; // the stack is stopping: not the function's failure, nothing to log
    const status = outcome.error
      ? `error ${outcome.error.errorType}`
      : String((outcome.result as { statusCode?: number } | null)?.statusCode ?? "-");
    log(`[gateway] ${route.routeKey} ${conn.connectionId} ${route.functionName} ${Math.round(outcome.durationMs)}ms ${status}${outcome.coldStart ? " (cold)" : ""}`);
    return outcome;
  }

  function touch(conn: Connection) {
    conn.lastActiveAt = Date.now();
    const t = timers.get(conn.connectionId);
    if (!t) return;
    // Restarted in place: every post touches its connection, and a new timer per post was churn.
    if (t.idle) t.idle.refresh();
    else t.idle = setTimeout(() => disconnect(conn.connectionId, 1001, "Going away"), idleMs);
  }

  function disconnect(connectionId: string, code: number, reason: string) {
    const conn = connections.get(connectionId);
    if (!conn?.socket || conn.state !== "open") return;
    conn.closing = { code, reason };
    conn.socket.close(code, reason);
  }

  function send(connectionId: string, data: string | Buffer): boolean {
    const conn = connections.get(connectionId);
    if (!conn?.socket || conn.state !== "open" || conn.socket.readyState !== WebSocket.OPEN) return false;
    if (conn.raw) holdWrites(conn.raw); // the frames of a batch of posts leave together (write-batch.ts)
    conn.socket.send(data, { binary: false });
    touch(conn);
    return true;
  }

  const refuse = refuseUpgrade;

  function onMessage(conn: Connection, data: Buffer, isBinary: boolean) {
    if (conn.closing) return; // the rest of a frame that closed it (1009), or a frame after a close: no route runs
    touch(conn);
    if (isBinary) {
      // API Gateway does not accept binary frames on a Lambda-proxied API: close 1003, no Lambda runs.
      disconnect(conn.connectionId, 1003, "Binary frames are not supported"); // reason text (?)
      return;
    }
    const body = data.toString("utf8");
    const selected = selectRouteValue(options.routeSelectionExpression, body);
    const route =
      (selected !== undefined && !selected.startsWith("$") ? routes.get(selected) : undefined) ?? routes.get("$default");
    if (!route) {
      send(conn.connectionId, JSON.stringify({ message: "Forbidden", connectionId: conn.connectionId, requestId: awsId() }));
      return;
    }
    const event = messageEvent(options.api, conn, route.routeKey, body);
    run(route, conn, event).then((outcome) => {
      if (outcome.cancelled) return;
      if (outcome.error) {
        send(conn.connectionId, JSON.stringify({ message: "Internal server error", connectionId: conn.connectionId, requestId: event.requestContext.requestId }));
      } else if (route.twoWay) {
        const body = (outcome.result as { body?: unknown } | null)?.body;
        if (typeof body === "string") send(conn.connectionId, body);
      }
    });
  }

  function onOpen(conn: Connection, socket: WebSocket) {
    conn.socket = socket;
    conn.state = "open";
    let closed!: () => void;
    track(new Promise<void>((resolve) => (closed = resolve)));
    let protocolClose: { code: number; reason: string } | undefined;
    timers.set(conn.connectionId, {
      max: setTimeout(() => disconnect(conn.connectionId, 1001, "Going away"), options.maxDurationMs ?? DEFAULT_MAX_DURATION_MS), // code (?)
    });
    touch(conn);
    // A frame over the quota closes the connection with 1009, as API Gateway does, once the
    // messages before it have gone to their routes; no route runs for it or after it. The reason
    // text is ours (?): API Gateway's is not documented.
    let received = 0;
    let closeAfter = Infinity;
    const tooBig = () => disconnect(conn.connectionId, 1009, "Message too big");
    if (conn.raw) {
      watchFrameSizes(conn.raw, API_FRAME_BYTES, (_bytes, messagesBefore) => {
        closeAfter = messagesBefore;
        if (received >= closeAfter) tooBig();
      });
    }
    socket.on("message", (data: Buffer, isBinary) => {
      onMessage(conn, data, isBinary);
      if (++received === closeAfter) tooBig();
    });
    socket.on("ping", () => touch(conn));
    socket.on("error", (err: Error & { code?: string }) => {
      // ws closes a protocol violation with its code (1009 too big, 1007 invalid UTF-8) but reports
      // 1006 on this side; record the code the client saw ourselves.
      protocolClose = PROTOCOL_CLOSES[err.code ?? ""] ?? protocolClose;
    });
    socket.on("close", (code, reasonBuffer) => {
      closed();
      conn.state = "closed";
      const t = timers.get(conn.connectionId);
      clearTimeout(t?.idle);
      clearTimeout(t?.max);
      timers.delete(conn.connectionId);
      connections.delete(conn.connectionId);
      let status = conn.closing ?? { code, reason: reasonBuffer.toString("utf8") };
      if (protocolClose) status = protocolClose;
      else if (!conn.closing && code === 1005) status = { code: 1005, reason: "Client-side close frame status not set" };
      else if (!conn.closing && code === 1006 && options.loseAbnormalDisconnects) {
        log(`[gateway] $disconnect ${conn.connectionId} lost (abnormal close, --lose-abnormal-disconnects)`);
        return;
      }
      const route = routes.get("$disconnect");
      if (route) track(run(route, conn, disconnectEvent(options.api, conn, status.code, status.reason)));
    });
    // A $connect that finished after the stop began: open, then close at once, so $disconnect runs.
    if (closing) disconnect(conn.connectionId, 1001, "Going away");
  }

  /**
   * Runs a REQUEST authorizer as the spec describes: a missing identity source answers 401 without
   * calling it; "Unauthorized" thrown answers 401; a Deny, or no Allow for methodArn, answers 403;
   * any other failure 500 (?). On Allow, `{principalId, ...context}` rides on every later event.
   */
  async function authorize(authorizer: RouteAuthorizer, conn: Connection, req: IncomingMessage, raw: RawRequest): Promise<{ status: number; message: string } | undefined> {
    for (const source of authorizer.identitySources) {
      const [, kind, name] = /^route\.request\.(querystring|header)\.(.+)$/.exec(source) ?? [];
      const value = kind === "querystring" ? raw.query.get(name) : kind === "header" ? req.headers[name.toLowerCase()] : undefined;
      if (!value) return { status: 401, message: "Unauthorized" };
    }
    const methodArn = `${options.methodArnPrefix ?? `arn:aws:execute-api:local:000000000000:${options.api.apiId}/${options.api.stage}`}/$connect`;
    const event = { ...connectEvent(options.api, conn, raw), type: "REQUEST", methodArn };
    const outcome = await authorizer.invoke(event);
    log(`[gateway] authorizer ${conn.connectionId} ${authorizer.functionName} ${Math.round(outcome.durationMs)}ms ${outcome.error ? `error ${outcome.error.errorMessage}` : "ok"}`);
    if (outcome.error) {
      return outcome.error.errorMessage === "Unauthorized" ? { status: 401, message: "Unauthorized" } : { status: 500, message: "Internal server error" };
    }
    const result = outcome.result as { principalId?: unknown; policyDocument?: Parameters<typeof policyAllows>[0]; context?: Record<string, unknown> } | null;
    if (!result || !policyAllows(result.policyDocument, "execute-api:Invoke", methodArn)) return { status: 403, message: "Forbidden" };
    conn.authorizer = {
      principalId: String(result.principalId ?? ""),
      ...Object.fromEntries(Object.entries(result.context ?? {}).map(([k, v]) => [k, String(v)])),
    };
    return undefined;
  }

  async function onUpgrade(req: IncomingMessage, socket: Duplex, head: Buffer) {
    if (!accepting) {
      // The stack is stopping: refused at once (a page reconnects later), before any Lambda runs.
      return refuse(socket, 503, JSON.stringify({ message: "The local stack is stopping" }), { "Content-Type": "application/json", "Retry-After": "1" });
    }
    const url = new URL(req.url ?? "/", "http://local");
    if (url.pathname !== stagePath && url.pathname !== `${stagePath}/`) {
      return refuse(socket, 403, JSON.stringify({ message: "Forbidden" }), { "Content-Type": "application/json" });
    }
    const conn: Connection = {
      connectionId: awsId(),
      connectedAt: Date.now(),
      sourceIp: req.socket.remoteAddress?.replace(/^::ffff:/, "") ?? "127.0.0.1",
      userAgent: req.headers["user-agent"],
      state: "connecting",
      lastActiveAt: Date.now(),
    };
    connections.set(conn.connectionId, conn); // @connections answers 410 while $connect runs
    let responseHeaders: Record<string, string> = {};
    const route = routes.get("$connect");
    const raw: RawRequest = { rawHeaders: req.rawHeaders, query: url.searchParams, hasQuery: url.search.length > 1, remotePort: req.socket.remotePort ?? 0 };
    if (route?.authorizer) {
      const refusal = await authorize(route.authorizer, conn, req, raw);
      if (refusal) {
        connections.delete(conn.connectionId);
        return refuse(socket, refusal.status, JSON.stringify({ message: refusal.message }), { "Content-Type": "application/json" });
      }
    }
    if (route) {
      const event = connectEvent(options.api, conn, raw);
      const outcome = await run(route, conn, event);
      const result = outcome.result as { statusCode?: unknown; headers?: Record<string, string>; body?: string } | null;
      const status = typeof result?.statusCode === "number" ? result.statusCode : undefined;
      if (outcome.error || status === undefined) {
        // A Lambda error, or a result with no status code (?), refuses the handshake with 502.
        connections.delete(conn.connectionId);
        return refuse(socket, 502, JSON.stringify({ message: "Internal server error" }), { "Content-Type": "application/json" });
      }
      if (status < 200 || status > 299) {
        connections.delete(conn.connectionId);
        // The Lambda's body is passed back with the refusal (?); wscat shows only the status.
        return refuse(socket, status, result?.body ?? "", result?.headers ?? {});
      }
      responseHeaders = result?.headers ?? {};
    }
    if (socket.destroyed) {
      connections.delete(conn.connectionId);
      return;
    }
    wss.once("headers", (headers) => {
      for (const [k, v] of Object.entries(responseHeaders)) headers.push(`${k}: ${v}`);
    });
    conn.raw = socket;
    wss.handleUpgrade(req, socket, head, (ws) => onOpen(conn, ws));
  }

  server.on("upgrade", (req, socket, head) => {
    track(
      onUpgrade(req, socket, head).catch((err) => {
        log(`[gateway] upgrade failed: ${(err as Error).stack}`);
        refuse(socket, 500);
      }),
    );
  });

  async function close(timeoutMs = CLOSE_TIMEOUT_MS) {
    accepting = false;
    closing = true;
    for (const conn of connections.values()) disconnect(conn.connectionId, 1001, "Going away");
    await settle(settling, timeoutMs);
    for (const conn of connections.values()) conn.socket?.terminate();
    for (const t of timers.values()) {
      clearTimeout(t.idle);
      clearTimeout(t.max);
    }
    await new Promise<void>((resolve) => wss.close(() => resolve()));
  }

  return {
    connections,
    disconnect,
    send,
    stopAccepting: () => void (accepting = false),
    close,
  };
}

/** Answers plain HTTP requests to the WebSocket URL: 426 on the stage path, 403 elsewhere. */
export function answerPlainRequest(stage: string, req: IncomingMessage, res: ServerResponse): void {
  const { pathname } = new URL(req.url ?? "/", "http://local");
  if (pathname === `/${stage}` || pathname === `/${stage}/`) {
    res.writeHead(426, { "Content-Type": "text/plain", Upgrade: "websocket", Connection: "Upgrade" });
    res.end("Upgrade Required");
    return;
  }
  res.writeHead(403, { "Content-Type": "application/json", "x-amzn-ErrorType": "ForbiddenException" });
  res.end(JSON.stringify({ message: "Forbidden" }));
}
