/**
 * The @connections management API: POST, GET and DELETE on /{stage}/@connections/{id}, with
 * API Gateway's status codes, the `x-amzn-ErrorType` header and JSON bodies, so the unmodified
 * AWS SDK v3 client raises a real GoneException, PayloadTooLargeException, and so on.
 * With `iam`, each call's SigV4 signature is verified and `execute-api:ManageConnections` is
 * authorized on the connection's ARN first (local/iam.ts); without it (`--no-iam`), both are skipped.
 * The functions' requests are read and answered on the lean path (lean-http.ts, leanManagementRoute);
 * whatever that path leaves to Node's HTTP server gets the same answers from handleManagementRequest.
 */
import { isUtf8 } from "buffer";
import type { IncomingHttpHeaders, IncomingMessage, ServerResponse } from "http";
import { API_MESSAGE_BYTES } from "../handlers/shared/protocol";
import { Gateway } from "./gateway";
import { guard, IamConfig } from "./iam";
import type { LeanAnswer, LeanRoute } from "./lean-http";

export interface ManagementOptions {
  stage: string;
  gateway: Gateway;
  /** Added before every answer, standing in for the network between Lambda and API Gateway. */
  latencyMs?: number;
  /** Fault injection: the share of calls answered 429 (LimitExceededException) and 500 instead. */
  faults?: ManagementFaults;
  /** Calls answered so far, per method (for the cost benchmark). */
  calls?: Record<string, number>;
  log?: (line: string) => void;
  /** Verify signatures and authorize `execute-api:ManageConnections` on the exact connection ARN (local/iam.ts). */
  iam?: { config: IamConfig; apiId: string };
}

export interface ManagementFaults {
  throttled: number;
  failed: number;
}

/** Parses `429=0.2,500=0.1` (shares from 0 to 1, summing to at most 1). */
export function parseFaults(text: string): ManagementFaults {
  const faults: ManagementFaults = { throttled: 0, failed: 0 };
  for (const part of text.split(",").map((p) => p.trim()).filter(Boolean)) {
    const [status, share] = part.split("=");
    const value = Number(share);
    if (!["429", "500"].includes(status) || !(value >= 0 && value <= 1)) {
      throw new Error(`--management-faults takes 429=<share>,500=<share> with shares from 0 to 1; got "${part}"`);
    }
    if (status === "429") faults.throttled = value;
    else faults.failed = value;
  }
  if (faults.throttled + faults.failed > 1) throw new Error("--management-faults shares add up to more than 1");
  return faults;
}

const CONNECTION_ID = /^[A-Za-z0-9_=-]{1,128}$/;
/** A path URL parsing leaves as it is, unless it has a dot segment or an empty one (below). */
const PLAIN_PATH = /^\/(?:[A-Za-z0-9_=@.\/-]|%[0-9A-Fa-f]{2})*$/;
const DOT_OR_EMPTY_SEGMENT = /\/(?:\.|%2e)|\/\//i;
/** Bodies up to this size are read whole, to check their signature; larger ones are only answered 413. */
const MAX_SIGNED_BODY_BYTES = 8 * API_MESSAGE_BYTES;

/** An answer of the management API: status, headers and body. */
export type ManagementAnswer = LeanAnswer;

/** The connection id a request names when `url` is the management API's, else undefined. */
export function managementConnectionId(stage: string, url: string): string | undefined {
  const prefix = `/${stage}/@connections/`;
  // The functions' posts name a plain path (the id's "=" escaped), which URL parsing leaves as it
  // is: not parsed, a post per recipient. Anything else (dot segments, "//", a query, characters
  // URL parsing escapes) is parsed first, as any path was before.
  const encoded = PLAIN_PATH.test(url) && !DOT_OR_EMPTY_SEGMENT.test(url) ? url : new URL(url, "http://local").pathname;
  let pathname = encoded;
  try {
    pathname = decodeURIComponent(encoded);
  } catch {
    // a malformed escape: the raw path, whose id then fails CONNECTION_ID (400)
  }
  return pathname.startsWith(prefix) ? pathname.slice(prefix.length) : undefined;
}

/** Answers one management request (its body read whole, or up to MAX_SIGNED_BODY_BYTES of `size`). */
export async function answerManagement(options: ManagementOptions, request: { method: string; url: string; headers: IncomingHttpHeaders; body: Buffer; size: number }, connectionId: string): Promise<ManagementAnswer> {
  const { method, body, size } = request;
  if (options.iam && size <= MAX_SIGNED_BODY_BYTES) {
    const { config, apiId } = options.iam;
    const arn = `arn:aws:execute-api:${config.region}:${config.account}:${apiId}/${options.stage}/${method}/@connections/${connectionId}`;
    const refused = await guard(config, { method, url: request.url, headers: request.headers, body, service: "execute-api" }, () => [["execute-api:ManageConnections", arn]]);
    if (refused) {
      options.log?.(`[management] ${method} ${connectionId} refused: ${refused.body}`);
      return refused;
    }
  }
  if (options.calls) options.calls[method] = (options.calls[method] ?? 0) + 1;
  if (options.latencyMs) await new Promise((resolve) => setTimeout(resolve, options.latencyMs));
  return respond(options, method, connectionId, body, size);
}

