/**
 * The Lambda runtime: for each function the program declared, a pool of instances (child
 * processes running lambda-worker.ts over the function's own archive). One invocation runs at a
 * time per instance; under concurrent load more instances start, up to a limit, and the rest
 * queue. Timeouts kill the instance, as Lambda does. Each instance's output is prefixed with the
 * function's name, and every invocation ends with a REPORT line in Lambda's format (plus the CPU
 * time it used, which Lambda does not print). Asynchronous invocations (InvocationType Event) are
 * queued and retried on failure, as Lambda's event queue does.
 */
import { idleWatch } from "./idle";
import { ChildProcess, fork } from "child_process";
import { randomUUID } from "crypto";
import * as fs from "fs";
import * as os from "os";
import * as path from "path";
import * as readline from "readline";
import * as ts from "typescript";
import { LambdaNode, lambdaNode } from "./node-runtime";

export interface FunctionSpec {
  /** The function's physical name, as Lambda would know it. */
  name: string;
  arn: string;
  /** Folder holding the unpacked archive. */
  archiveDir: string;
  handler: string;
  environment: Record<string, string>;
  timeoutSeconds: number;
  memoryMb: number;
  async?: AsyncConfig;
}

export interface InvokeError {
  errorType: string;
  errorMessage: string;
}

/** What the worker measured: Lambda's REPORT figures, and CPU time. */
export interface InvokeReport {
  cpuMs: number;
  maxMemoryUsedMb: number;
  /** Loading the archive (the factory included); first invocation of an instance only. */
  initDurationMs?: number;
}

export interface InvokeOutcome {
  result?: unknown;
  error?: InvokeError;
  durationMs: number;
  coldStart: boolean;
  requestId?: string;
  report?: InvokeReport;
  /**
   * The local stack ended it on purpose, as it stopped (the instance was ended, or the invocation
   * never got one): not a failure of the function, so no REPORT line and nothing to log as one.
   */
  cancelled?: boolean;
}

/** Lambda's retry settings for asynchronous invocations (aws.lambda.FunctionEventInvokeConfig). */
export interface AsyncConfig {
  maximumRetryAttempts: number;
  maximumEventAgeSeconds: number;
}

/** Lambda's defaults when a function has no FunctionEventInvokeConfig. */
export const DEFAULT_ASYNC_CONFIG: AsyncConfig = { maximumRetryAttempts: 2, maximumEventAgeSeconds: 21_600 };

export interface LambdaRuntimeOptions {
  functions: FunctionSpec[];
  /** Region, fake credentials and local service endpoints, given to every instance. */
  baseEnv: Record<string, string>;
  /** Credentials for a new instance of a function (local/iam.ts); without it, baseEnv's. */
  credentials?: (functionName: string) => { accessKeyId: string; secretAccessKey: string; sessionToken: string };
  /** Instances per function at most (Lambda's reserved concurrency, in effect); default 10. */
  maxInstances?: number;
  /** Invocations per function running at once before the next waits up to `runWaitMs`; default defaultRunLimit(). */
  runLimit?: number;
  /** How long an invocation past the run limit waits for a running one; default RUN_WAIT_MS. */
  runWaitMs?: number;
  /**
   * How long an instance may sit idle before it is ended (its process exits; the next invocation
   * cold-starts another); default DEFAULT_INSTANCE_IDLE_MS.
   */
  instanceIdleMs?: number;
  /** Where prefixed instance output goes. */
  write?: (line: string) => void;
  /** The Node instances run on; default lambdaNode(): the pinned Node 22 build, else this machine's Node. */
  node?: LambdaNode;
  /**
   * Delay before retry k (1-based) of a failed asynchronous invocation. Lambda waits about one
   * minute, then two; locally the default is k seconds so a retry is seen while one waits.
   */
  asyncRetryDelayMs?: (retry: number) => number;
}

