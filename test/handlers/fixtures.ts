/**
 * Realistic API Gateway WebSocket events, shaped as ../shared/docs/apigw-websocket.md describes
 * (16-character ids ending in "=", epoch-ms times, headers and query only on $connect).
 */
import { ConditionalCheckFailedException } from "@aws-sdk/client-dynamodb";
import type { ServiceInputTypes, ServiceOutputTypes } from "@aws-sdk/lib-dynamodb";
import { DynamoDBDocumentClient } from "@aws-sdk/lib-dynamodb";
import { AwsStub, mockClient } from "aws-sdk-client-mock";
import { LeanDocumentClient } from "../../handlers/shared/dynamodb";
import type { Context } from "aws-lambda";
import type { ConnectEvent, DisconnectEvent, WebSocketEvent } from "../../handlers/shared/events";

export const API_ID = "a1b2c3d4e5";
export const DOMAIN = `${API_ID}.execute-api.us-east-1.amazonaws.com`;
const CONNECTED_AT = 1_731_324_924_000;

function requestContext(connectionId: string, routeKey: string, eventType: "CONNECT" | "MESSAGE" | "DISCONNECT") {
  return {
    routeKey,
    eventType,
    extendedRequestId: "BFaUBHcsIAMFbMQ=",
    requestId: "BFaUBHcsIAMFbMQ=",
    messageId: eventType === "MESSAGE" ? "BFaUBdv1IAMCJxQ=" : (undefined as unknown as string),
    requestTime: "11/Nov/2024:11:35:24 +0000",
    messageDirection: "IN" as const,
    stage: "dev",
    connectedAt: CONNECTED_AT,
    requestTimeEpoch: CONNECTED_AT + 5_000,
    domainName: DOMAIN,
    connectionId,
    apiId: API_ID,
    identity: { sourceIp: "203.0.113.7", userAgent: "wscat/6.1.0" },
  };
}

export function connectEvent(connectionId: string, query?: Record<string, string | string[]>): ConnectEvent {
  const multi = query && Object.fromEntries(Object.entries(query).map(([k, v]) => [k, Array.isArray(v) ? v : [v]]));
  const single = multi && Object.fromEntries(Object.entries(multi).map(([k, v]) => [k, v[v.length - 1]]));
  return {
    headers: {
      Host: DOMAIN,
      "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
      "Sec-WebSocket-Version": "13",
      "X-Forwarded-For": "203.0.113.7",
      "X-Forwarded-Port": "443",
      "X-Forwarded-Proto": "https",
    },
    ...(single ? { queryStringParameters: single, multiValueQueryStringParameters: multi } : {}),
    requestContext: { ...requestContext(connectionId, "$connect", "CONNECT"), messageId: undefined as unknown as string },
    isBase64Encoded: false,
  };
}

/** A frame from a client, received by API Gateway at `receivedAt` (default: now, as a handler run right away sees it). */
export function messageEvent(connectionId: string, body: string, routeKey = "sendmessage", receivedAt = Date.now()): WebSocketEvent {
  return { requestContext: { ...requestContext(connectionId, routeKey, "MESSAGE"), requestTimeEpoch: receivedAt }, body, isBase64Encoded: false };
}

export function disconnectEvent(connectionId: string, code = 1001, reason = "Going away"): DisconnectEvent {
  return {
    requestContext: {
      ...requestContext(connectionId, "$disconnect", "DISCONNECT"),
      disconnectStatusCode: code,
      disconnectReason: reason,
    },
    isBase64Encoded: false,
  };
}

export const lambdaContext = {
  awsRequestId: "6f2d5c1e-3b1a-4c55-9d0e-8a7b6c5d4e3f",
  functionName: "ws-chat-sendmessage-1a2b3c4",
  functionVersion: "$LATEST",
  invokedFunctionArn: "arn:aws:lambda:us-east-1:123456789012:function:ws-chat-sendmessage-1a2b3c4",
  memoryLimitInMB: "256",
  logGroupName: "/aws/lambda/ws-chat-sendmessage-dev",
  logStreamName: "2024/11/11/[$LATEST]0123456789abcdef",
  callbackWaitsForEmptyEventLoop: true,
  getRemainingTimeInMillis: () => 10_000,
  done: () => undefined,
  fail: () => undefined,
  succeed: () => undefined,
} as Context;

/** A connection id in API Gateway's format. */
export function connId(n: number): string {
  return Buffer.from(`conn-${String(n).padStart(6, "0")}`).toString("base64url").slice(0, 15) + "=";
}

/** Sets the handler environment for the duration of a test file; returns a restore function. */
export function useEnv(values: Record<string, string>): () => void {
  const saved = Object.fromEntries(Object.keys(values).map((k) => [k, process.env[k]]));
  Object.assign(process.env, values);
  return () => {
    for (const [k, v] of Object.entries(saved)) {
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
    }
  };
}

/** Captures the structured log lines a handler writes. */
export function captureLogs(): { lines: Record<string, unknown>[]; restore: () => void } {
  const lines: Record<string, unknown>[] = [];
  const originals = { log: console.log, warn: console.warn, error: console.error };
  for (const level of ["log", "warn", "error"] as const) {
    console[level] = (text: unknown) => {
      try {
        lines.push(JSON.parse(String(text)));
      } catch {
        lines.push({ raw: String(text) });
      }
    };
  }
  return { lines, restore: () => Object.assign(console, originals) };
}

/**
 * Stubs every instance of an SDK client class (`() => mockClient(Class)`) for the enclosing suite only, reset before each
 * test (mockClient patches the class, so an unrestored stub would leak into later files).
 */
export function stubClient<S extends { reset(): unknown; restore(): unknown }>(make: () => S): () => S {
  let stub: S;
  before(() => (stub = make()));
  beforeEach(() => stub.reset());
  after(() => stub.restore());
  return () => stub;
}

/** Sets the handler environment for the enclosing suite. */
export function withEnv(values: Record<string, string>): void {
  let restore: () => void;
  before(() => (restore = useEnv(values)));
  after(() => restore());
}

/** Captures the structured log lines of each test in the enclosing suite. */
export function withLogs(): () => Record<string, unknown>[] {
  let captured: ReturnType<typeof captureLogs>;
  beforeEach(() => (captured = captureLogs()));
  afterEach(() => captured.restore());
  return () => captured.lines;
}

/**
 * Stubs the handlers' DynamoDB client (handlers/shared/dynamodb.ts) for the enclosing suite, as
 * `mockClient` stubs an SDK client: `.on(PutCommand)`, `.commandCalls(…)`. The lean client sends
 * lib-dynamodb's commands, so the stub matches them as it matches them on the SDK's client.
 */
export function stubDocumentClient(): () => AwsStub<ServiceInputTypes, ServiceOutputTypes, unknown> {
  return stubClient(() => mockClient(LeanDocumentClient as unknown as typeof DynamoDBDocumentClient));
}

/** DynamoDB's answer to a failed condition, as the SDK raises it. */
export const conditionFailed = () => new ConditionalCheckFailedException({ message: "The conditional request failed", $metadata: {} });
