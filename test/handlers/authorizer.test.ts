import { PutCommand } from "@aws-sdk/lib-dynamodb";
import type { APIGatewayRequestAuthorizerEvent } from "aws-lambda";
import assert from "node:assert/strict";
import { authorizerHandlerFactory } from "../../handlers/authorizer";
import { connectHandlerFactory } from "../../handlers/connect";
import { CLOCK_SKEW_SECONDS, keyIdOf, mintToken, TokenClaims, TokenProblem, verifyToken, VerifierOptions } from "../../handlers/shared/tokens";
import { conditionFailed, connectEvent, lambdaContext, useEnv, withEnv, withLogs, stubDocumentClient } from "./fixtures";

const KEY = "k".repeat(40);
const NOW = 1_800_000_000;
const METHOD_ARN = "arn:aws:execute-api:us-east-1:123456789012:a1b2c3d4e5/prod/$connect";

const AUDIENCE = "ws-chat/prod";
const RULES = { keys: [KEY], audience: AUDIENCE, maxLifetimeSeconds: 3_600, nowSeconds: NOW };
const claims = (extra: Partial<TokenClaims> = {}): TokenClaims => ({ name: "alice", audience: AUDIENCE, issuedAt: NOW - 10, expiresAt: NOW + 60, ...extra });

describe("tokens", () => {
  it("round-trips name, audience, issue time, expiry and rooms, naming the key that signed it", () => {
    const token = mintToken(KEY, claims({ rooms: ["general", "ops"] }));
    assert.match(token, /^v2\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$/);
    assert.deepEqual(verifyToken(token, RULES), { ok: true, claims: claims({ rooms: ["general", "ops"] }), keyId: keyIdOf(KEY) });
  });

  const refused: [string, () => string, Partial<VerifierOptions>, TokenProblem][] = [
    ["an expired token", () => mintToken(KEY, claims({ expiresAt: NOW })), {}, "expired"],
    ["a token signed with a key the stack does not hold", () => mintToken("x".repeat(40), claims()), {}, "unknown_key"],
    ["a token for another stack (audience)", () => mintToken(KEY, claims({ audience: "ws-chat/dev" })), {}, "wrong_audience"],
    ["a token living longer than the stack allows (10 years)", () => mintToken(KEY, claims({ expiresAt: NOW + 10 * 365 * 86_400 })), {}, "too_long_lived"],
    ["a token issued in the future", () => mintToken(KEY, claims({ issuedAt: NOW + CLOCK_SKEW_SECONDS + 60 })), {}, "not_yet_valid"],
    ["a v1 token (no audience or key id)", () => `v1.${Buffer.from(JSON.stringify({ n: "alice", e: NOW + 60 })).toString("base64url")}.sig`, {}, "malformed"],
  ];
  for (const [what, token, rules, problem] of refused) {
    it(`must reject ${what}: ${problem}`, () => {
      assert.deepEqual(verifyToken(token(), { ...RULES, ...rules }), { ok: false, problem });
    });
  }

  it("accepts the previous key's tokens during a rotation, and refuses them once it is dropped", () => {
    const old = "o".repeat(40);
    const token = mintToken(old, claims());
    assert.equal(verifyToken(token, { ...RULES, keys: [KEY, old] }).ok, true);
    assert.deepEqual(verifyToken(token, RULES), { ok: false, problem: "unknown_key" });
  });

  it("must reject a token whose claims were edited (a forged name)", () => {
    const [v, payload, sig] = mintToken(KEY, claims()).split(".");
    const forged = Buffer.from(JSON.stringify({ ...JSON.parse(Buffer.from(payload, "base64url").toString()), n: "admin" })).toString("base64url");
    assert.deepEqual(verifyToken(`${v}.${forged}.${sig}`, RULES), { ok: false, problem: "bad_signature" });
  });

  for (const bad of ["", "v2", "v2..", "v3.a.b", "not-a-token", "v2.a.b.c", `v2.${Buffer.from("[]").toString("base64url")}.x`]) {
    it(`must reject the malformed token ${JSON.stringify(bad)}`, () => {
      assert.equal(verifyToken(bad, RULES).ok, false);
    });
  }

  it("refuses to mint with a short key, a bad name or no audience", () => {
    assert.throws(() => mintToken("short", claims()), /at least 32 characters/);
    assert.throws(() => mintToken(KEY, claims({ name: "bad name" })), /name must be/);
    assert.throws(() => mintToken(KEY, claims({ audience: "" })), /audience/);
  });
});

