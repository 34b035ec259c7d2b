import assert from "node:assert/strict";
import { execFileSync, spawnSync } from "node:child_process";
import { createServer } from "node:net";
import { Client } from "../e2e/clients";
import { localStack, PROJECT_DIR } from "../e2e/stack";

const cli = (args: string[]) =>
  spawnSync(process.execPath, ["--require", "ts-node/register/transpile-only", "local/cli.ts", ...args], { cwd: PROJECT_DIR, encoding: "utf8", timeout: 60_000 });

describe("npm start (the local stack's CLI)", function () {
  this.timeout(60_000);

  it("must fail clearly when the port is in use", async () => {
    const blocker = createServer().listen(0, "127.0.0.1");
    await new Promise((r) => blocker.once("listening", r));
    const port = (blocker.address() as { port: number }).port;
    try {
      const run = cli(["--port", String(port)]);
      assert.equal(run.status, 1);
      assert.match(run.stderr, new RegExp(`error: port ${port} on 127.0.0.1 is already in use`));
    } finally {
      blocker.close();
    }
  });

  it("must fail clearly on an unknown stack or a bad flag", () => {
    const stack = cli(["--stack", "staging", "--port", "0"]);
    assert.equal(stack.status, 1);
    assert.match(stack.stderr, /error: no stack "staging".*stacks: dev, prod/);
    const port = cli(["--port", "eighty"]);
    assert.equal(port.status, 1);
    assert.match(port.stderr, /--port must be a whole number/);
  });

  it("must refuse an unknown --config key, naming the known keys (and the likely one)", () => {
    const run = cli(["--port", "0", "--config", "foo=bar"]);
    assert.equal(run.status, 1);
    assert.match(run.stderr, /error: unknown setting "foo" \(--config foo=…\)/);
    assert.match(run.stderr, /known keys: stageName, .*lambdaTimeoutSeconds, .*tokenKey, tokenPreviousKey, aws:region/);
    const typo = cli(["--port", "0", "--config", "lambdaTimeoutSecond=2"]);
    assert.equal(typo.status, 1);
    assert.match(typo.stderr, /unknown setting "lambdaTimeoutSecond".*did you mean lambdaTimeoutSeconds\?/);
    const namespaced = cli(["--port", "0", "--config", "aws:profile=x"]);
    assert.match(namespaced.stderr, /unknown setting "aws:profile"/);
  });

  it("stops cleanly on SIGTERM and leaves no stray processes", async () => {
    const stack = await localStack();
    const client = await Client.open(stack.outputs.url);
    await client.connectionId(); // starts $connect and $default instances
    const cliPid = Number(/pid (\d+)/.exec(stack.logs())?.[1]);
    const children = execFileSync("ps", ["-o", "pid=", "--ppid", String(cliPid)], { encoding: "utf8" }).split("\n").map(Number).filter(Boolean);
    assert.ok(children.length >= 2, `instances running: ${children}`);
    await stack.stop(); // throws unless the CLI exits 0
    assert.equal((await client.closed).code, 1001);
    for (const pid of children) assert.throws(() => process.kill(pid, 0), { code: "ESRCH" }, `process ${pid} survived`);
  });
});
