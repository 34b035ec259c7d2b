/**
 * A lean HTTP/1.1 path beside Node's HTTP server, for the local stack's busiest requests: the
 * functions' @connections posts, one per recipient of every message.
 *
 * Why: Node's HTTP server costs about 40 µs of CPU per such request (an IncomingMessage and a
 * ServerResponse, both streams, per request), against about 15 µs for reading the head and writing
 * the answer on the socket directly (Node 22, 60,000 keep-alive POSTs of a signed post's size, 16
 * in flight, a client in another process). In a room of 100 at 25 messages a second the stack's
 * process spent 12 ms of CPU per message, mostly on those posts (issue 10's stage table).
 *
 * How: each new connection is looked at by its first request line. A request the route accepts is
 * read and answered here; the first one it does not (a page, a WebSocket upgrade, the Lambda API),
 * or anything this reader leaves to Node (chunked bodies, `Expect`, a repeated or folded header, a
 * head over 64 KB, HTTP/1.0), hands the connection to Node's HTTP server at that request, with the
 * bytes read so far put back: Node then serves the connection as if it had read it from the start.
 */
import type { IncomingHttpHeaders, Server } from "http";
import { STATUS_CODES } from "http";
import type { Socket } from "net";
import { holdWrites, releaseWrites } from "./write-batch";

export interface LeanRequest {
  method: string;
  /** The request target as sent (path and query). */
  url: string;
  /** Lower-case names, as Node gives them. */
  headers: IncomingHttpHeaders;
  body: Buffer;
}

export interface LeanAnswer {
  status: number;
  headers: Record<string, string>;
  body: string;
}

export interface LeanRoute {
  /** Whether a request with this request line is served here (decided before its headers are read). */
  accepts(method: string, url: string): boolean;
  handle(request: LeanRequest): Promise<LeanAnswer>;
  /** Bodies larger than this are left to Node's server (which the route's Node handler answers). */
  maxBodyBytes: number;
}

export interface LeanRouter {
  /** Destroys the connections served here (Node's `closeAllConnections` does not see them). */
  closeAll(): void;
}

const MAX_HEAD_BYTES = 64 * 1024;
const HEADER_NAME = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/;
/** Headers whose presence means a request this reader does not frame itself. */
const LEFT_TO_NODE = ["transfer-encoding", "expect", "upgrade"];

/** The headers of a head (without its request line), or undefined for anything left to Node. */
function parseHeaders(text: string): IncomingHttpHeaders | undefined {
  const headers: Record<string, string> = Object.create(null);
  if (text === "") return headers;
  for (const line of text.split("\r\n")) {
    const colon = line.indexOf(":");
    if (colon < 1) return undefined; // a folded line or no name: Node answers it
    const name = line.slice(0, colon).toLowerCase();
    if (!HEADER_NAME.test(name) || name in headers || LEFT_TO_NODE.includes(name)) return undefined;
    headers[name] = line.slice(colon + 1).trim();
  }
  return headers;
}

/**
 * Routes new connections of `server` (call it once; before, every connection goes to Node's
 * server): those whose requests `route` accepts are served here with keep-alive for
 * `keepAliveMs` between requests, as Node's `keepAliveTimeout`.
 */