/** The management API on Node's HTTP server; returns true when the request was its (and has been answered). */
export function handleManagementRequest(options: ManagementOptions, req: IncomingMessage, res: ServerResponse): boolean {
  const connectionId = managementConnectionId(options.stage, req.url ?? "/");
  if (connectionId === undefined) return false;
  const chunks: Buffer[] = [];
  let size = 0;
  req.on("data", (chunk: Buffer) => {
    size += chunk.length;
    // Kept whole up to a bound (the signature covers the whole body); an oversized one is refused as 413 anyway.
    if (size <= MAX_SIGNED_BODY_BYTES) chunks.push(chunk);
  });
  req.on("end", () => {
    const request = { method: req.method ?? "GET", url: req.url ?? "/", headers: req.headers, body: Buffer.concat(chunks), size };
    const failed = (err: Error): ManagementAnswer => ({ status: 500, headers: { "Content-Type": "text/plain" }, body: `local stack error: ${err.message}` });
    void answerManagement(options, request, connectionId).catch(failed).then((answer) => {
      const length = answer.status === 204 ? {} : { "Content-Length": String(Buffer.byteLength(answer.body)) };
      res.writeHead(answer.status, { ...answer.headers, ...length });
      res.end(answer.body);
    });
  });
  return true;
}

/**
 * The management API on the lean path (lean-http.ts): the functions' posts, read and answered
 * without Node's HTTP server. The same answers as handleManagementRequest, which serves whatever
 * the lean path leaves to Node.
 */
export function leanManagementRoute(options: ManagementOptions): LeanRoute {
  const prefix = `/${options.stage}/@connections/`;
  return {
    // The API's three methods; any other (HEAD, whose answer has no body) is Node's server's to answer.
    accepts: (method, url) => (method === "POST" || method === "GET" || method === "DELETE") && url.startsWith(prefix),
    maxBodyBytes: MAX_SIGNED_BODY_BYTES,
    handle: (request) => answerManagement(options, { ...request, size: request.body.length }, managementConnectionId(options.stage, request.url) ?? ""),
  };
}

const error = (status: number, type: string, message: string): ManagementAnswer => ({
  status,
  headers: { "Content-Type": "application/json", "x-amzn-ErrorType": type, "x-amzn-RequestId": crypto.randomUUID() },
  body: JSON.stringify({ message }),
});

function respond(options: ManagementOptions, method: string, connectionId: string, body: Buffer, size: number): ManagementAnswer {
  if (options.faults) {
    const roll = Math.random();
    const injected = roll < options.faults.throttled ? 429 : roll < options.faults.throttled + options.faults.failed ? 500 : undefined;
    if (injected) {
      options.log?.(`[management] ${method} ${connectionId} answered ${injected} (injected fault)`);
      return injected === 429 ? error(429, "LimitExceededException", "Rate exceeded (injected)") : error(500, "InternalServerErrorException", "Internal failure (injected)");
    }
  }
  if (!CONNECTION_ID.test(connectionId)) return error(400, "BadRequestException", "Invalid connectionId");
  const conn = options.gateway.connections.get(connectionId);
  if (!conn || conn.state !== "open") return error(410, "GoneException", "");
  switch (method) {
    case "POST":
      if (size > API_MESSAGE_BYTES) return error(413, "PayloadTooLargeException", "Message too long");
      // Sent as the bytes posted when they are UTF-8 (no decoding and encoding again per post);
      // anything else as its decoding, with U+FFFD for each bad sequence, as before.
      if (!options.gateway.send(connectionId, isUtf8(body) ? body : body.toString("utf8"))) return error(410, "GoneException", "");
      return { status: 200, headers: {}, body: "" };
    case "GET":
      return {
        status: 200,
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({
          connectedAt: new Date(conn.connectedAt).toISOString(),
          identity: { sourceIp: conn.sourceIp, ...(conn.userAgent ? { userAgent: conn.userAgent } : {}) },
          lastActiveAt: new Date(conn.lastActiveAt).toISOString(),
        }),
      };
    case "DELETE":
      options.gateway.disconnect(connectionId, 1000, "Connection Closed Normally");
      return { status: 204, headers: {}, body: "" };
    default:
      return error(403, "ForbiddenException", `Method ${method} is not allowed`);
  }
}
