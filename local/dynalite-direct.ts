/**
 * Calls dynalite's request handler in this process, without a socket: the proxy in front of it
 * (transactions.ts) lives in the same process, and the HTTP hop between them (a client request,
 * a server request, two parses of the headers) was the largest share of the stack's CPU per
 * DynamoDB request under load (issue 10's profile: writev, the HTTP client and agent). dynalite's
 * handler reads only `method`, `url`, `headers` and the body events of its request, and calls
 * `statusCode`, `setHeader` and `end` on its response, so plain objects stand in for both.
 */
import { EventEmitter } from "events";
import type { IncomingHttpHeaders, Server } from "http";

export interface DirectAnswer {
  status: number;
  headers: Record<string, string>;
  body: Buffer;
}

export type DirectCall = (headers: IncomingHttpHeaders, body: Buffer) => Promise<DirectAnswer>;

/** A DynamoDB error answer as an Error whose `name` is its type, as the SDK raises it. */
export type DynamoError = Error & { type: string; status: number };

/** The handler of a dynalite server, callable with a request's headers and body. */
export function directCall(server: Server): DirectCall {
  const [handler] = server.listeners("request") as ((req: unknown, res: unknown) => void)[];
  if (!handler) throw new Error("dynalite's server has no request handler");
  return (headers, body) =>
    new Promise((resolve) => {
      const req = Object.assign(new EventEmitter(), { method: "POST", url: "/", headers });
      const answer: DirectAnswer = { status: 200, headers: {}, body: Buffer.alloc(0) };
      const res = {
        contentType: "",
        set statusCode(status: number) {
          answer.status = status;
        },
        get statusCode() {
          return answer.status;
        },
        setHeader(name: string, value: string | number) {
          answer.headers[name.toLowerCase()] = String(value);
        },
        end(data?: string | Buffer) {
          answer.body = data === undefined ? Buffer.alloc(0) : Buffer.isBuffer(data) ? data : Buffer.from(data, "utf8");
          resolve(answer);
        },
      };
      handler(req, res);
      if (body.length > 0) req.emit("data", body);
      req.emit("end");
    });
}

const JSON_HEADERS = { "content-type": "application/x-amz-json-1.0", authorization: "AWS4-HMAC-SHA256 Credential=local/20260101/us-east-1/dynamodb/aws4_request, SignedHeaders=host, Signature=local", "x-amz-date": "20260101T000000Z" };

/**
 * One DynamoDB operation through `call`: resolves with the parsed answer, or rejects with an error
 * named by its `__type` (ConditionalCheckFailedException, ValidationException, …).
 */
export async function dynamo<T = Record<string, unknown>>(call: DirectCall, operation: string, input: unknown): Promise<T> {
  const answer = await call({ ...JSON_HEADERS, "x-amz-target": `DynamoDB_20120810.${operation}` }, Buffer.from(JSON.stringify(input), "utf8"));
  const parsed = answer.body.length ? (JSON.parse(answer.body.toString("utf8")) as Record<string, unknown>) : {};
  if (answer.status >= 300) {
    const type = String(parsed.__type ?? "InternalServerError").split("#").pop()!;
    throw Object.assign(new Error(String(parsed.message ?? parsed.Message ?? type)), { name: type, type, status: answer.status }) as DynamoError;
  }
  return parsed as T;
}
