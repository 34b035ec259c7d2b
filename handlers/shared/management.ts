/**
 * The API Gateway management API (@connections): one client per container over a keep-alive
 * socket pool, with failures translated here into the four outcomes the handlers act on.
 * Requests are signed and sent by aws-http.ts, not the SDK client: fan-out makes one call per
 * recipient, and the SDK's per-call CPU was the cost that bounded it.
 */
import { createAwsClient } from "./aws-http";
import { requireEnv } from "./env";

/**
 * - `gone`: 410 GoneException. The connection is closed or unknown; its record is stale.
 * - `too_large`: 413 PayloadTooLargeException. Retrying cannot help.
 * - `retryable`: 429 LimitExceededException, any 5xx, or no HTTP answer at all (socket reset, timeout).
 * - `rejected`: anything else (403 ForbiddenException, 400 BadRequestException, …).
 */
export type FailureKind = "gone" | "too_large" | "retryable" | "rejected";

/**
 * Errors are named from the `x-amzn-ErrorType` header (aws-http.ts, as the SDK v3 does);
 * `$metadata.httpStatusCode` is the fallback. The v2-era `err.statusCode` is deliberately not read.
 */
export function classifyFailure(err: unknown): FailureKind {
  const name = (err as { name?: string })?.name;
  const status = (err as { $metadata?: { httpStatusCode?: number } })?.$metadata?.httpStatusCode;
  if (name === "GoneException" || status === 410) return "gone";
  if (name === "PayloadTooLargeException" || status === 413) return "too_large";
  if (name === "LimitExceededException" || status === 429) return "retryable";
  if (status !== undefined && status >= 500) return "retryable";
  if (status === undefined && name !== "ForbiddenException" && name !== "BadRequestException") return "retryable";
  return "rejected";
}

export interface ConnectionInfo {
  connectedAt?: string;
  lastActiveAt?: string;
  identity?: { sourceIp?: string; userAgent?: string };
}

export interface Management {
  post(connectionId: string, data: string): Promise<void>;
  getConnection(connectionId: string): Promise<ConnectionInfo>;
}

/**
 * A Management over the lean signed client (aws-http.ts): `endpoint` is the stage's
 * `https://{api}.execute-api.{region}.amazonaws.com/{stage}`. `maxSockets` bounds the keep-alive
 * pool and should equal the caller's concurrency bound, so no request waits for a socket. There is
 * no retry here: `deliver` is the one retry layer, whose policy the tests pin down.
 */
export function createManagement(endpoint: string, maxSockets: number, region = requireEnv("AWS_REGION")): Management {
  const { URL, encodeURIComponent, JSON } = globalThis; // bound once: per-post code (aws-http.ts, createSigner)
  const request = createAwsClient({ service: "execute-api", region, maxSockets, timeoutMs: 5_000 });
  const base = endpoint.replace(/\/+$/, "");
  const urlOf = (connectionId: string) => new URL(`${base}/@connections/${encodeURIComponent(connectionId)}`);
  return {
    async post(connectionId, data) {
      await request("POST", urlOf(connectionId), data);
    },
    async getConnection(connectionId) {
      const out = JSON.parse((await request("GET", urlOf(connectionId))).body || "{}") as ConnectionInfo;
      return {
        connectedAt: out.connectedAt,
        lastActiveAt: out.lastActiveAt,
        identity: out.identity ? { sourceIp: out.identity.sourceIp, userAgent: out.identity.userAgent } : undefined,
      };
    },
  };
}
