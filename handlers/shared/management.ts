/**
 * The API Gateway management API (@connections): one client per container over a keep-alive
 * socket pool, with SDK errors translated here into the four outcomes the handlers act on.
 */
import {
  ApiGatewayManagementApiClient,
  GetConnectionCommand,
  PostToConnectionCommand,
} from "@aws-sdk/client-apigatewaymanagementapi";
import * as http from "http";
import * as https from "https";

/**
 * - `gone`: 410 GoneException. The connection is closed or unknown; its record is stale.
 * - `too_large`: 413 PayloadTooLargeException. Retrying cannot help.
 * - `retryable`: 429 LimitExceededException, any 5xx, or no HTTP answer at all (socket reset, timeout).
 * - `rejected`: anything else (403 ForbiddenException, 400 BadRequestException, …).
 */
export type FailureKind = "gone" | "too_large" | "retryable" | "rejected";

/**
 * SDK v3 names the error from the `x-amzn-ErrorType` header; `$metadata.httpStatusCode` is the
 * fallback. The v2-era `err.statusCode` does not exist in v3 and is deliberately not read.
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
 * `maxSockets` bounds the keep-alive pool; it should equal the caller's concurrency bound so no
 * request waits for a socket. `maxAttempts: 1` leaves retrying to `deliver` (one retry layer, whose
 * policy the tests pin down), instead of stacking the SDK's three attempts under ours.
 * `requestHandler` as a plain options object needs SDK ≥ 3.521 (the nodejs22.x runtime ships newer).
 */
export function createManagementClient(endpoint: string, maxSockets: number): ApiGatewayManagementApiClient {
  return new ApiGatewayManagementApiClient({
    endpoint,
    maxAttempts: 1,
    requestHandler: {
      httpsAgent: new https.Agent({ keepAlive: true, maxSockets }),
      httpAgent: new http.Agent({ keepAlive: true, maxSockets }),
      connectionTimeout: 3_000,
      requestTimeout: 5_000,
    },
  });
}

export function createManagement(client: ApiGatewayManagementApiClient): Management {
  return {
    async post(connectionId, data) {
      await client.send(new PostToConnectionCommand({ ConnectionId: connectionId, Data: data }));
    },
    async getConnection(connectionId) {
      const out = await client.send(new GetConnectionCommand({ ConnectionId: connectionId }));
      return {
        connectedAt: out.ConnectedAt?.toISOString(),
        lastActiveAt: out.LastActiveAt?.toISOString(),
        identity: out.Identity ? { sourceIp: out.Identity.SourceIp, userAgent: out.Identity.UserAgent } : undefined,
      };
    },
  };
}