export function routeLeanConnections(server: Server, route: LeanRoute, keepAliveMs: number): LeanRouter {
  const nodeListeners = server.listeners("connection") as ((socket: Socket) => void)[];
  server.removeAllListeners("connection");
  const served = new Set<Socket>();
  // As Node writes it: no Keep-Alive header when its timeout rounds to 0 s.
  const keepAliveSeconds = Math.floor(keepAliveMs / 1000);
  const keepAlive = `Connection: keep-alive\r\n${keepAliveSeconds > 0 ? `Keep-Alive: timeout=${keepAliveSeconds}\r\n` : ""}`;
  const clock = { second: NaN, date: "" };
  const dateNow = () => {
    const second = Math.floor(Date.now() / 1000);
    if (second !== clock.second) Object.assign(clock, { second, date: new Date(second * 1000).toUTCString() });
    return clock.date;
  };

  function serve(socket: Socket) {
    let buffer: Buffer = Buffer.alloc(0);
    let busy = false;
    /** The request being answered asked to close the connection (`Connection: close`). */
    let closing = false;
    let ended = false;
    served.add(socket);
    socket.setNoDelay(true);
    const onData = (chunk: Buffer) => {
      buffer = buffer.length ? Buffer.concat([buffer, chunk]) : chunk;
      next();
    };
    // Idle for the keep-alive time between requests: closed (a slow answer is not idleness).
    const onIdle = () => {
      if (busy) return;
      releaseWrites(socket); // an answer held this turn leaves first
      socket.destroy();
    };
    // The sender half-closed (Node's server sockets allow that): what it sent is answered, then the
    // connection ends, as Node's server does.
    const onEnd = () => {
      ended = true;
      if (!busy) next();
      if (!busy) socket.end();
    };
    socket.setTimeout(keepAliveMs);
    socket.on("timeout", onIdle);
    socket.on("data", onData);
    socket.on("end", onEnd);
    socket.on("error", () => socket.destroy());
    socket.on("close", () => served.delete(socket));

    /** Gives the connection to Node's server at the request that starts `buffer`. */
    const handOff = () => {
      releaseWrites(socket); // the answers held so far leave before anything Node's server writes or destroys
      socket.off("data", onData);
      socket.off("end", onEnd);
      socket.off("timeout", onIdle);
      socket.setTimeout(0);
      served.delete(socket);
      // Bytes cannot be put back after the end of the stream: such a request is not answered.
      if (ended) return void socket.destroy();
      socket.pause();
      if (buffer.length) socket.unshift(buffer);
      for (const listener of nodeListeners) listener.call(server, socket);
      socket.resume();
    };

    const answer = (reply: LeanAnswer) => {
      const last = closing || (ended && buffer.length === 0);
      let head = `HTTP/1.1 ${reply.status} ${STATUS_CODES[reply.status] ?? ""}\r\n`;
      for (const name in reply.headers) head += `${name}: ${reply.headers[name]}\r\n`;
      // 204 and 304 carry no body and no length, as Node writes them.
      if (reply.status !== 204 && reply.status !== 304) head += `Content-Length: ${Buffer.byteLength(reply.body)}\r\n`;
      head += `Date: ${dateNow()}\r\n${last ? "Connection: close\r\n" : keepAlive}\r\n`;
      holdWrites(socket); // answers to a batch of posts leave together (write-batch.ts)
      socket.write(reply.status === 204 || reply.status === 304 ? head : head + reply.body);
      if (last) socket.end();
    };

    /** Serves the complete requests in `buffer`, one at a time (answers go out in order). */
    function next(): void {
      while (!busy && !closing && buffer.length > 0) {
        const lineEnd = buffer.indexOf("\r\n");
        if (lineEnd < 0) return void (buffer.length > MAX_HEAD_BYTES && handOff());
        const [method, url, version, extra] = buffer.toString("latin1", 0, lineEnd).split(" ");
        if (extra !== undefined || version !== "HTTP/1.1" || !route.accepts(method, url)) return handOff();
        const headEnd = buffer.indexOf("\r\n\r\n", lineEnd);
        if (headEnd < 0) return void (buffer.length > MAX_HEAD_BYTES && handOff());
        const headers = parseHeaders(buffer.toString("latin1", lineEnd + 2, headEnd));
        if (!headers || headers.host === undefined) return handOff(); // without Host, Node answers 400
        const lengthText = String(headers["content-length"] ?? "0");
        const length = /^\d{1,9}$/.test(lengthText) ? Number(lengthText) : NaN;
        if (!(length <= route.maxBodyBytes)) return handOff();
        const bodyStart = headEnd + 4;
        if (buffer.length < bodyStart + length) return; // the rest of the body is on its way
        const body = buffer.subarray(bodyStart, bodyStart + length);
        buffer = buffer.subarray(bodyStart + length);
        busy = true;
        closing = String(headers.connection ?? "").toLowerCase().split(",").some((option) => option.trim() === "close");
        route
          .handle({ method, url, headers, body })
          .catch((err: Error) => ({ status: 500, headers: { "Content-Type": "text/plain" }, body: `local stack error: ${err.message}` }))
          .then((reply) => {
            busy = false;
            if (socket.destroyed) return;
            answer(reply);
            next();
          });
      }
    }
  }

  server.on("connection", serve);
  return {
    closeAll() {
      for (const socket of served) socket.destroy();
      served.clear();
    },
  };
}
