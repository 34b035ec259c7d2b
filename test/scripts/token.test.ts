import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { verifyToken } from "../../handlers/shared/tokens";
import { parseTtl } from "../../scripts/token";
import { PROJECT_DIR } from "../e2e/stack";

const KEY = "z".repeat(48);
const run = (args: string[], env: Record<string, string> = { CHAT_TOKEN_KEY: KEY }) =>
  spawnSync(process.execPath, ["--require", "ts-node/register/transpile-only", "scripts/token.ts", ...args], {
    cwd: PROJECT_DIR,
    encoding: "utf8",
    env: { PATH: process.env.PATH ?? "", ...env },
  });

describe("npm run token", function () {
  this.timeout(30_000);

  it("prints only a token that the stack's key verifies, for that stack, with the name, rooms and lifetime asked for", () => {
    const out = run(["--name", "alice", "--rooms", "general, ops", "--ttl", "2h"]);
    assert.equal(out.status, 0, out.stderr);
    const token = out.stdout.trim();
    assert.equal(out.stdout, `${token}\n`);
    const verified = verifyToken(token, { keys: [KEY], audience: "ws-chat/dev", maxLifetimeSeconds: 30 * 86_400 });
    assert.ok(verified.ok, JSON.stringify(verified));
    assert.equal(verified.claims.name, "alice");
    assert.deepEqual(verified.claims.rooms, ["general", "ops"]);
    const ttl = verified.claims.expiresAt - Math.floor(Date.now() / 1000);
    assert.ok(ttl > 7_190 && ttl <= 7_200, `ttl ${ttl}`);
    const prod = run(["--name", "alice", "--stack", "prod"]).stdout.trim();
    assert.deepEqual(verifyToken(prod, { keys: [KEY], audience: "ws-chat/dev", maxLifetimeSeconds: 3_600 }), { ok: false, problem: "wrong_audience" });
  });

  it("must fail clearly without a name, with a bad ttl or name, or without any key", () => {
    assert.match(run([]).stderr, /error: --name is required/);
    assert.match(run(["--name", "alice", "--ttl", "forever"]).stderr, /--ttl must look like 30m, 1h or 7d/);
    assert.match(run(["--name", "bad name"]).stderr, /name must be/);
    const noKey = run(["--name", "alice", "--stack", "no-such-stack", "--local"], {});
    assert.equal(noKey.status, 1);
    assert.match(noKey.stderr, /token-key does not exist: start the local stack first/);
  });

  it("must refuse a lifetime longer than the stack's tokenMaxLifetimeHours (prod: 168 h), naming it", () => {
    assert.match(run(["--name", "alice", "--stack", "prod", "--ttl", "8d"]).stderr, /longer than the stack accepts \(tokenMaxLifetimeHours: 168 h\)/);
    assert.equal(run(["--name", "alice", "--stack", "prod", "--ttl", "7d"]).status, 0);
    assert.equal(run(["--name", "alice", "--stack", "dev", "--ttl", "30d"]).status, 0, "dev takes Pulumi.yaml's default, 720 h");
  });

  it("reads lifetimes in s, m, h and d, up to 30 days", () => {
    assert.deepEqual(["45s", "15m", "1h", "7d", "30d"].map((t) => parseTtl(t)), [45, 900, 3_600, 604_800, 2_592_000]);
    for (const bad of ["0h", "31d", "1w", "h", "-1h"]) assert.throws(() => parseTtl(bad), /--ttl/);
  });
});