export interface LambdaRuntime {
  invoke(functionName: string, event: unknown): Promise<InvokeOutcome>;
  /**
   * Queues the event and returns at once, as Invoke with InvocationType Event does; a failed run
   * is retried per the function's AsyncConfig. Resolves false for an unknown function.
   */
  invokeAsync(functionName: string, event: unknown): boolean;
  /** Asynchronous invocations queued or running, for tests and diagnostics. */
  pendingAsync(): number;
  /** Resolves once every asynchronous invocation (retries included) has ended. */
  drainAsync(): Promise<void>;
  /** Invocations finished so far, per function (never trimmed). */
  invocationCounts(): Record<string, number>;
  /** Finished invocations in order (the latest 10,000), for benchmarks and tests. */
  reports(functionName?: string): (InvokeOutcome & { functionName: string })[];
  /** Instances alive per function, for tests and diagnostics. */
  instanceCount(functionName: string): number;
  /** Invocations running or waiting for an instance now (asynchronous ones included while they run). */
  inFlight(): number;
  /** Resolves true once no invocation is in flight, or false when `timeoutMs` passes first (the stop's drain). */
  idle(timeoutMs: number): Promise<boolean>;
  /**
   * Ends every instance (SIGTERM, SIGKILL after 2 s). Invocations still running or queued end as
   * `cancelled`; later ones are refused the same way. Resolves with what it ended.
   */
  close(): Promise<CloseSummary>;
}

export interface CloseSummary {
  /** Instances that were alive. */
  instances: number;
  /** Invocations cancelled by the stop (running, queued, or asked for after it began). */
  cancelled: number;
}

interface Instance {
  child: ChildProcess;
  ready: Promise<void>;
  busy: boolean;
  /** While idle: the timer that ends it (reclaim). */
  idleTimer?: NodeJS.Timeout;
  used: boolean;
  exited: boolean;
  onResult?: (message: { result?: unknown; error?: InvokeError; report?: InvokeReport }) => void;
  onExit?: (code: number | null, signal: NodeJS.Signals | null) => void;
}

/**
 * The worker runs as plain JavaScript: under ts-node an instance would carry the TypeScript
 * compiler (about 65 MB of RSS and a slower start), which the function never has on Lambda.
 */
function compileWorker(): { file: string; dir: string } {
  const source = fs.readFileSync(require.resolve("./lambda-worker.ts"), "utf8");
  const { outputText } = ts.transpileModule(source, { compilerOptions: { module: ts.ModuleKind.CommonJS, target: ts.ScriptTarget.ES2022 } });
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "ws-chat-lambda-"));
  const file = path.join(dir, "lambda-worker.js");
  fs.writeFileSync(file, outputText);
  return { file, dir };
}

const REPORTS_KEPT = 10_000;

/** How one attempt settled: a result or error, ended by the stop, or never delivered (the instance was already gone). */
const CANCELLED = Symbol("cancelled");
const UNDELIVERED = Symbol("undelivered");
type Settled = Pick<InvokeOutcome, "result" | "error" | "report"> | typeof CANCELLED | typeof UNDELIVERED;

function reportLine(requestId: string, outcome: InvokeOutcome, memoryMb: number): string {
  const r = outcome.report;
  const fields = [
    `REPORT RequestId: ${requestId}`,
    `Duration: ${outcome.durationMs.toFixed(2)} ms`,
    `Billed Duration: ${Math.max(1, Math.ceil(outcome.durationMs))} ms`,
    `Memory Size: ${memoryMb} MB`,
    ...(r ? [`Max Memory Used: ${r.maxMemoryUsedMb} MB`] : []),
    ...(r?.initDurationMs !== undefined ? [`Init Duration: ${r.initDurationMs.toFixed(2)} ms`] : []),
    ...(r ? [`CPU Time: ${r.cpuMs.toFixed(2)} ms`] : []),
    ...(outcome.error ? [`Status: error\tError Type: ${outcome.error.errorType}`] : []),
  ];
  return fields.join("\t");
}

/**
 * An idle instance is ended after this long: Lambda keeps an execution environment "for some time
 * in anticipation of another function invocation" and then ends it, for a time it does not publish
 * (https://docs.aws.amazon.com/lambda/latest/dg/lambda-runtime-environment.html, Shutdown phase).
 * Locally every instance is a process of about 25 MB: kept forever, a session of use held 33 of
 * them (about 780 MB, issue 21). 5 minutes keeps a stack in use warm and frees one left alone.
 */
