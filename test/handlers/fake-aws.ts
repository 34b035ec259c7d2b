/**
 * A fake of the two AWS HTTP APIs the handlers call without the SDK: the @connections management
 * API and Lambda's Invoke. A real HTTP server on port 0 (closed after the suite), so the handlers'
 * signing, keep-alive and error translation all run. Each test may script answers with `reply`.
 */
import { createServer, IncomingHttpHeaders, Server } from "http";
import type { AddressInfo } from "net";
import { useEnv } from "./fixtures";

export interface Call {
  method: string;
  /** For @connections calls. */
  connectionId?: string;
  /** For Invoke calls. */
  functionName?: string;
  body: string;
  headers: IncomingHttpHeaders;
}

export interface Answer {
  status: number;
  /** Sent as x-amzn-ErrorType. */
  type?: string;
  body?: string;
}

export const OK: Answer = { status: 200 };
export const GONE: Answer = { status: 410, type: "GoneException", body: '{"message":null}' };
export const THROTTLED: Answer = { status: 429, type: "LimitExceededException", body: '{"message":"Rate exceeded"}' };
export const SERVER_ERROR: Answer = { status: 500, type: "InternalServerErrorException", body: '{"message":"Internal server error"}' };
export const FORBIDDEN: Answer = { status: 403, type: "ForbiddenException", body: '{"message":"Forbidden"}' };

export interface FakeAws {
  calls: Call[];
  posts(): { to: string; data: string }[];
  invocations(): { functionName: string; type: string; event: unknown }[];
  /** Answers calls for which `answer` returns something; the rest get the defaults (200, 202 for Invoke). */
  reply(answer: (call: Call) => Answer | undefined | Promise<Answer | undefined>): void;
}

/** Starts the fake for the enclosing suite, pointing MANAGEMENT_ENDPOINT and AWS_ENDPOINT_URL_LAMBDA at it. */
export function withFakeAws(stage = "dev"): () => FakeAws {
  let server: Server;
  let restoreEnv: () => void;
  let answer: (call: Call) => Answer | undefined | Promise<Answer | undefined> = () => undefined;
  const fake: FakeAws = {
    calls: [],
    posts: () => fake.calls.filter((c) => c.method === "POST" && c.connectionId).map((c) => ({ to: c.connectionId!, data: c.body })),
    invocations: () =>
      fake.calls.filter((c) => c.functionName).map((c) => ({ functionName: c.functionName!, type: String(c.headers["x-amz-invocation-type"]), event: JSON.parse(c.body) })),
    reply: (fn) => (answer = fn),
  };

  before(async () => {
    server = createServer((req, res) => {
      const chunks: Buffer[] = [];
      req.on("data", (c: Buffer) => chunks.push(c));
      req.on("end", async () => {
        const path = new URL(req.url ?? "/", "http://fake").pathname;
        const connection = new RegExp(`^/${stage}/@connections/(.+)$`).exec(path);
        const invoke = /^\/2015-03-31\/functions\/(.+)\/invocations$/.exec(path);
        const call: Call = {
          method: req.method ?? "",
          ...(connection ? { connectionId: decodeURIComponent(connection[1]) } : {}),
          ...(invoke ? { functionName: decodeURIComponent(invoke[1]) } : {}),
          body: Buffer.concat(chunks).toString("utf8"),
          headers: req.headers,
        };
        fake.calls.push(call);
        const scripted = await answer(call);
        const reply = scripted ?? (invoke ? { status: 202 } : req.method === "GET" ? { status: 200, body: "{}" } : OK);
        res.writeHead(reply.status, { "Content-Type": "application/json", ...(reply.type ? { "x-amzn-ErrorType": reply.type } : {}) });
        res.end(reply.body ?? "");
      });
    });
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    const { port } = server.address() as AddressInfo;
    restoreEnv = useEnv({
      MANAGEMENT_ENDPOINT: `http://127.0.0.1:${port}/${stage}`,
      AWS_ENDPOINT_URL_LAMBDA: `http://127.0.0.1:${port}`,
      AWS_REGION: "us-east-1",
      AWS_ACCESS_KEY_ID: "AKIDEXAMPLE",
      AWS_SECRET_ACCESS_KEY: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
    });
  });
  beforeEach(() => {
    fake.calls.length = 0;
    answer = () => undefined;
  });
  after(async () => {
    restoreEnv();
    server.closeAllConnections();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  });
  return () => fake;
}
