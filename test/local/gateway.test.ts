/**
 * The WebSocket gateway and @connections API against ../shared/docs/apigw-websocket.md, with
 * in-process route targets (no Lambda runtime) and the unmodified AWS SDK v3 client.
 */
import {
  ApiGatewayManagementApiClient,
  DeleteConnectionCommand,
  GetConnectionCommand,
  GoneException,
  PayloadTooLargeException,
  PostToConnectionCommand,
} from "@aws-sdk/client-apigatewaymanagementapi";
import { createServer, Server } from "node:http";
import type { AddressInfo } from "node:net";
import { PassThrough } from "node:stream";
import assert from "node:assert/strict";
import { classifyFailure } from "../../handlers/shared/management";
import { answerPlainRequest, createGateway, Gateway, RouteTarget, watchFrameSizes } from "../../local/gateway";
import type { InvokeOutcome } from "../../local/lambda";
import { handleManagementRequest, leanManagementRoute } from "../../local/management";
import { LeanRouter, routeLeanConnections } from "../../local/lean-http";
import WebSocket from "ws";
import { Client } from "../e2e/clients";

type Event = { requestContext: Record<string, any>; [k: string]: any }; // eslint-disable-line @typescript-eslint/no-explicit-any
type Behaviour = (event: Event) => InvokeOutcome | Promise<InvokeOutcome>;

const ID = /^[A-Za-z0-9_-]{15}=$/;
const ok = (statusCode = 200): InvokeOutcome => ({ result: { statusCode }, durationMs: 1, coldStart: false });