export const DEFAULT_INSTANCE_IDLE_MS = 5 * 60_000;

/** How long an invocation past the run limit waits for a running one to end before it runs anyway. */
export const RUN_WAIT_MS = 100;

/**
 * Invocations of one function that run at once before the next waits, unless set: twice this
 * machine's CPUs, at least 2. A local instance is a process sharing the machine's CPUs, not a
 * sandbox with CPU of its own as on Lambda: more invocations running at once than the CPUs can
 * serve add no throughput, only contention (more processes woken and switched between, more
 * instances running code their JIT has seen less of). So an invocation past the limit first waits
 * up to RUN_WAIT_MS for a running one to end; then it runs anyway (up to maxInstances), so
 * invocations that wait on I/O (a stalled table, slow posts) still run side by side as on Lambda.
 * Measured on 2 CPUs (issue 10, README "Room capacity").
 */
export function defaultRunLimit(cpus = os.availableParallelism()): number {
  return Math.max(2, 2 * cpus);
}

export function createLambdaRuntime(options: LambdaRuntimeOptions): LambdaRuntime {
  const write = options.write ?? ((line: string) => process.stdout.write(line + "\n"));
  const maxInstances = options.maxInstances ?? 10;
  const runLimit = options.runLimit ?? defaultRunLimit();
  const runWaitMs = options.runWaitMs ?? RUN_WAIT_MS;
  const instanceIdleMs = options.instanceIdleMs ?? DEFAULT_INSTANCE_IDLE_MS;
  const retryDelay = options.asyncRetryDelayMs ?? ((retry: number) => retry * 1000);
  const worker = compileWorker();
  const node = options.node ?? lambdaNode();
  if (node.notice) write(node.notice); // once per runtime: instances do not run Lambda's Node
  const finished: (InvokeOutcome & { functionName: string })[] = [];
  const asyncRuns = new Set<Promise<void>>();
  const counts: Record<string, number> = {};
  const specs = new Map(options.functions.map((f) => [f.name, f]));
  const pools = new Map<string, Instance[]>(options.functions.map((f) => [f.name, []]));
  const waiting = new Map<string, ((instance: Instance) => void)[]>(options.functions.map((f) => [f.name, []]));
  let closing = false;
  let inFlight = 0;
  let cancelled = 0;
  const idleness = idleWatch();

  function pipeLines(stream: NodeJS.ReadableStream | null, prefix: string) {
    if (!stream) return;
    readline.createInterface({ input: stream }).on("line", (line) => write(`${prefix} ${line}`));
  }

  function credentialsEnv(functionName: string): Record<string, string> {
    const issued = options.credentials?.(functionName);
    return issued ? { AWS_ACCESS_KEY_ID: issued.accessKeyId, AWS_SECRET_ACCESS_KEY: issued.secretAccessKey, AWS_SESSION_TOKEN: issued.sessionToken } : {};
  }

  function spawn(spec: FunctionSpec): Instance {
    const child = fork(worker.file, [], {
      execPath: node.execPath,
      // LOCAL_LAMBDA_NODE_OPTIONS adds flags to every instance, e.g. "--cpu-prof --cpu-prof-dir=/tmp/prof".
      execArgv: [`--max-old-space-size=${spec.memoryMb}`, ...(process.env.LOCAL_LAMBDA_NODE_OPTIONS ?? "").split(" ").filter(Boolean)],
      env: {
        PATH: process.env.PATH ?? "",
        // The SDK warns on Node < 22 in each instance; on a fallback Node the notice above said it once.
        ...(node.notice ? { AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED: "true" } : {}),
        ...options.baseEnv,
        ...spec.environment,
        AWS_LAMBDA_FUNCTION_NAME: spec.name,
        AWS_LAMBDA_FUNCTION_MEMORY_SIZE: String(spec.memoryMb),
        AWS_LAMBDA_FUNCTION_VERSION: "$LATEST",
        _HANDLER: spec.handler,
        ...credentialsEnv(spec.name),
        LOCAL_LAMBDA_ARCHIVE_DIR: spec.archiveDir,
        LOCAL_LAMBDA_FUNCTION_ARN: spec.arn,
      },
      stdio: ["ignore", "pipe", "pipe", "ipc"],
    });
    pipeLines(child.stdout, `[${spec.name}]`);
    pipeLines(child.stderr, `[${spec.name}]`);
    const instance: Instance = { child, busy: false, used: false, exited: false, ready: Promise.resolve() };
    instance.ready = new Promise<void>((resolve, reject) => {
      child.on("message", (message: { type: string; error?: InvokeError; result?: unknown; report?: InvokeReport }) => {
        if (message.type === "ready") resolve();
        else if (message.type === "init-error") reject(Object.assign(new Error(message.error?.errorMessage), { errorType: "Runtime.InitError" }));
        else if (message.type === "result") instance.onResult?.(message);
      });
      child.on("exit", (code, signal) => {
        reject(Object.assign(new Error(`instance exited during init (code ${code}, signal ${signal})`), { errorType: "Runtime.InitError" }));
        retire(spec, instance);
        instance.onExit?.(code, signal);
      });
    });
    instance.ready.catch(() => undefined); // observed by the invocation that waits on it
    pools.get(spec.name)!.push(instance);
    return instance;
  }

  function retire(spec: FunctionSpec, instance: Instance) {
    instance.exited = true;
    const pool = pools.get(spec.name)!;
    if (pool.includes(instance)) pool.splice(pool.indexOf(instance), 1);
  }

  /** An idle instance (the oldest, the warmest), else a new one while under maxInstances. */
  function take(spec: FunctionSpec, pool: Instance[]): Instance | undefined {
    const idle = pool.find((i) => !i.busy && !i.exited);
    const instance = idle ?? (pool.length < maxInstances ? spawn(spec) : undefined);
    if (instance) {
      instance.busy = true;
      clearTimeout(instance.idleTimer);
    }
    return instance;
  }

  function acquire(spec: FunctionSpec): Promise<Instance> {
    if (closing) return Promise.resolve(deadInstance()); // no new instance once the stop has begun
    const pool = pools.get(spec.name)!;
    const running = pool.filter((i) => i.busy && !i.exited).length;
    const now = running < runLimit ? take(spec, pool) : undefined;
    if (now) return Promise.resolve(now);
    return new Promise((resolve) => {
      const queue = waiting.get(spec.name)!;
      // Past the run limit it waits for a running invocation to end (release hands it that
      // instance), but not long: then it runs anyway, if an instance can be had (defaultRunLimit).
      const timer = setTimeout(() => {
        const at = queue.indexOf(waiter);
        if (at < 0 || closing) return;
        const instance = take(spec, pool);
        if (!instance) return; // every instance is busy: it waits for one to end
        queue.splice(at, 1);
        resolve(instance);
      }, runWaitMs).unref();
      const waiter = (instance: Instance) => {
        clearTimeout(timer);
        resolve(instance);
      };
      queue.push(waiter);
    });
  }

  function release(spec: FunctionSpec, instance: Instance) {
    const next = waiting.get(spec.name)!.shift();
    if (next && !instance.exited) return next(instance);
    instance.busy = false;
    if (next) acquire(spec).then(next); // the instance died: start another for the waiter
    else if (!instance.exited) instance.idleTimer = setTimeout(() => reclaim(spec, instance), instanceIdleMs).unref();
  }

  /** Ends an instance idle for instanceIdleMs: out of the pool first, so no invocation can take it meanwhile. */
  function reclaim(spec: FunctionSpec, instance: Instance) {
    if (instance.busy || instance.exited || closing) return;
    const pool = pools.get(spec.name)!;
    const at = pool.indexOf(instance);
    if (at < 0) return; // already retired
    pool.splice(at, 1); // its exit marks it exited (retire)
    const pid = instance.child.pid;
    void end(instance).then(() => write(`[${spec.name}] instance ${pid} ended after ${instanceIdleMs / 1000} s idle`));
  }

  /** What a stop gives an invocation it ended, or one asked for after it began. */
  function cancelledOutcome(coldStart = false): InvokeOutcome {
    cancelled++;
    return { error: { errorType: "Runtime.Shutdown", errorMessage: "the local stack is stopping" }, durationMs: 0, coldStart, cancelled: true };
  }

  async function invoke(functionName: string, event: unknown): Promise<InvokeOutcome> {
    const spec = specs.get(functionName);
    if (!spec) throw new Error(`no function named ${functionName}`);
    if (closing) return cancelledOutcome();
    inFlight++;
    try {
      // An instance that died before the event reached it never ran it, so another may, once
      // (Lambda hides a lost sandbox the same way); a second loss is reported as the exit it was.
      const first = await invokeOnce(spec, event);
      return first === UNDELIVERED ? asOutcome(await invokeOnce(spec, event)) : first;
    } finally {
      if (--inFlight === 0) idleness.idle();
    }
  }

  function asOutcome(outcome: InvokeOutcome | typeof UNDELIVERED): InvokeOutcome {
    if (outcome !== UNDELIVERED) return outcome;
    if (closing) return cancelledOutcome();
    return { error: { errorType: "Runtime.ExitError", errorMessage: "instance exited before the invocation reached it" }, durationMs: 0, coldStart: false };
  }

  /** One attempt on one instance: the outcome, or UNDELIVERED when the instance was gone before the event reached it. */
  async function invokeOnce(spec: FunctionSpec, event: unknown): Promise<InvokeOutcome | typeof UNDELIVERED> {
    const instance = await acquire(spec);
    const coldStart = !instance.used;
    instance.used = true;
    const waited = Date.now();
    try {
      await instance.ready;
    } catch (err) {
      release(spec, instance);
      if (closing) return cancelledOutcome(coldStart);
      return { error: { errorType: "Runtime.InitError", errorMessage: (err as Error).message }, durationMs: Date.now() - waited, coldStart };
    }
    // Duration starts once the instance is ready: as on Lambda, a cold start's init is reported apart.
    const started = performance.now();
    const requestId = randomUUID();
    const settled = await runOn(spec, instance, event, requestId);
    instance.onResult = undefined;
    instance.onExit = undefined;
    release(spec, instance);
    if (settled === UNDELIVERED) return UNDELIVERED;
    if (settled === CANCELLED) return cancelledOutcome(coldStart);
    const done: InvokeOutcome = { ...settled, durationMs: performance.now() - started, coldStart, requestId };
    record(spec, done);
    return done;
  }

  /** Hands the event to a ready instance and waits for its result, its exit, or the timeout. */
  function runOn(spec: FunctionSpec, instance: Instance, event: unknown, requestId: string): Promise<Settled> {
    const deadline = Date.now() + spec.timeoutSeconds * 1000;
    return new Promise<Settled>((resolve) => {
      const timer = setTimeout(() => {
        retire(spec, instance); // never handed another invocation
        instance.child.kill("SIGKILL");
        resolve({ error: { errorType: "Sandbox.Timedout", errorMessage: `Task timed out after ${spec.timeoutSeconds.toFixed(2)} seconds` } });
      }, spec.timeoutSeconds * 1000);
      instance.onResult = (message) => {
        clearTimeout(timer);
        resolve(message.error ? { error: message.error, report: message.report } : { result: message.result, report: message.report });
      };
      instance.onExit = (code, signal) => {
        clearTimeout(timer);
        // Ended by the stop: cancelled on purpose, not a crash of the function.
        resolve(closing ? CANCELLED : { error: { errorType: "Runtime.ExitError", errorMessage: `instance exited (code ${code}, signal ${signal})` } });
      };
      const undeliverable = () => {
        clearTimeout(timer);
        retire(spec, instance);
        instance.child.kill("SIGKILL");
        resolve(UNDELIVERED);
      };
      // A worker that died (or is being ended) and whose exit is not yet seen has a closed channel:
      // writing to it would raise EPIPE as an 'error' event and crash the stack. With a callback,
      // the failure comes back here instead.
      if (instance.exited || !instance.child.connected) return undeliverable();
      instance.child.send({ type: "invoke", id: 1, event, requestId, deadline }, (err) => {
        if (err) undeliverable();
      });
    });
  }

  function record(spec: FunctionSpec, done: InvokeOutcome) {
    write(`[${spec.name}] ${reportLine(done.requestId!, done, spec.memoryMb)}`);
    finished.push({ ...done, functionName: spec.name });
    counts[spec.name] = (counts[spec.name] ?? 0) + 1;
    if (finished.length > REPORTS_KEPT) finished.splice(0, finished.length - REPORTS_KEPT);
  }

  function untilIdle(timeoutMs: number): Promise<boolean> {
    return idleness.wait(inFlight === 0, timeoutMs);
  }

  /** Runs once, then retries a failed run (error, timeout, crash) as Lambda's event queue does. */
  async function runAsync(spec: FunctionSpec, event: unknown): Promise<void> {
    const config = spec.async ?? DEFAULT_ASYNC_CONFIG;
    const queuedAt = Date.now();
    for (let attempt = 0; ; attempt++) {
      const outcome = await invoke(spec.name, event);
      if (!outcome.error || closing) return;
      const age = (Date.now() - queuedAt) / 1000;
      if (attempt >= config.maximumRetryAttempts || age >= config.maximumEventAgeSeconds) {
        write(`[${spec.name}] async invocation dropped after ${attempt + 1} attempt(s): ${outcome.error.errorType}: ${outcome.error.errorMessage}`);
        return;
      }
      await new Promise((resolve) => setTimeout(resolve, retryDelay(attempt + 1)));
      if (closing) return;
    }
  }

  function invokeAsync(functionName: string, event: unknown): boolean {
    const spec = specs.get(functionName);
    if (!spec) return false;
    const run = runAsync(spec, event).finally(() => asyncRuns.delete(run));
    asyncRuns.add(run);
    return true;
  }

  async function drainAsync(): Promise<void> {
    while (asyncRuns.size) await Promise.all([...asyncRuns]);
  }

  /** Ends one instance: SIGTERM (the worker exits at once, profiles written), SIGKILL if it lingers. */
  function end(instance: Instance): Promise<void> {
    return new Promise<void>((resolve) => {
      if (instance.exited || instance.child.exitCode !== null || instance.child.signalCode !== null) return resolve();
      const force = setTimeout(() => instance.child.kill("SIGKILL"), 2_000);
      instance.child.once("exit", () => {
        clearTimeout(force);
        resolve();
      });
      instance.child.kill("SIGTERM");
    });
  }

  async function close(): Promise<CloseSummary> {
    closing = true;
    for (const waiters of waiting.values()) waiters.splice(0).forEach((resolve) => resolve(deadInstance()));
    const live = [...pools.values()].flat().filter((instance) => !instance.exited);
    await Promise.all(live.map(end));
    return { instances: live.length, cancelled };
  }

  /** Handed to invocations still waiting for an instance at close: they end cancelled. */
  function deadInstance(): Instance {
    const ready = Promise.reject(new Error("the local stack is stopping"));
    ready.catch(() => undefined); // observed by the invocation that waits on it
    return { child: undefined as unknown as ChildProcess, ready, busy: true, used: true, exited: true };
  }

  return {
    invoke,
    invokeAsync,
    pendingAsync: () => asyncRuns.size,
    invocationCounts: () => ({ ...counts }),
    drainAsync,
    reports: (functionName) => (functionName ? finished.filter((r) => r.functionName === functionName) : [...finished]),
    instanceCount: (name) => pools.get(name)?.filter((i) => !i.exited).length ?? 0,
    inFlight: () => inFlight,
    idle: untilIdle,
    close: async () => {
      try {
        return await close();
      } finally {
        fs.rmSync(worker.dir, { recursive: true, force: true });
      }
    },
  };
}