describe("$connect authorizer", () => {
  withEnv({ TOKEN_KEY: KEY, TOKEN_AUDIENCE: AUDIENCE, TOKEN_MAX_LIFETIME_SECONDS: "3600" });
  withLogs();
  const event = (query: Record<string, string>): APIGatewayRequestAuthorizerEvent =>
    ({ ...connectEvent("BFaT_fALIAMCKug=", query), type: "REQUEST", methodArn: METHOD_ARN }) as unknown as APIGatewayRequestAuthorizerEvent;
  const token = (claims: { name?: string; ttl?: number; rooms?: string[] } = {}) =>
    mintToken(KEY, { name: claims.name ?? "alice", audience: AUDIENCE, issuedAt: Math.floor(Date.now() / 1000) - 100, expiresAt: Math.floor(Date.now() / 1000) + (claims.ttl ?? 60), ...(claims.rooms ? { rooms: claims.rooms } : {}) });

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
    ["a token for another stack", () => ({ token: mintToken(KEY, { name: "alice", audience: "ws-chat/dev", issuedAt: Math.floor(Date.now() / 1000), expiresAt: Math.floor(Date.now() / 1000) + 60 }) })],
    ["a token longer-lived than TOKEN_MAX_LIFETIME_SECONDS", () => ({ token: token({ ttl: 7_200 }) })],
  ];
  for (const [what, query] of denied) {
    it(`denies ${what} (403)`, async () => {
      const result = await authorizerHandlerFactory()(event(query()), lambdaContext);
      assert.equal(result.policyDocument.Statement[0].Effect, "Deny");
      assert.equal(result.context, undefined);
    });
  }

  it("allows tokens signed by TOKEN_PREVIOUS_KEY during a rotation", async () => {
    const previous = "p".repeat(40);
    const now = Math.floor(Date.now() / 1000);
    const old = mintToken(previous, { name: "bo", audience: AUDIENCE, issuedAt: now, expiresAt: now + 60 });
    assert.equal((await authorizerHandlerFactory()(event({ token: old }), lambdaContext)).policyDocument.Statement[0].Effect, "Deny");
    const restore = useEnv({ TOKEN_PREVIOUS_KEY: previous });
    try {
      assert.equal((await authorizerHandlerFactory()(event({ token: old }), lambdaContext)).principalId, "bo");
    } finally {
      restore();
    }
  });

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

  it("must refuse a room outside the token's rooms (403), whatever the authorizer decided, and write nothing", async () => {
    const e = authorized({ room: "general" });
    e.requestContext.authorizer = { principalId: "alice", name: "alice", rooms: "ops,dev" };
    const result = await connectHandlerFactory()(e, lambdaContext);
    assert.equal(result.statusCode, 403);
    assert.equal(JSON.parse(String(result.body)).code, "room_not_allowed");
    assert.equal(stub().commandCalls(PutCommand).length, 0);
  });

  it("with a per-name cap, takes a place before recording (and names it on the record), and refuses with 429 when none is free", async () => {
    const restore = useEnv({ MAX_CONNECTIONS_PER_NAME: "2" });
    try {
      const taken = stub().on(PutCommand, { Item: { holder: "BFaT_fALIAMCKug=" } });
      taken.resolvesOnce({}).rejects(conditionFailed());
      assert.equal((await connectHandlerFactory()(authorized({ room: "ops" }), lambdaContext)).statusCode, 200);
      const record = stub().commandCalls(PutCommand).map((c) => c.args[0].input.Item!).find((item) => item.room === "ops")!;
      assert.match(String(record.place), /^#name#alice#[01]$/);
      const refused = await connectHandlerFactory()(authorized({ room: "ops" }), lambdaContext);
      assert.equal(refused.statusCode, 429);
      assert.equal(JSON.parse(String(refused.body)).code, "too_many_connections");
      assert.equal(stub().commandCalls(PutCommand).filter((c) => c.args[0].input.Item!.room === "ops").length, 1, "no record for the refused one");
    } finally {
      restore();
    }
  });
});