describe("local gateway (API Gateway WebSocket emulation)", () => {
  let server: Server;
  let gateway: Gateway;
  let url: string;
  let endpoint: string;
  let events: Event[];
  let behaviour: Record<string, Behaviour>;
  let logs: string[];
  const clients: Client[] = [];

  let lean: LeanRouter | undefined;
  /** @connections requests Node's HTTP server answered (none may, on the lean path). */
  let nodeManagementRequests = 0;

  async function start(routeKeys: string[], extra: { idleTimeoutMs?: number; maxDurationMs?: number; twoWay?: string[]; authorizer?: string[]; lean?: boolean } = {}) {
    server = createServer();
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", () => r()));
    const port = (server.address() as AddressInfo).port;
    const routes: RouteTarget[] = routeKeys.map((routeKey) => ({
      routeKey,
      functionName: `fn-${routeKey}`,
      twoWay: extra.twoWay?.includes(routeKey) ?? false,
      ...(routeKey === "$connect" && extra.authorizer
        ? {
            authorizer: {
              functionName: "fn-authorizer",
              identitySources: extra.authorizer,
              invoke: async (event: unknown) => {
                events.push({ ...(event as Event), requestContext: { ...(event as Event).requestContext, routeKey: "authorizer" } });
                return (behaviour.authorizer ?? (() => ok()))(event as Event);
              },
            },
          }
        : {}),
      invoke: async (event) => {
        events.push(event as Event);
        return (behaviour[routeKey] ?? (() => ok()))(event as Event);
      },
    }));
    gateway = createGateway(server, {
      api: { apiId: "a1b2c3d4e5", stage: "dev", domainName: `127.0.0.1:${port}` },
      methodArnPrefix: "arn:aws:execute-api:us-east-1:123456789012:a1b2c3d4e5/dev",
      routeSelectionExpression: "$request.body.action",
      routes,
      idleTimeoutMs: extra.idleTimeoutMs,
      maxDurationMs: extra.maxDurationMs,
      log: (line) => logs.push(line),
    });
    nodeManagementRequests = 0;
    server.on("request", (req, res) => {
      if (handleManagementRequest({ stage: "dev", gateway }, req, res)) nodeManagementRequests++;
      else answerPlainRequest("dev", req, res);
    });
    // As the stack routes them: the functions' requests on the lean path (lean-http.ts), the rest on Node's server.
    if (extra.lean) lean = routeLeanConnections(server, leanManagementRoute({ stage: "dev", gateway }), 5_000);
    url = `ws://127.0.0.1:${port}/dev`;
    endpoint = `http://127.0.0.1:${port}/dev`;
  }

  const connect = async (query: Record<string, string> = {}) => {
    const c = await Client.open(url, query);
    clients.push(c);
    return c;
  };
  const sdk = () =>
    new ApiGatewayManagementApiClient({ endpoint, region: "us-east-1", maxAttempts: 1, credentials: { accessKeyId: "local", secretAccessKey: "local" } });
  const eventsFor = (routeKey: string) => events.filter((e) => e.requestContext.routeKey === routeKey);
  const waitForEvent = async (routeKey: string) => {
    for (let i = 0; i < 100 && eventsFor(routeKey).length === 0; i++) await new Promise((r) => setTimeout(r, 20));
    assert.ok(eventsFor(routeKey).length > 0, `a ${routeKey} event`);
    return eventsFor(routeKey)[0];
  };

  beforeEach(() => {
    events = [];
    behaviour = {};
    logs = [];
  });
  afterEach(async () => {
    for (const c of clients.splice(0)) c.kill();
    await gateway?.close();
    server.closeAllConnections(); // the SDK's keep-alive sockets
    lean?.closeAll();
    lean = undefined;
    await new Promise<void>((r) => server.close(() => r()));
  });

  describe("events", () => {
    beforeEach(() => start(["$connect", "$disconnect", "$default", "sendmessage"]));

    it("$connect carries headers, query and identity; ids and times are shaped like AWS's", async () => {
      await connect({ room: "r1", name: "ann" });
      const e = await waitForEvent("$connect");
      const rc = e.requestContext;
      assert.equal(rc.eventType, "CONNECT");
      assert.match(rc.connectionId, ID);
      assert.match(rc.requestId, ID);
      assert.equal(rc.requestId, rc.extendedRequestId);
      assert.equal(rc.messageId, undefined);
      assert.equal(rc.messageDirection, "IN");
      assert.equal(rc.stage, "dev");
      assert.equal(rc.apiId, "a1b2c3d4e5");
      assert.match(rc.requestTime, /^\d{2}\/[A-Z][a-z]{2}\/\d{4}:\d{2}:\d{2}:\d{2} \+0000$/);
      assert.ok(Math.abs(rc.requestTimeEpoch - Date.now()) < 5_000 && rc.connectedAt <= rc.requestTimeEpoch);
      assert.equal(rc.identity.sourceIp, "127.0.0.1");
      assert.deepEqual(e.queryStringParameters, { room: "r1", name: "ann" });
      assert.deepEqual(e.multiValueQueryStringParameters, { room: ["r1"], name: ["ann"] });
      assert.equal(e.headers["Sec-WebSocket-Version"], "13");
      assert.equal(e.headers["X-Forwarded-For"], "127.0.0.1");
      assert.equal(e.body, undefined);
    });

    it("$connect without a query string has no query fields; duplicated keys keep the last in the single-value map", async () => {
      await connect();
      assert.equal((await waitForEvent("$connect")).queryStringParameters, undefined);
      events = [];
      await Client.openRaw(`${url}?room=a&room=b`).then((c) => clients.push(c));
      const e = await waitForEvent("$connect");
      assert.deepEqual(e.queryStringParameters, { room: "b" });
      assert.deepEqual(e.multiValueQueryStringParameters, { room: ["a", "b"] });
    });

    it("MESSAGE events carry body and messageId, no headers, and the same connection facts", async () => {
      const c = await connect();
      const connectId = (await waitForEvent("$connect")).requestContext.connectionId;
      c.send({ action: "sendmessage", message: "x" });
      const e = await waitForEvent("sendmessage");
      assert.equal(e.requestContext.eventType, "MESSAGE");
      assert.equal(e.requestContext.connectionId, connectId);
      assert.match(e.requestContext.messageId, ID);
      assert.equal(e.body, '{"action":"sendmessage","message":"x"}');
      assert.equal(e.isBase64Encoded, false);
      assert.equal(e.headers, undefined);
      assert.equal(e.queryStringParameters, undefined);
    });

    it("$disconnect carries the client's close code and reason, or 1005 with AWS's reason when none was sent", async () => {
      const a = await connect();
      a.socket.close(4001, "bye now");
      assert.deepEqual((await waitForEvent("$disconnect")).requestContext.disconnectStatusCode, 4001);
      assert.equal(eventsFor("$disconnect")[0].requestContext.disconnectReason, "bye now");
      events = [];
      const b = await connect();
      b.socket.close();
      const e = await waitForEvent("$disconnect");
      assert.equal(e.requestContext.disconnectStatusCode, 1005);
      assert.equal(e.requestContext.disconnectReason, "Client-side close frame status not set");
      assert.equal(e.body, undefined);
    });
  });

  describe("route selection by $request.body.action", () => {
    beforeEach(() => start(["$default", "sendmessage"]));
    const cases: [string, string][] = [
      ['{"action":"sendmessage"}', "sendmessage"],
      ['{"action":"SendMessage"}', "$default"],
      ['{"action":" sendmessage"}', "$default"],
      ['{"action":"$connect"}', "$default"],
      ['{"action":["sendmessage"]}', "$default"],
      ['{"message":"no action"}', "$default"],
      ["not json", "$default"],
      ['"sendmessage"', "$default"],
      ["", "$default"],
    ];
    for (const [body, routeKey] of cases) {
      it(`${JSON.stringify(body)} goes to ${routeKey}`, async () => {
        const c = await connect();
        c.sendText(body);
        const e = await waitForEvent(routeKey);
        assert.equal(e.body, body);
        assert.equal(events.length, 1);
      });
    }
  });

  describe("gating and failures", () => {
    it("refuses the handshake with the $connect result's non-2xx status", async () => {
      await start(["$connect", "$default"]);
      behaviour.$connect = () => ok(403);
      await assert.rejects(connect(), { status: 403 });
      behaviour.$connect = () => ok(400);
      await assert.rejects(connect(), { status: 400 });
    });

    it("refuses the handshake with 502 when the $connect Lambda fails", async () => {
      await start(["$connect"]);
      behaviour.$connect = () => ({ error: { errorType: "Error", errorMessage: "boom" }, durationMs: 1, coldStart: false });
      await assert.rejects(connect(), { status: 502 });
    });

    it("copies the $connect result's headers onto the 101", async () => {
      await start(["$connect"]);
      behaviour.$connect = () => ({ result: { statusCode: 200, headers: { "X-Chat": "yes" } }, durationMs: 1, coldStart: false });
      const headers = await new Promise<Record<string, unknown>>((resolve, reject) => {
        const { WebSocket } = require("ws");
        const ws = new WebSocket(url);
        ws.once("upgrade", (res: { headers: Record<string, unknown> }) => {
          resolve(res.headers);
          ws.terminate();
        });
        ws.once("error", reject);
      });
      assert.equal(headers["x-chat"], "yes");
    });

    it("sends the 'Internal server error' frame when a route's Lambda fails, and stays connected", async () => {
      await start(["$default"]);
      behaviour.$default = () => ({ error: { errorType: "Sandbox.Timedout", errorMessage: "Task timed out" }, durationMs: 1, coldStart: false });
      const c = await connect();
      c.sendText("hi");
      const frame = JSON.parse(await c.waitFor((f) => f.includes("Internal server error")));
      assert.deepEqual(Object.keys(frame).sort(), ["connectionId", "message", "requestId"]);
      assert.match(frame.connectionId, ID);
      assert.equal(c.socket.readyState, c.socket.OPEN);
    });

    it("answers 'Forbidden' when nothing matches and there is no $default route", async () => {
      await start(["sendmessage"]);
      const c = await connect();
      c.sendText('{"action":"nope"}');
      assert.equal(JSON.parse(await c.waitFor((f) => f.includes("Forbidden"))).message, "Forbidden");
    });

    it("sends the Lambda's body back only on a two-way route", async () => {
      await start(["$default", "sendmessage"], { twoWay: ["$default"] });
      behaviour.$default = () => ({ result: { statusCode: 200, body: "two-way reply" }, durationMs: 1, coldStart: false });
      behaviour.sendmessage = () => ({ result: { statusCode: 200, body: "must not be sent" }, durationMs: 1, coldStart: false });
      const c = await connect();
      c.send({ action: "sendmessage" });
      c.sendText("x");
      await c.waitFor((f) => f === "two-way reply");
      await new Promise((r) => setTimeout(r, 100));
      assert.deepEqual(c.frames, ["two-way reply"]);
    });
  });

  describe("limits and close codes", () => {
    it("closes with 1003 on a binary frame, without running a Lambda", async () => {
      await start(["$disconnect", "$default"]);
      const c = await connect();
      c.socket.send(Buffer.from([0, 1]), { binary: true });
      assert.equal((await c.closed).code, 1003);
      assert.equal((await waitForEvent("$disconnect")).requestContext.disconnectStatusCode, 1003);
      assert.equal(eventsFor("$default").length, 0);
    });

    it("closes with 1009 on a 33,000-byte frame, runs no route for it, and reports 1009 to $disconnect", async () => {
      await start(["$disconnect", "$default"]);
      const c = await connect();
      c.sendText("small first");
      c.sendText(JSON.stringify({ action: "sendmessage", message: "z".repeat(33_000 - 37) }));
      assert.equal((await c.closed).code, 1009);
      assert.equal((await waitForEvent("$disconnect")).requestContext.disconnectStatusCode, 1009);
      assert.deepEqual(eventsFor("$default").map((e) => e.body), ["small first"], "only the frame before it reached a route");
    });

    it("accepts a frame of exactly 32 KB (32,768 bytes)", async () => {
      await start(["$default"]);
      const c = await connect();
      c.sendText("z".repeat(32_768));
      assert.equal((await waitForEvent("$default")).body.length, 32_768);
      assert.equal(c.socket.readyState, WebSocket.OPEN);
    });

    /** Sends `total` bytes of text as one message in frames of at most 32 KB (RFC 6455 fragments). */
    function sendFragmented(c: Client, total: number) {
      for (let sent = 0; sent < total; sent += 32_768) {
        const part = "f".repeat(Math.min(32_768, total - sent));
        c.socket.send(part, { binary: false, fin: sent + 32_768 >= total });
      }
    }

    it("closes with 1009 on a message over 128 KB sent in frames within 32 KB, and reports 1009 to $disconnect", async () => {
      await start(["$disconnect", "$default"]);
      const c = await connect();
      sendFragmented(c, 131_073);
      assert.equal((await c.closed).code, 1009);
      assert.equal((await waitForEvent("$disconnect")).requestContext.disconnectStatusCode, 1009);
      assert.equal(eventsFor("$default").length, 0);
    });

    it("closes with 1007 on invalid UTF-8, and reports 1007 to $disconnect", async () => {
      await start(["$disconnect", "$default"]);
      const c = await connect();
      c.socket.send(Buffer.from([0x7b, 0xff, 0x7d]), { binary: false });
      assert.equal((await c.closed).code, 1007);
      assert.equal((await waitForEvent("$disconnect")).requestContext.disconnectStatusCode, 1007);
      assert.equal(eventsFor("$default").length, 0);
    });

    it("accepts a message of exactly 128 KB in frames of 32 KB", async () => {
      await start(["$default"]);
      const c = await connect();
      sendFragmented(c, 131_072);
      assert.equal((await waitForEvent("$default")).body.length, 131_072);
    });

    it("reads frame headers split across chunks: 16-bit and 64-bit lengths, one byte at a time", () => {
      const masked = (opcode: number, length: number) => {
        const ext = length > 65_535 ? 8 : length > 125 ? 2 : 0;
        const header = Buffer.alloc(2 + ext + 4);
        header[0] = 0x80 | opcode;
        header[1] = 0x80 | (ext === 8 ? 127 : ext === 2 ? 126 : length);
        if (ext === 2) header.writeUInt16BE(length, 2);
        if (ext === 8) header.writeBigUInt64BE(BigInt(length), 2);
        return Buffer.concat([header, Buffer.alloc(length)]);
      };
      const found: number[] = [];
      const raw = new PassThrough();
      watchFrameSizes(raw, 32_768, (bytes, before) => found.push(bytes, before));
      const unfinished = (frame: Buffer) => Buffer.concat([Buffer.from([frame[0] & 0x7f]), frame.subarray(1)]); // FIN off: a first fragment
      const bytes = Buffer.concat([masked(0x1, 5), masked(0x9, 125), unfinished(masked(0x1, 32_768)), masked(0x0, 300), masked(0x2, 70_000), masked(0x1, 40_000)]);
      for (let i = 0; i < bytes.length; i += i < 33_200 ? 1 : 4_096) raw.emit("data", bytes.subarray(i, i < 33_200 ? i + 1 : i + 4_096));
      assert.deepEqual(found, [70_000, 2], "the first frame over 32 KB, once, after 2 messages (the second in 2 fragments); a ping does not count");
    });

    it("closes an idle connection with 1001 'Going away'", async () => {
      await start(["$disconnect"], { idleTimeoutMs: 150 });
      const c = await connect();
      assert.deepEqual(await c.closed, { code: 1001, reason: "Going away" });
      assert.equal((await waitForEvent("$disconnect")).requestContext.disconnectReason, "Going away");
    });

    it("closes any connection at the maximum duration, even a busy one", async () => {
      await start(["$default"], { maxDurationMs: 300, idleTimeoutMs: 10_000 });
      const c = await connect();
      const chatter = setInterval(() => c.socket.readyState === c.socket.OPEN && c.sendText("x"), 50);
      assert.equal((await c.closed).code, 1001);
      clearInterval(chatter);
    });

    it("answers a plain GET with 426, and other paths with 403", async () => {
      await start(["$default"]);
      assert.equal((await fetch(endpoint)).status, 426);
      assert.equal((await fetch(endpoint.replace("/dev", "/prod"))).status, 403);
      await assert.rejects(Client.openRaw(url.replace("/dev", "/elsewhere")), { status: 403 });
    });
  });

  for (const path of ["Node's HTTP server", "the lean path"]) describe(`@connections on ${path}, through the unmodified AWS SDK v3 client`, () => {
    beforeEach(() => start(["$connect", "$disconnect", "$default"], { lean: path === "the lean path" }));
    if (path === "the lean path") afterEach(() => assert.equal(nodeManagementRequests, 0, "an SDK request reached Node's server, not the lean path"));
    else afterEach(() => assert.ok(nodeManagementRequests > 0, "Node's server answered the SDK's requests"));

    it("PostToConnection delivers the data as a text frame", async () => {
      const c = await connect();
      const id = (await waitForEvent("$connect")).requestContext.connectionId;
      await sdk().send(new PostToConnectionCommand({ ConnectionId: id, Data: "pushed" }));
      assert.equal(await c.waitFor(() => true), "pushed");
    });

    it("PostToConnection delivers UTF-8 bytes as they were posted, and bytes that are not UTF-8 decoded with U+FFFD, both as text frames", async () => {
      const socket = new WebSocket(url);
      const frames: { text: string; isBinary: boolean }[] = [];
      socket.on("message", (data: Buffer, isBinary: boolean) => frames.push({ text: data.toString("utf8"), isBinary }));
      try {
        const id = (await waitForEvent("$connect")).requestContext.connectionId;
        await sdk().send(new PostToConnectionCommand({ ConnectionId: id, Data: new TextEncoder().encode("héllo ✓ 😀") }));
        await sdk().send(new PostToConnectionCommand({ ConnectionId: id, Data: new Uint8Array([0xff, 0x61, 0xc3]) }));
        for (let i = 0; i < 250 && frames.length < 2; i++) await new Promise((r) => setTimeout(r, 20));
        assert.deepEqual(frames, [
          { text: "héllo ✓ 😀", isBinary: false },
          { text: "\ufffda\ufffd", isBinary: false },
        ]);
      } finally {
        socket.terminate();
      }
    });

    it("GetConnection answers connectedAt, identity and lastActiveAt", async () => {
      await connect();
      const id = (await waitForEvent("$connect")).requestContext.connectionId;
      const out = await sdk().send(new GetConnectionCommand({ ConnectionId: id }));
      assert.ok(out.ConnectedAt instanceof Date && out.LastActiveAt instanceof Date);
      assert.equal(out.Identity?.SourceIp, "127.0.0.1");
    });

    it("DeleteConnection closes the socket with 1000 and $disconnect reports it", async () => {
      const c = await connect();
      const id = (await waitForEvent("$connect")).requestContext.connectionId;
      await sdk().send(new DeleteConnectionCommand({ ConnectionId: id }));
      assert.deepEqual(await c.closed, { code: 1000, reason: "Connection Closed Normally" });
      const e = await waitForEvent("$disconnect");
      assert.equal(e.requestContext.disconnectStatusCode, 1000);
      assert.equal(e.requestContext.disconnectReason, "Connection Closed Normally");
    });

    it("a closed or unknown connection raises a real GoneException (410)", async () => {
      const c = await connect();
      const id = (await waitForEvent("$connect")).requestContext.connectionId;
      await c.close();
      for (const target of [id, "AAAAAAAAAAAAAAA="]) {
        const err = await sdk().send(new PostToConnectionCommand({ ConnectionId: target, Data: "x" })).catch((e: unknown) => e);
        assert.ok(err instanceof GoneException, `GoneException for ${target}, got ${(err as Error)?.name}`);
        assert.equal(err.$metadata.httpStatusCode, 410);
        assert.equal(classifyFailure(err), "gone");
      }
    });

    it("@connections answers 410 while $connect is still running", async () => {
      let release!: () => void;
      behaviour.$connect = () => new Promise((resolve) => (release = () => resolve(ok())));
      const opening = Client.open(url).then((c) => (clients.push(c), c));
      const e = await waitForEvent("$connect");
      const err = await sdk().send(new PostToConnectionCommand({ ConnectionId: e.requestContext.connectionId, Data: "early" })).catch((x: unknown) => x);
      assert.ok(err instanceof GoneException);
      release();
      await opening;
    });

    it("data over 128 KB raises a real PayloadTooLargeException (413)", async () => {
      await connect();
      const id = (await waitForEvent("$connect")).requestContext.connectionId;
      const err = await sdk().send(new PostToConnectionCommand({ ConnectionId: id, Data: "p".repeat(131_073) })).catch((e: unknown) => e);
      assert.ok(err instanceof PayloadTooLargeException, `got ${(err as Error)?.name}`);
      assert.equal(classifyFailure(err), "too_large");
    });

    it("a malformed id raises BadRequestException (400)", async () => {
      const err = await sdk().send(new PostToConnectionCommand({ ConnectionId: "not a valid id!", Data: "x" })).catch((e: unknown) => e);
      // The client has no BadRequestException class; the SDK names the error from the header.
      assert.equal((err as Error).name, "BadRequestException");
      assert.equal((err as { $metadata: { httpStatusCode: number } }).$metadata.httpStatusCode, 400);
      assert.equal(classifyFailure(err), "rejected");
    });
  });

  describe("a $connect REQUEST authorizer", () => {
    const METHOD_ARN = "arn:aws:execute-api:us-east-1:123456789012:a1b2c3d4e5/dev/$connect";
    const verdict = (effect: "Allow" | "Deny", resource = METHOD_ARN, context: Record<string, unknown> = {}): InvokeOutcome => ({
      result: { principalId: "alice", policyDocument: { Version: "2012-10-17", Statement: [{ Action: "execute-api:Invoke", Effect: effect, Resource: resource }] }, context },
      durationMs: 1,
      coldStart: false,
    });
    beforeEach(() => start(["$connect", "$disconnect", "$default"], { authorizer: ["route.request.querystring.token"] }));

    it("answers 401 without running anything when the identity source is missing", async () => {
      await assert.rejects(connect(), { status: 401 });
      await assert.rejects(connect({ token: "" }), { status: 401 });
      assert.deepEqual(events, []);
    });

    it("gets the $connect event plus type REQUEST and methodArn", async () => {
      behaviour.authorizer = () => verdict("Allow");
      await connect({ token: "t-1", room: "ops" });
      const e = await waitForEvent("authorizer");
      assert.equal(e.type, "REQUEST");
      assert.equal(e.methodArn, METHOD_ARN);
      assert.deepEqual(e.queryStringParameters, { token: "t-1", room: "ops" });
      assert.equal(e.requestContext.eventType, "CONNECT");
    });

    it("answers 401 when the authorizer throws Unauthorized, 403 on Deny or a policy for another resource, 500 on other failures", async () => {
      behaviour.authorizer = () => ({ error: { errorType: "Error", errorMessage: "Unauthorized" }, durationMs: 1, coldStart: false });
      await assert.rejects(connect({ token: "x" }), { status: 401 });
      behaviour.authorizer = () => verdict("Deny");
      await assert.rejects(connect({ token: "x" }), { status: 403 });
      behaviour.authorizer = () => verdict("Allow", "arn:aws:execute-api:us-east-1:123456789012:a1b2c3d4e5/prod/$connect");
      await assert.rejects(connect({ token: "x" }), { status: 403 });
      behaviour.authorizer = () => ({ error: { errorType: "TypeError", errorMessage: "boom" }, durationMs: 1, coldStart: false });
      await assert.rejects(connect({ token: "x" }), { status: 500 });
      assert.equal(eventsFor("$connect").length, 0, "$connect never ran");
    });

    it("accepts a wildcard Allow, and passes {principalId, ...context} (as strings) to every later event", async () => {
      behaviour.authorizer = () => verdict("Allow", "arn:aws:execute-api:us-east-1:123456789012:a1b2c3d4e5/*", { name: "alice", level: 3 });
      const c = await connect({ token: "x" });
      c.sendText("hello");
      await waitForEvent("$default");
      await c.close();
      await waitForEvent("$disconnect");
      for (const routeKey of ["$connect", "$default", "$disconnect"]) {
        assert.deepEqual(eventsFor(routeKey)[0].requestContext.authorizer, { principalId: "alice", name: "alice", level: "3" }, routeKey);
      }
    });
  });

  describe("stopping", () => {
    it("stopAccepting(): a new connection is refused with 503 at once, before any Lambda runs; open ones carry on", async () => {
      await start(["$connect", "$default"]);
      const open = await connect();
      events = [];
      gateway.stopAccepting();
      await assert.rejects(Client.open(url), { status: 503 });
      assert.equal(eventsFor("$connect").length, 0, "$connect never ran");
      open.sendText("still here");
      assert.equal((await waitForEvent("$default")).body, "still here");
    });

    it("close() closes every connection with 1001 'Going away', and resolves only once their $disconnect has run", async () => {
      await start(["$connect", "$disconnect"]);
      const finished: string[] = [];
      behaviour.$disconnect = async (e) => {
        await new Promise((r) => setTimeout(r, 100));
        finished.push(e.requestContext.connectionId);
        return ok();
      };
      const [a, b] = [await connect(), await connect()];
      await gateway.close();
      assert.equal(finished.length, 2, "both $disconnects finished before close() resolved");
      assert.deepEqual(await a.closed, { code: 1001, reason: "Going away" });
      assert.deepEqual(await b.closed, { code: 1001, reason: "Going away" });
      assert.deepEqual(eventsFor("$disconnect").map((e) => e.requestContext.disconnectStatusCode), [1001, 1001]);
    });

    it("a $connect still running when close() begins ends open-then-closed (1001), so its $disconnect runs too", async () => {
      await start(["$connect", "$disconnect"]);
      let connected!: () => void;
      behaviour.$connect = () => new Promise((resolve) => (connected = () => resolve(ok())));
      const opening = connect();
      await waitForEvent("$connect");
      const closing = gateway.close();
      connected();
      const c = await opening;
      assert.deepEqual(await c.closed, { code: 1001, reason: "Going away" });
      await closing;
      assert.equal(eventsFor("$disconnect").length, 1);
    });

    it("an invocation cancelled by the stop is neither logged nor answered with an error frame", async () => {
      await start(["$default", "sendmessage"], { twoWay: ["sendmessage"] });
      behaviour.$default = () => ({ error: { errorType: "Runtime.Shutdown", errorMessage: "the local stack is stopping" }, durationMs: 0, coldStart: false, cancelled: true });
      behaviour.sendmessage = () => ({ result: { statusCode: 200, body: "after" }, durationMs: 1, coldStart: false });
      const c = await connect();
      c.sendText("cancelled on its way");
      await waitForEvent("$default");
      c.send({ action: "sendmessage" });
      await c.waitFor((f) => f === "after");
      assert.deepEqual(c.frames, ["after"], "no 'Internal server error' frame");
      assert.deepEqual(logs.filter((l) => l.includes("$default")), []);
      assert.equal(logs.filter((l) => l.includes("sendmessage")).length, 1);
    });
  });
});
