import { PutCommand } from "@aws-sdk/lib-dynamodb";
import type { APIGatewayRequestAuthorizerEvent } from "aws-lambda";
import assert from "node:assert/strict";
import { authorizerHandlerFactory } from "../../handlers/authorizer";
import { connectHandlerFactory } from "../../handlers/connect";
import { mintToken, verifyToken } from "../../handlers/shared/tokens";
import { connectEvent, lambdaContext, useEnv, withEnv, withLogs, stubDocumentClient } from "./fixtures";

const KEY = "k".repeat(40);
const NOW = 1_800_000_000;
const METHOD_ARN = "arn:aws:execute-api:us-east-1:123456789012:a1b2c3d4e5/prod/$connect";

describe("tokens", () => {
  it("round-trips name, expiry and rooms", () => {
    const token = mintToken(KEY, { name: "alice", expiresAt: NOW + 60, rooms: ["general", "ops"] });
    assert.match(token, /^v1\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$/);
    assert.deepEqual(verifyToken(KEY, token, NOW), { ok: true, claims: { name: "alice", expiresAt: NOW + 60, rooms: ["general", "ops"] } });
  });

  it("must reject an expired token", () => {
    const token = mintToken(KEY, { name: "alice", expiresAt: NOW });
    assert.deepEqual(verifyToken(KEY, token, NOW), { ok: false, problem: "expired" });
  });

  it("must reject a token signed with another key", () => {
    assert.deepEqual(verifyToken(KEY, mintToken("x".repeat(40), { name: "alice", expiresAt: NOW + 60 }), NOW), { ok: false, problem: "bad_signature" });
  });

  it("must reject a token whose claims were edited (a forged name)", () => {
    const [v, , sig] = mintToken(KEY, { name: "alice", expiresAt: NOW + 60 }).split(".");
    const forged = Buffer.from(JSON.stringify({ n: "admin", e: NOW + 60 })).toString("base64url");
    assert.deepEqual(verifyToken(KEY, `${v}.${forged}.${sig}`, NOW), { ok: false, problem: "bad_signature" });
  });

  for (const bad of ["", "v1", "v1..", "v2.a.b", "not-a-token", "v1.a.b.c"]) {
    it(`must reject the malformed token ${JSON.stringify(bad)}`, () => {
      assert.equal(verifyToken(KEY, bad, NOW).ok, false);
    });
  }

  it("refuses to mint with a short key or a bad name", () => {
    assert.throws(() => mintToken("short", { name: "alice", expiresAt: NOW }), /at least 32 characters/);
    assert.throws(() => mintToken(KEY, { name: "bad name", expiresAt: NOW }), /name must be/);
  });
});

describe("$connect authorizer", () => {
  withEnv({ TOKEN_KEY: KEY });
  withLogs();
  const event = (query: Record<string, string>): APIGatewayRequestAuthorizerEvent =>
    ({ ...connectEvent("BFaT_fALIAMCKug=", query), type: "REQUEST", methodArn: METHOD_ARN }) as unknown as APIGatewayRequestAuthorizerEvent;
  const token = (claims: { name?: string; ttl?: number; rooms?: string[] } = {}) =>
    mintToken(KEY, { name: claims.name ?? "alice", expiresAt: Math.floor(Date.now() / 1000) + (claims.ttl ?? 60), ...(claims.rooms ? { rooms: claims.rooms } : {}) });

  it("allows a valid token for methodArn, passing the verified name in context", async () => {
    const result = await authorizerHandlerFactory()(event({ token: token({ rooms: ["general"] }) }), lambdaContext);
    assert.equal(result.principalId, "alice");
    assert.deepEqual(result.policyDocument.Statement, [{ Action: "execute-api:Invoke", Effect: "Allow", Resource: METHOD_ARN }]);
    assert.deepEqual(result.context, { name: "alice", rooms: "general" });
  });

  const denied: [string, () => Record<string, string>][] = [
    ["an expired token", () => ({ token: token({ ttl: -5 }) })],
    ["a bad signature", () => ({ token: token().slice(0, -2) + "xx" })],
    ["a token for other rooms", () => ({ token: token({ rooms: ["ops"] }), room: "general" })],
    ["a token for other rooms (default room)", () => ({ token: token({ rooms: ["ops"] }) })],
  ];
  for (const [what, query] of denied) {
    it(`denies ${what} (403)`, async () => {
      const result = await authorizerHandlerFactory()(event(query()), lambdaContext);
      assert.equal(result.policyDocument.Statement[0].Effect, "Deny");
      assert.equal(result.context, undefined);
    });
  }

  it("throws Unauthorized (401) without a token", async () => {
    await assert.rejects(authorizerHandlerFactory()(event({}), lambdaContext), /^Error: Unauthorized$/);
  });

  it("must fail at cold start with a key shorter than 32 characters", () => {
    const restore = useEnv({ TOKEN_KEY: "short" });
    try {
      assert.throws(() => authorizerHandlerFactory(), /at least 32 characters/);
    } finally {
      restore();
    }
  });
});

describe("$connect with the authorizer's context", () => {
  const stub = stubDocumentClient();
  withEnv({ CONNECTIONS_TABLE: "connections-test", ROOM_INDEX: "byRoom" });
  withLogs();
  beforeEach(() => stub().on(PutCommand).resolves({}));

  const authorized = (query: Record<string, string>) => {
    const e = connectEvent("BFaT_fALIAMCKug=", query);
    e.requestContext.authorizer = { principalId: "alice", name: "alice", rooms: "" };
    return e;
  };

  it("stores the verified name and must ignore a name parameter, even an invalid one", async () => {
    for (const name of ["mallory", "<script>"]) {
      stub().resetHistory();
      const result = await connectHandlerFactory()(authorized({ name, room: "ops" }), lambdaContext);
      assert.equal(result.statusCode, 200);
      const item = stub().commandCalls(PutCommand)[0].args[0].input.Item!;
      assert.deepEqual([item.name, item.room], ["alice", "ops"]);
    }
  });

  it("still refuses a bad room with 400", async () => {
    assert.equal((await connectHandlerFactory()(authorized({ room: "../x" }), lambdaContext)).statusCode, 400);
  });
});
