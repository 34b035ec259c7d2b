/**
 * The Lambda runtime: for each function the program declared, a pool of instances (child
 * processes running lambda-worker.ts over the function's own archive). One invocation runs at a
 * time per instance; under concurrent load more instances start, up to a limit, and the rest
 * queue. Timeouts kill the instance, as Lambda does. Each instance's output is prefixed with the
 * function's name.
 */
import { ChildProcess, fork } from "child_process";
import { randomUUID } from "crypto";
import * as readline from "readline";

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
}

export interface InvokeError {
  errorType: string;
  errorMessage: string;
}

export interface InvokeOutcome {
  result?: unknown;
  error?: InvokeError;
  durationMs: number;
  coldStart: boolean;
}

export interface LambdaRuntimeOptions {
  functions: FunctionSpec[];
  /** Region, fake credentials and local service endpoints, given to every instance. */
  baseEnv: Record<string, string>;
  /** Instances per function at most (Lambda's reserved concurrency, in effect). */
  maxInstances?: number;
  /** Where prefixed instance output goes. */
  write?: (line: string) => void;
}

export interface LambdaRuntime {
  invoke(functionName: string, event: unknown): Promise<InvokeOutcome>;
  /** Instances alive per function, for tests and diagnostics. */
  instanceCount(functionName: string): number;
  close(): Promise<void>;
}

interface Instance {
  child: ChildProcess;
  ready: Promise<void>;
  busy: boolean;
  used: boolean;
  exited: boolean;
  onResult?: (message: { result?: unknown; error?: InvokeError }) => void;
  onExit?: (code: number | null, signal: NodeJS.Signals | null) => void;
}

const WORKER = require.resolve("./lambda-worker.ts");

export function createLambdaRuntime(options: LambdaRuntimeOptions): LambdaRuntime {
  const write = options.write ?? ((line: string) => process.stdout.write(line + "\n"));
  const maxInstances = options.maxInstances ?? 10;
  const specs = new Map(options.functions.map((f) => [f.name, f]));
  const pools = new Map<string, Instance[]>(options.functions.map((f) => [f.name, []]));
  const waiting = new Map<string, ((instance: Instance) => void)[]>(options.functions.map((f) => [f.name, []]));
  let closing = false;

  function pipeLines(stream: NodeJS.ReadableStream | null, prefix: string) {
    if (!stream) return;
    readline.createInterface({ input: stream }).on("line", (line) => write(`${prefix} ${line}`));
  }

  function spawn(spec: FunctionSpec): Instance {
    const child = fork(WORKER, [], {
      execArgv: ["--require", "ts-node/register/transpile-only", `--max-old-space-size=${spec.memoryMb}`],
      env: {
        PATH: process.env.PATH ?? "",
        AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED: "true", // Node 20 here; Lambda runs 22
        ...options.baseEnv,
        ...spec.environment,
        AWS_LAMBDA_FUNCTION_NAME: spec.name,
        AWS_LAMBDA_FUNCTION_MEMORY_SIZE: String(spec.memoryMb),
        AWS_LAMBDA_FUNCTION_VERSION: "$LATEST",
        _HANDLER: spec.handler,
        LOCAL_LAMBDA_ARCHIVE_DIR: spec.archiveDir,
        LOCAL_LAMBDA_FUNCTION_ARN: spec.arn,
      },
      stdio: ["ignore", "pipe", "pipe", "ipc"],
    });
    pipeLines(child.stdout, `[${spec.name}]`);
    pipeLines(child.stderr, `[${spec.name}]`);
    const instance: Instance = { child, busy: false, used: false, exited: false, ready: Promise.resolve() };
    instance.ready = new Promise<void>((resolve, reject) => {
      child.on("message", (message: { type: string; error?: InvokeError; result?: unknown }) => {
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

  function acquire(spec: FunctionSpec): Promise<Instance> {
    const pool = pools.get(spec.name)!;
    const idle = pool.find((i) => !i.busy && !i.exited);
    if (idle) {
      idle.busy = true;
      return Promise.resolve(idle);
    }
    if (pool.length < maxInstances) {
      const fresh = spawn(spec);
      fresh.busy = true;
      return Promise.resolve(fresh);
    }
    return new Promise((resolve) => waiting.get(spec.name)!.push(resolve));
  }

  function release(spec: FunctionSpec, instance: Instance) {
    const next = waiting.get(spec.name)!.shift();
    if (next && !instance.exited) return next(instance);
    instance.busy = false;
    if (next) acquire(spec).then(next); // the instance died: start another for the waiter
  }

  async function invoke(functionName: string, event: unknown): Promise<InvokeOutcome> {
    const spec = specs.get(functionName);
    if (!spec) throw new Error(`no function named ${functionName}`);
    if (closing) return { error: { errorType: "Runtime.Shutdown", errorMessage: "the local stack is stopping" }, durationMs: 0, coldStart: false };
    const instance = await acquire(spec);
    const coldStart = !instance.used;
    instance.used = true;
    const started = Date.now();
    try {
      await instance.ready;
    } catch (err) {
      release(spec, instance);
      return { error: { errorType: "Runtime.InitError", errorMessage: (err as Error).message }, durationMs: Date.now() - started, coldStart };
    }
    const deadline = Date.now() + spec.timeoutSeconds * 1000;
    const outcome = await new Promise<Omit<InvokeOutcome, "durationMs" | "coldStart">>((resolve) => {
      const timer = setTimeout(() => {
        retire(spec, instance); // never handed another invocation
        instance.child.kill("SIGKILL");
        resolve({ error: { errorType: "Sandbox.Timedout", errorMessage: `Task timed out after ${spec.timeoutSeconds.toFixed(2)} seconds` } });
      }, spec.timeoutSeconds * 1000);
      instance.onResult = (message) => {
        clearTimeout(timer);
        resolve(message.error ? { error: message.error } : { result: message.result });
      };
      instance.onExit = (code, signal) => {
        clearTimeout(timer);
        resolve({ error: { errorType: "Runtime.ExitError", errorMessage: `instance exited (code ${code}, signal ${signal})` } });
      };
      instance.child.send({ type: "invoke", id: 1, event, requestId: randomUUID(), deadline });
    });
    instance.onResult = undefined;
    instance.onExit = undefined;
    release(spec, instance);
    return { ...outcome, durationMs: Date.now() - started, coldStart };
  }

  async function close() {
    closing = true;
    const all = [...pools.values()].flat();
    await Promise.all(
      all.map(
        (instance) =>
          new Promise<void>((resolve) => {
            if (instance.exited) return resolve();
            const force = setTimeout(() => instance.child.kill("SIGKILL"), 2_000);
            instance.child.once("exit", () => {
              clearTimeout(force);
              resolve();
            });
            instance.child.kill("SIGTERM");
          }),
      ),
    );
  }

  return {
    invoke,
    instanceCount: (name) => pools.get(name)?.filter((i) => !i.exited).length ?? 0,
    close,
  };
}
