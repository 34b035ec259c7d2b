import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as path from "node:path";
import { createLambdaRuntime, defaultRunLimit, FunctionSpec, LambdaRuntime } from "../../local/lambda";
import { PROJECT_DIR } from "../../local/program";

const HANDLERS = `
const instance = require("crypto").randomUUID(); // runs once per instance, like a factory
for (const end = Date.now() + Number(process.env.SLOW_INIT_MS ?? 0); Date.now() < end; ); // a slow factory
let invocations = 0;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
exports.handler = async (event, context) => {
  invocations++;
  if (event.log) console.log(event.log);
  if (event.sleepMs) await sleep(event.sleepMs);
  if (event.fail) throw Object.assign(new Error(event.fail), { name: "ChatBroke" });
  if (event.crash) process.exit(3);
  return { instance, invocations, pid: process.pid, table: process.env.CONNECTIONS_TABLE, endpoint: process.env.AWS_ENDPOINT_URL_DYNAMODB,
           name: context.functionName, remaining: context.getRemainingTimeInMillis(), requestId: context.awsRequestId };
};`;

describe("local Lambda runtime", function () {
  this.timeout(30_000);
  let dir: string;
  let runtime: LambdaRuntime;
  let lines: string[];
  const spec = (overrides: Partial<FunctionSpec> = {}): FunctionSpec => ({
    name: "chat-fn",
    arn: "arn:aws:lambda:us-east-1:123456789012:function:chat-fn",
    archiveDir: dir,
    handler: "__index.handler",
    environment: { CONNECTIONS_TABLE: "connections-x" },
    timeoutSeconds: 2,
    memoryMb: 128,
    ...overrides,
  });

  beforeEach(() => {
    fs.mkdirSync(path.join(PROJECT_DIR, ".local"), { recursive: true });
    dir = fs.mkdtempSync(path.join(PROJECT_DIR, ".local", "lambda-test-"));
    fs.writeFileSync(path.join(dir, "__index.js"), HANDLERS);
    lines = [];
  });
  afterEach(async () => {
    await runtime?.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  const start = (s = spec(), maxInstances = 3, runLimit?: number, runWaitMs?: number) =>
    (runtime = createLambdaRuntime({ functions: [s], maxInstances, runLimit, runWaitMs, baseEnv: { AWS_ENDPOINT_URL_DYNAMODB: "http://127.0.0.1:1" }, write: (l) => lines.push(l) }));
  type Result = { instance: string; invocations: number; pid: number; table: string; endpoint: string; name: string; remaining: number; requestId: string };

  it("runs the archive with the function's environment, local endpoints and a Lambda-like context", async () => {
    start();
    const out = await runtime.invoke("chat-fn", {});
    const r = out.result as Result;
    assert.equal(out.coldStart, true);
    assert.equal(r.table, "connections-x");
    assert.equal(r.endpoint, "http://127.0.0.1:1");
    assert.equal(r.name, "chat-fn");
    assert.ok(r.remaining > 0 && r.remaining <= 2_000);
    assert.match(r.requestId, /^[0-9a-f-]{36}$/);
  });

  it("runs the factory once per instance, and one invocation at a time per instance", async () => {
    start();
    const first = (await runtime.invoke("chat-fn", {})).result as Result;
    const second = await runtime.invoke("chat-fn", {});
    assert.equal(second.coldStart, false);
    assert.equal((second.result as Result).instance, first.instance);
    assert.equal((second.result as Result).invocations, 2);
  });

  it("starts more instances under concurrent load, up to the limit, and queues the rest", async () => {
    start(spec(), 3);
    const results = await Promise.all(Array.from({ length: 7 }, () => runtime.invoke("chat-fn", { sleepMs: 300 })));
    const instances = new Set(results.map((r) => (r.result as Result).instance));
    assert.equal(instances.size, 3);
    assert.equal(runtime.instanceCount("chat-fn"), 3);
    assert.equal(results.filter((r) => r.coldStart).length, 3);
  });

  it("past the run limit, an invocation waits for a running one before it starts an instance, then runs beside it (as one waiting on I/O must)", async () => {
    start(spec({ timeoutSeconds: 30 }), 3, 1);
    const warm = (await runtime.invoke("chat-fn", {})).result as Result;
    let slowEnded = false;
    const slow = runtime.invoke("chat-fn", { sleepMs: 25_000 }).finally(() => (slowEnded = true));
    const next = runtime.invoke("chat-fn", {});
    assert.equal(runtime.instanceCount("chat-fn"), 1, "no instance started at once past the limit");
    const out = await next;
    assert.equal(slowEnded, false, "it ran while the slow one still ran");
    assert.equal(out.coldStart, true);
    assert.notEqual((out.result as Result).instance, warm.instance);
    assert.equal(runtime.instanceCount("chat-fn"), 2);
    await runtime.close(); // cancels the slow one
    await slow;
  });

  it("past the run limit, an invocation gets the instance of the first one to end, warm, when that comes within the wait", async () => {
    start(spec(), 3, 1, 60_000);
    const warm = (await runtime.invoke("chat-fn", {})).result as Result;
    const first = runtime.invoke("chat-fn", { sleepMs: 200 });
    const waiting = runtime.invoke("chat-fn", {});
    const [, out] = await Promise.all([first, waiting]);
    assert.equal(out.coldStart, false);
    assert.equal((out.result as Result).instance, warm.instance);
    assert.equal(runtime.instanceCount("chat-fn"), 1);
  });

  describe("idle instances", () => {
    /** A runtime whose instances are ended after `idleMs` idle; `ended(pid)` resolves when the runtime says it ended that one. */
    function startIdle(idleMs: number) {
      const waiters = new Map<number, () => void>();
      runtime = createLambdaRuntime({
        functions: [spec()],
        maxInstances: 3,
        instanceIdleMs: idleMs,
        baseEnv: {},
        write: (line) => {
          lines.push(line);
          const pid = Number(/^\[chat-fn\] instance (\d+) ended after/.exec(line)?.[1]);
          waiters.get(pid)?.();
        },
      });
      return (pid: number) => new Promise<void>((resolve) => waiters.set(pid, resolve));
    }
    const gone = (pid: number) => assert.throws(() => process.kill(pid, 0), { code: "ESRCH" });

    it("ends an instance idle for instanceIdleMs (its process exits), and the next invocation cold-starts one that answers", async () => {
      const ended = startIdle(50);
      const first = await runtime.invoke("chat-fn", {});
      const pid = (first.result as Result).pid;
      await ended(pid);
      assert.equal(runtime.instanceCount("chat-fn"), 0);
      gone(pid);
      const next = await runtime.invoke("chat-fn", {});
      const r = next.result as Result;
      assert.equal(next.coldStart, true);
      assert.notEqual(r.pid, pid);
      assert.notEqual(r.instance, (first.result as Result).instance);
      assert.equal(r.invocations, 1);
      assert.equal(r.name, "chat-fn");
      assert.equal(runtime.instanceCount("chat-fn"), 1);
    });

    it("never ends a busy instance: a run far longer than the idle time completes, and the instance ends only after it", async () => {
      const ended = startIdle(20);
      const long = await runtime.invoke("chat-fn", { sleepMs: 400 });
      assert.equal(long.error, undefined);
      const pid = (long.result as Result).pid;
      assert.ok(!lines.some((l) => l.includes(`instance ${pid} ended`)), "ended while it ran");
      await ended(pid);
      gone(pid);
      const next = await runtime.invoke("chat-fn", {});
      assert.equal(next.coldStart, true, "the ended instance is not taken again");
      assert.notEqual((next.result as Result).pid, pid);
    });
  });

  it("enforces the timeout by ending the instance, and replaces it on the next invocation", async () => {
    start(spec({ timeoutSeconds: 1 }));
    const before = (await runtime.invoke("chat-fn", {})).result as Result;
    const started = Date.now();
    const timedOut = await runtime.invoke("chat-fn", { sleepMs: 10_000 });
    assert.deepEqual(timedOut.error, { errorType: "Sandbox.Timedout", errorMessage: "Task timed out after 1.00 seconds" });
    assert.ok(Date.now() - started < 3_000);
    const after = await runtime.invoke("chat-fn", {});
    assert.equal(after.coldStart, true);
    assert.notEqual((after.result as Result).instance, before.instance);
  });

  it("reports a thrown error with its type, and the instance lives on", async () => {
    start();
    const out = await runtime.invoke("chat-fn", { fail: "no table" });
    assert.deepEqual(out.error && { t: out.error.errorType, m: out.error.errorMessage }, { t: "ChatBroke", m: "no table" });
    assert.equal((await runtime.invoke("chat-fn", {})).coldStart, false);
  });

  it("reports an instance that exits mid-invocation", async () => {
    start();
    const out = await runtime.invoke("chat-fn", { crash: true });
    assert.equal(out.error?.errorType, "Runtime.ExitError");
  });

  it("prefixes the instance's log lines with the function name", async () => {
    start();
    await runtime.invoke("chat-fn", { log: "hello from the handler" });
    await new Promise((r) => setTimeout(r, 100));
    assert.ok(lines.includes("[chat-fn] hello from the handler"), JSON.stringify(lines));
  });

  it("ends every invocation with a REPORT line in Lambda's format: duration, memory, init on a cold start, CPU time", async () => {
    start();
    const cold = await runtime.invoke("chat-fn", {});
    await runtime.invoke("chat-fn", {});
    const reports = lines.filter((l) => l.startsWith("[chat-fn] REPORT RequestId: "));
    assert.equal(reports.length, 2);
    assert.match(reports[0], new RegExp(`^\\[chat-fn\\] REPORT RequestId: ${cold.requestId}\tDuration: [\\d.]+ ms\tBilled Duration: \\d+ ms\tMemory Size: 128 MB\tMax Memory Used: \\d+ MB\tInit Duration: [\\d.]+ ms\tCPU Time: [\\d.]+ ms$`));
    assert.doesNotMatch(reports[1], /Init Duration/, "init is reported once per instance");
    assert.ok(cold.report!.maxMemoryUsedMb > 10 && cold.report!.maxMemoryUsedMb < 128, `${cold.report!.maxMemoryUsedMb} MB: plain Node, no TypeScript compiler in the instance`);
  });

  it("must report the instance's own peak memory, not the stack's (a forked child inherits its parent's peak maxRSS on Linux)", async () => {
    const ballast = Buffer.alloc(300 * 1024 * 1024, 1); // the stack's process, grown past 300 MB
    start();
    const out = await runtime.invoke("chat-fn", {});
    assert.ok(out.report!.maxMemoryUsedMb > 10 && out.report!.maxMemoryUsedMb < 128, `${out.report!.maxMemoryUsedMb} MB`);
    assert.equal(ballast[ballast.length - 1], 1, "the parent's memory stayed resident while the instance started");
  });

  it("must not count a cold start's init in its Duration: init is reported apart, as Lambda does", async () => {
    start(spec({ environment: { SLOW_INIT_MS: "400" } }));
    const cold = await runtime.invoke("chat-fn", {});
    assert.ok(cold.report!.initDurationMs! >= 400, `init ${cold.report!.initDurationMs} ms`);
    assert.ok(cold.durationMs < 400, `an instant handler's Duration is ${cold.durationMs} ms`);
  });

  it("runs an asynchronous invocation later, and retries a failed one as Lambda's event queue does", async () => {
    runtime = createLambdaRuntime({
      functions: [spec({ async: { maximumRetryAttempts: 2, maximumEventAgeSeconds: 60 } })],
      baseEnv: {},
      write: (l) => lines.push(l),
      asyncRetryDelayMs: () => 10,
    });
    assert.equal(runtime.invokeAsync("chat-fn", { fail: "always" }), true);
    assert.equal(runtime.invokeAsync("no-such-fn", {}), false);
    assert.equal(runtime.pendingAsync(), 1);
    await runtime.drainAsync();
    assert.equal(runtime.reports("chat-fn").length, 3, "the first run and two retries");
    assert.ok(lines.some((l) => /async invocation dropped after 3 attempt\(s\): ChatBroke: always/.test(l)));
  });

  it("reports an archive that fails to load as an init error", async () => {
    fs.writeFileSync(path.join(dir, "__index.js"), "throw new Error('bad archive');");
    start();
    const out = await runtime.invoke("chat-fn", {});
    assert.equal(out.error?.errorType, "Runtime.InitError");
  });

  describe("stopping", () => {
    /** Resolves once a line matching `pattern` has been written (no polling, no sleeping). */
    const lineMatching = (pattern: RegExp) =>
      new Promise<void>((resolve) => {
        const check = () => (lines.some((l) => pattern.test(l)) ? resolve() : setImmediate(check));
        check();
      });
    const errorLines = () => lines.filter((l) => /Status: error|Runtime\.|ERROR/.test(l));

    it("idle() resolves once the invocations in flight have finished, or false at its timeout", async () => {
      start();
      const running = runtime.invoke("chat-fn", { sleepMs: 300 });
      assert.equal(runtime.inFlight(), 1);
      assert.equal(await runtime.idle(10_000), true);
      assert.equal(runtime.inFlight(), 0);
      assert.equal((await running).error, undefined);
      const slow = runtime.invoke("chat-fn", { sleepMs: 1_500 });
      assert.equal(await runtime.idle(20), false, "the drain gives up at its timeout");
      assert.equal((await slow).error, undefined);
    });

    it("close() cancels what still runs or waits, silently (no REPORT, no error line), and refuses later invocations the same way", async () => {
      start(spec({ timeoutSeconds: 30 }), 1);
      const running = runtime.invoke("chat-fn", { log: "started", sleepMs: 20_000 });
      const queued = runtime.invoke("chat-fn", {}); // waits for the one instance
      await lineMatching(/\[chat-fn\] started/);
      const summary = await runtime.close();
      const [ran, waited] = await Promise.all([running, queued]);
      assert.equal(ran.cancelled, true);
      assert.equal(waited.cancelled, true);
      assert.equal(ran.error?.errorType, "Runtime.Shutdown");
      const later = await runtime.invoke("chat-fn", {});
      assert.equal(later.cancelled, true);
      assert.deepEqual(summary, { instances: 1, cancelled: 2 });
      assert.deepEqual(errorLines(), []);
      assert.equal(lines.filter((l) => l.includes("REPORT")).length, 0, "a cancelled invocation has no REPORT line");
      assert.equal(runtime.instanceCount("chat-fn"), 0);
    });

    it("never writes to an instance that died unseen (the EPIPE crash): the event goes to a fresh instance", async () => {
      start();
      const first = (await runtime.invoke("chat-fn", {})).result as Result;
      // Kill the instance and wait, synchronously (so the runtime has not seen its exit yet), until
      // the kernel has released its end of the IPC channel: the next invocation picks it as idle
      // and writes to a closed channel, which fails with EPIPE, as in the crash seen at a stop.
      const channelFd = /(?:^|\0)NODE_CHANNEL_FD=(\d+)/.exec(fs.readFileSync(`/proc/${first.pid}/environ`, "utf8"))![1];
      const inode = /socket:\[(\d+)\]/.exec(fs.readlinkSync(`/proc/${first.pid}/fd/${channelFd}`))![1];
      process.kill(first.pid, "SIGKILL");
      const open = () => fs.readFileSync("/proc/net/unix", "utf8").split("\n").some((line) => line.trim().split(/\s+/)[6] === inode);
      for (const deadline = Date.now() + 5_000; open() && Date.now() < deadline; );
      assert.ok(!open(), "the dead instance's end of the channel was released");
      const out = await runtime.invoke("chat-fn", {});
      assert.equal(out.error, undefined, JSON.stringify(out.error));
      assert.notEqual((out.result as Result).instance, first.instance);
      assert.equal(out.coldStart, true);
    });
  });
});

describe("defaultRunLimit", () => {
  it("must let twice the CPUs run at once, never fewer than 2", () => {
    assert.deepEqual([1, 2, 3, 8].map((cpus) => defaultRunLimit(cpus)), [2, 4, 6, 16]);
  });
});
