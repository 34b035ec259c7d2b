/**
 * API Gateway's WebSocket proxy events, built the way ../shared/docs/apigw-websocket.md records
 * them: 16-character URL-safe ids ending in "=", epoch-ms times, `requestTime` in CLF format,
 * headers and query only on $connect, `messageId` only on MESSAGE, close status on $disconnect.
 */
import { randomBytes } from "crypto";

export function awsId(): string {
  return randomBytes(11).toString("base64url") + "=";
}

const MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];

/** `11/Nov/2024:11:35:24 +0000` */
export function requestTime(epochMs: number): string {
  const d = new Date(epochMs);
  const pad = (n: number) => String(n).padStart(2, "0");
  return `${pad(d.getUTCDate())}/${MONTHS[d.getUTCMonth()]}/${d.getUTCFullYear()}:${pad(d.getUTCHours())}:${pad(d.getUTCMinutes())}:${pad(d.getUTCSeconds())} +0000`;
}

export interface ConnectionFacts {
  connectionId: string;
  connectedAt: number;
  sourceIp: string;
  userAgent?: string;
  /** From a $connect authorizer, repeated on every later event. */
  authorizer?: Record<string, string>;
}

export interface ApiFacts {
  apiId: string;
  stage: string;
  domainName: string;
}

export type EventType = "CONNECT" | "MESSAGE" | "DISCONNECT";

export function requestContext(api: ApiFacts, conn: ConnectionFacts, routeKey: string, eventType: EventType, extra: Record<string, unknown> = {}) {
  const now = Date.now();
  const requestId = awsId();
  return {
    routeKey,
    ...(eventType === "MESSAGE" ? { messageId: awsId() } : {}),
    eventType,
    extendedRequestId: requestId,
    requestTime: requestTime(now),
    messageDirection: "IN",
    stage: api.stage,
    connectedAt: conn.connectedAt,
    requestTimeEpoch: now,
    identity: { sourceIp: conn.sourceIp, ...(conn.userAgent ? { userAgent: conn.userAgent } : {}) },
    requestId,
    domainName: api.domainName,
    connectionId: conn.connectionId,
    apiId: api.apiId,
    ...(conn.authorizer ? { authorizer: conn.authorizer } : {}),
    ...extra,
  };
}

export interface RawRequest {
  rawHeaders: string[];
  query: URLSearchParams;
  hasQuery: boolean;
  remotePort: number;
}

export function connectEvent(api: ApiFacts, conn: ConnectionFacts, req: RawRequest) {
  const headers: Record<string, string> = {};
  const multiValueHeaders: Record<string, string[]> = {};
  const add = (name: string, value: string) => {
    headers[name] = value;
    (multiValueHeaders[name] ??= []).push(value);
  };
  for (let i = 0; i < req.rawHeaders.length; i += 2) add(req.rawHeaders[i], req.rawHeaders[i + 1]);
  add("X-Forwarded-For", conn.sourceIp);
  add("X-Forwarded-Port", String(req.remotePort));
  add("X-Forwarded-Proto", "http");
  const query: Record<string, string> = {};
  const multiQuery: Record<string, string[]> = {};
  for (const [k, v] of req.query) {
    query[k] = v; // API Gateway keeps the last value
    (multiQuery[k] ??= []).push(v);
  }
  return {
    headers,
    multiValueHeaders,
    ...(req.hasQuery ? { queryStringParameters: query, multiValueQueryStringParameters: multiQuery } : {}),
    requestContext: requestContext(api, conn, "$connect", "CONNECT"),
    isBase64Encoded: false,
  };
}

export function messageEvent(api: ApiFacts, conn: ConnectionFacts, routeKey: string, body: string) {
  return { requestContext: requestContext(api, conn, routeKey, "MESSAGE"), body, isBase64Encoded: false };
}

export function disconnectEvent(api: ApiFacts, conn: ConnectionFacts, code: number, reason: string) {
  return {
    headers: { Host: api.domainName },
    multiValueHeaders: { Host: [api.domainName] },
    requestContext: requestContext(api, conn, "$disconnect", "DISCONNECT", { disconnectStatusCode: code, disconnectReason: reason }),
    isBase64Encoded: false,
  };
}

/**
 * Evaluates a route selection expression such as `$request.body.action` (or `${request.body.action}`)
 * on a message body. Returns undefined for non-JSON bodies, missing keys and non-string values,
 * which all fall through to $default.
 */
export function selectRouteValue(expression: string, body: string): string | undefined {
  const match = /^\$\{?request\.body\.([A-Za-z0-9_$.-]+)\}?$/.exec(expression.trim());
  if (!match) throw new Error(`unsupported routeSelectionExpression ${JSON.stringify(expression)}`);
  let value: unknown;
  try {
    value = JSON.parse(body);
  } catch {
    return undefined;
  }
  for (const key of match[1].split(".")) {
    if (typeof value !== "object" || value === null || !Object.prototype.hasOwnProperty.call(value, key)) return undefined;
    value = (value as Record<string, unknown>)[key];
  }
  return typeof value === "string" ? value : undefined;
}
