/**
 * The @connections management API: POST, GET and DELETE on /{stage}/@connections/{id}, with
 * API Gateway's status codes, the `x-amzn-ErrorType` header and JSON bodies, so the unmodified
 * AWS SDK v3 client raises a real GoneException, PayloadTooLargeException, and so on.
 * With `iam`, each call's SigV4 signature is verified and `execute-api:ManageConnections` is
 * authorized on the connection's ARN first (local/iam.ts); without it (`--no-iam`), both are skipped.
 */
import type { IncomingMessage, ServerResponse } from "http";
import { Gateway, MAX_MESSAGE_BYTES } from "./gateway";
import { guard, IamConfig } from "./iam";

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
/** Bodies up to this size are read whole, to check their signature; larger ones are only answered 413. */
const MAX_SIGNED_BODY_BYTES = 8 * MAX_MESSAGE_BYTES;

/** Returns true when the request was for the management API (and has been answered). */
export function handleManagementRequest(options: ManagementOptions, req: IncomingMessage, res: ServerResponse): boolean {
  const url = new URL(req.url ?? "/", "http://local");
  const prefix = `/${options.stage}/@connections/`;
  const pathname = decodeURIComponent(url.pathname);
  if (!pathname.startsWith(prefix)) return false;
  const connectionId = pathname.slice(prefix.length);

  const chunks: Buffer[] = [];
  let size = 0;
  req.on("data", (chunk: Buffer) => {
    size += chunk.length;
    // Kept whole up to a bound (the signature covers the whole body); an oversized one is refused as 413 anyway.
    if (size <= MAX_SIGNED_BODY_BYTES) chunks.push(chunk);
  });
  req.on("end", async () => {
    const method = req.method ?? "GET";
    const body = Buffer.concat(chunks);
    if (options.iam && size <= MAX_SIGNED_BODY_BYTES) {
      const { config, apiId } = options.iam;
      const arn = `arn:aws:execute-api:${config.region}:${config.account}:${apiId}/${options.stage}/${method}/@connections/${connectionId}`;
      const refused = await guard(config, { method, url: req.url ?? "/", headers: req.headers, body, service: "execute-api" }, () => [["execute-api:ManageConnections", arn]]);
      if (refused) {
        options.log?.(`[management] ${method} ${connectionId} refused: ${refused.body}`);
        res.writeHead(refused.status, refused.headers);
        res.end(refused.body);
        return;
      }
    }
    if (options.calls) options.calls[method] = (options.calls[method] ?? 0) + 1;
    const answer = () => respond(options, method, connectionId, body, size, res);
    if (options.latencyMs) setTimeout(answer, options.latencyMs);
    else answer();
  });
  return true;
}

function error(res: ServerResponse, status: number, type: string, message: string) {
  res.writeHead(status, { "Content-Type": "application/json", "x-amzn-ErrorType": type, "x-amzn-RequestId": crypto.randomUUID() });
  res.end(JSON.stringify({ message }));
}

function respond(options: ManagementOptions, method: string, connectionId: string, body: Buffer, size: number, res: ServerResponse) {
  if (options.faults) {
    const roll = Math.random();
    const injected = roll < options.faults.throttled ? 429 : roll < options.faults.throttled + options.faults.failed ? 500 : undefined;
    if (injected) {
      options.log?.(`[management] ${method} ${connectionId} answered ${injected} (injected fault)`);
      return injected === 429
        ? error(res, 429, "LimitExceededException", "Rate exceeded (injected)")
        : error(res, 500, "InternalServerErrorException", "Internal failure (injected)");
    }
  }
  if (!CONNECTION_ID.test(connectionId)) return error(res, 400, "BadRequestException", "Invalid connectionId");
  const conn = options.gateway.connections.get(connectionId);
  if (!conn || conn.state !== "open") return error(res, 410, "GoneException", "");
  switch (method) {
    case "POST":
      if (size > MAX_MESSAGE_BYTES) return error(res, 413, "PayloadTooLargeException", "Message too long");
      if (!options.gateway.send(connectionId, body.toString("utf8"))) return error(res, 410, "GoneException", "");
      res.writeHead(200, { "Content-Length": "0" });
      return res.end();
    case "GET":
      res.writeHead(200, { "Content-Type": "application/json" });
      return res.end(
        JSON.stringify({
          connectedAt: new Date(conn.connectedAt).toISOString(),
          identity: { sourceIp: conn.sourceIp, ...(conn.userAgent ? { userAgent: conn.userAgent } : {}) },
          lastActiveAt: new Date(conn.lastActiveAt).toISOString(),
        }),
      );
    case "DELETE":
      options.gateway.disconnect(connectionId, 1000, "Connection Closed Normally");
      res.writeHead(204);
      return res.end();
    default:
      return error(res, 403, "ForbiddenException", `Method ${method} is not allowed`);
  }
}
