/**
 * `npm start -- [--stack dev] [--port 8080] [--data-dir DIR] …`: runs the whole chat locally.
 * Prints the stack outputs as `pulumi stack output` names them, and a line to try it with wscat.
 *
 * Two processes. The one started (by npm, a shell or a test) is a launcher, which stays idle:
 * - It takes the port at once (a busy port fails at once) and answers every request and WebSocket
 *   upgrade there with 503 until the stack is ready, then hands the listening socket over. The
 *   stack's own event loop is blocked for seconds while it loads the program; the launcher's is not,
 *   so a request is never left waiting.
 * - It starts the stack in a process group of its own and relays SIGINT, SIGTERM and SIGHUP to it.
 *   A terminal's Ctrl-C goes to its whole foreground group: were the stack's function instances
 *   and DynamoDB in it, they would die at once, mid-invocation, while the stack tries to stop in
 *   order. With the group apart, only the stack hears the signal, and it stops in order
 *   (LocalStack.stop).
 *
 * Signals sent to npm's pid alone (as process managers and IDEs send them) reach npm, not us:
 * npm relays SIGINT and SIGTERM to the `sh -c` it runs the script in, which dies of SIGTERM and
 * waits through SIGINT; SIGHUP npm does not relay, and dies of it. So the launcher also watches
 * the processes that launched it (its parent, and npm behind that shell): when one is gone it
 * stops the stack. (SIGINT to npm alone would need npm to run the stack without the shell in
 * between: `"start": "exec ts-node …"` in package.json.)
 */
import { ChildProcess, execFileSync, spawn } from "child_process";
import { once } from "events";
import * as fs from "fs";
import { createServer, Server } from "http";
import type { AddressInfo, Server as NetServer } from "net";
import * as os from "os";
import * as path from "path";
import type { Duplex } from "stream";
import { parseArgs } from "util";
import { alive } from "./processes";

const USAGE = `usage: npm start -- [options]
  --stack <name>            stack whose Pulumi.<name>.yaml settings to use (default dev)
  --port <n>                port for the WebSocket and @connections APIs (default 8080; 0 = any free port)
  --data-dir <dir>          keep DynamoDB data in <dir> across restarts (default: in memory)
  --idle-timeout <s>        close idle connections after <s> seconds (default 600, as AWS)
  --max-duration <s>        close every connection after <s> seconds (default 7200, as AWS)
  --management-latency <ms> delay every @connections answer by <ms> (default 0)
  --management-faults 429=<share>,500=<share>
                            answer that share of @connections calls 429 or 500 (fault injection)
  --max-instances <n>       instances per function at most (default 10)
  --instance-idle <s>       end a function instance idle for <s> seconds (default 300; the next
                            invocation cold-starts one)
  --lose-abnormal-disconnects
                            skip $disconnect when a client vanishes without a close frame
  --no-iam                  do not verify signatures or enforce the roles (for comparison: on AWS
                            that work is not done on your machine; here it costs about 5 µs a request)
  --outputs <file>          where to write the outputs JSON (default .local/<stack>/outputs.json)
  --config <key>=<value>    override one of the stack's settings (repeatable), e.g. --config lambdaTimeoutSeconds=2
  -h, --help                this text`;

/** Set in the stack process's environment by its launcher: the port it holds for the stack. */
const STACK_PORT = "LOCAL_STACK_PORT";
const STOP_SIGNALS = ["SIGINT", "SIGTERM", "SIGHUP"] as const;
const HOST = "127.0.0.1";
/** The stack asks its launcher for the port with this message; the answer carries the listening socket. */
const PORT_MESSAGE = "port";

class StartupProblem extends Error {}

function positiveInt(name: string, raw: string | undefined, fallback: number | undefined, min = 1): number | undefined {
  if (raw === undefined) return fallback;
  const value = Number(raw);
  if (!Number.isInteger(value) || value < min || value > 2 ** 31) throw new StartupProblem(`--${name} must be a whole number of at least ${min}; got "${raw}"`);
  return value;
}

function readArgs() {
  return parseArgs({
    options: {
      stack: { type: "string", default: "dev" },
      port: { type: "string", default: "8080" },
      "data-dir": { type: "string" },
      "idle-timeout": { type: "string" },
      "max-duration": { type: "string" },
      "management-latency": { type: "string" },
      "management-faults": { type: "string" },
      "max-instances": { type: "string" },
      "instance-idle": { type: "string" },
      "lose-abnormal-disconnects": { type: "boolean", default: false },
      "no-iam": { type: "boolean", default: false },
      outputs: { type: "string" },
      config: { type: "string", multiple: true },
      help: { type: "boolean", short: "h", default: false },
    },
    strict: true,
  }).values;
}

type Args = ReturnType<typeof readArgs>;

function portOf(args: Args): number {
  const port = positiveInt("port", args.port, 8080, 0)!;
  if (port > 65535) throw new StartupProblem(`--port must be from 0 to 65535; got ${port}`);
  return port;
}

// --- The launcher ------------------------------------------------------------------------------

const STARTING = JSON.stringify({ message: "The local stack is starting; try again in a moment" });

/** Takes the port and answers 503 there (HTTP and WebSocket upgrades alike) until the stack takes it over. */
function holdPort(port: number): Promise<Server> {
  const server = createServer((_req, res) => {
    res.writeHead(503, { "Content-Type": "application/json", "Retry-After": "1", Connection: "close" });
    res.end(STARTING);
  });
  server.on("upgrade", (_req, socket: Duplex) => {
    const head = ["HTTP/1.1 503 Service Unavailable", "Connection: close", "Content-Type: application/json", "Retry-After: 1", `Content-Length: ${Buffer.byteLength(STARTING)}`];
    socket.end(`${head.join("\r\n")}\r\n\r\n${STARTING}`);
  });
  return new Promise((resolve, reject) => {
    server.once("error", (err: NodeJS.ErrnoException) => {
      if (err.code === "EADDRINUSE") reject(new StartupProblem(`port ${port} on ${HOST} is already in use; stop what holds it, or pass --port <n> (--port 0 picks a free one)`));
      else if (err.code === "EACCES") reject(new StartupProblem(`no permission to listen on port ${port}; use a port above 1023`));
      else reject(err);
    });
    server.listen(port, HOST, () => resolve(server));
  });
}

/** The parent of `pid`, or undefined when it cannot be read. */
function parentOf(pid: number): number | undefined {
  try {
    if (process.platform === "linux") return Number(fs.readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1].split(" ")[1]);
    return Number(execFileSync("ps", ["-o", "ppid=", "-p", String(pid)], { encoding: "utf8" }).trim()) || undefined;
  } catch {
    return undefined;
  }
}

function commandOf(pid: number): string {
  try {
    if (process.platform === "linux") return fs.readFileSync(`/proc/${pid}/comm`, "utf8").trim();
    return execFileSync("ps", ["-o", "comm=", "-p", String(pid)], { encoding: "utf8" }).trim();
  } catch {
    return "";
  }
}

/** The processes whose end means "stop": the parent, and npm too when the parent is the shell npm runs scripts in. */
function launchers(): number[] {
  const parent = process.ppid;
  const viaNpmShell = process.env.npm_lifecycle_event !== undefined && /^(sh|dash|bash|zsh)$/.test(path.basename(commandOf(parent)));
  const npm = viaNpmShell ? parentOf(parent) : undefined;
  return npm && npm > 1 ? [parent, npm] : [parent];
}

/** Calls `onGone` once, when one of `pids` has exited (no event tells a process that, so it looks twice a second). */
function watchLaunchers(pids: number[], onGone: (pid: number) => void): void {
  // On Linux, being adopted (our parent is no longer pids[0]) shows even before the old parent is reaped.
  const adopted = () => process.platform === "linux" && parentOf(process.pid) !== pids[0];
  const timer = setInterval(() => {
    const gone = adopted() ? pids[0] : pids.find((pid) => !alive(pid));
    if (gone === undefined) return;
    clearInterval(timer);
    onGone(gone);
  }, 500);
  timer.unref();
}

function exitLike(code: number | null, signal: NodeJS.Signals | null): never {
  process.exit(code ?? 128 + (signal ? os.constants.signals[signal] : 1));
}

async function launch(): Promise<void> {
  const args = readArgs();
  if (args.help) {
    console.log(USAGE);
    return;
  }
  const held = await holdPort(portOf(args));
  for (const stream of [process.stdout, process.stderr]) stream.on("error", () => undefined); // a closed terminal must not end the relay
  // LOCAL_STACK_NODE_OPTIONS adds Node flags (--cpu-prof …) to the stack's process, as LOCAL_LAMBDA_NODE_OPTIONS does for functions.
  const nodeOptions = (process.env.LOCAL_STACK_NODE_OPTIONS ?? "").split(" ").filter(Boolean);
  const child: ChildProcess = spawn(process.execPath, [...nodeOptions, "--require", "ts-node/register/transpile-only", __filename, ...process.argv.slice(2)], {
    detached: true, // a process group of its own: a terminal's Ctrl-C reaches only us, and we relay it
    stdio: ["ignore", "inherit", "inherit", "ipc"], // the channel hands the port over, and tells the stack if we vanish
    env: { ...process.env, [STACK_PORT]: String((held.address() as AddressInfo).port), TS_NODE_TRANSPILE_ONLY: "true" },
  });
  child.on("message", (message: { type?: string }) => {
    if (message?.type === PORT_MESSAGE) child.send({ type: PORT_MESSAGE }, held, () => held.close());
  });
  for (const signal of STOP_SIGNALS) process.on(signal, () => child.kill(signal));
  watchLaunchers(launchers(), (pid) => {
    console.log(`\nThe process that started the local stack (pid ${pid}) is gone.`);
    child.kill("SIGTERM");
  });
  child.on("exit", exitLike);
}

// --- The stack process ---------------------------------------------------------------------------

/** `--config key=value` → `<project>:key` = value; the stack refuses keys the program does not read. */
function configOverrides(project: string, pairs: string[]): Record<string, string> {
  return Object.fromEntries(
    pairs.map((pair) => {
      const at = pair.indexOf("=");
      if (at < 1) throw new StartupProblem(`--config takes <key>=<value>; got "${pair}"`);
      const key = pair.slice(0, at);
      return [key.includes(":") ? key : `${project}:${key}`, pair.slice(at + 1)];
    }),
  );
}

type Stack = import("./stack").LocalStack;

/**
 * Why and how the stack process stops: a signal, its launcher gone, or a crash. Before the stack
 * is ready the abort ends the start at its next step; after, it ends the wait for the stop.
 */
function stopRequests() {
  const controller = new AbortController();
  let exitCode = 0;
  const request = (reason: string, code = 0) => {
    if (controller.signal.aborted) return;
    exitCode = code;
    console.log(`\n${reason}: stopping the local stack…`);
    controller.abort(reason);
  };
  for (const signal of STOP_SIGNALS) process.on(signal, () => request(signal));
  process.on("disconnect", () => request("the launcher exited"));
  // EPIPE on a closed stdout (a terminal gone) must not end the stop half-way.
  for (const stream of [process.stdout, process.stderr]) stream.on("error", () => undefined);
  process.on("uncaughtException", (err) => {
    console.error(err);
    request("uncaught exception", 1);
  });
  return { signal: controller.signal, exitCode: () => exitCode };
}

function printReady(stack: Stack, args: Args): void {
  const outputs = Object.entries(stack.outputs).sort(([a], [b]) => a.localeCompare(b));
  const width = Math.max(6, ...outputs.map(([k]) => k.length));
  console.log(`\nCurrent stack outputs (${outputs.length}):`);
  console.log(`    ${"OUTPUT".padEnd(width)}  VALUE`);
  for (const [key, value] of outputs) console.log(`    ${key.padEnd(width)}  ${typeof value === "string" ? value : JSON.stringify(value)}`);
  for (const [key, note] of Object.entries(stack.outputNotes)) console.log(`  ${key}: ${note}`);
  console.log(`\nChat page: ${stack.pageUrl}`);
  console.log(`Outputs written to ${stack.outputsFile}`);
  console.log(`DynamoDB: ${stack.dynamodb.endpoint} (${args["data-dir"] ? `data in ${args["data-dir"]}` : "in memory"})`);
  if (stack.authEnabled) {
    console.log(`\nAuth is on: connecting needs a token signed with ${stack.tokenKeyFrom}.`);
    console.log(`Mint one:  npm run -s token -- --stack ${args.stack} --local --name alice`);
    console.log(`Try it:    npx wscat -c "${stack.outputs.url}?token=$(npm run -s token -- --stack ${args.stack} --local --name alice)"`);
  } else {
    console.log(`\nTry it:  npx wscat -c ${stack.outputs.url}`);
  }
  console.log(`then:    {"action":"sendmessage","message":"hello"}`);
  console.log(`\nReady (pid ${process.pid}). Ctrl-C stops everything.`);
}

/** Asks the launcher for the socket it holds; fails if the launcher goes first. */
function portFromLauncher(): Promise<NetServer> {
  return new Promise((resolve, reject) => {
    const onMessage = (message: { type?: string }, socket?: NetServer) => {
      if (message?.type !== PORT_MESSAGE || !socket) return;
      process.off("message", onMessage);
      resolve(socket);
    };
    process.on("message", onMessage);
    process.once("disconnect", () => reject(new StartupProblem("the launcher exited before handing the port over")));
    process.send!({ type: PORT_MESSAGE });
  });
}

async function serve(): Promise<void> {
  const stop = stopRequests();
  // This machine runs Node 20; the SDK's notice about Node 22 is noise here (Lambda runs nodejs22.x).
  process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= "true";
  const args = readArgs();
  const port = Number(process.env[STACK_PORT]);
  const idle = positiveInt("idle-timeout", args["idle-timeout"], undefined);
  const max = positiveInt("max-duration", args["max-duration"], undefined);
  const instanceIdle = positiveInt("instance-idle", args["instance-idle"], undefined);

  console.log(`Starting the local stack "${args.stack}"…`);
  const { parseFaults } = await import("./management");
  const { readProjectFile } = await import("./program");
  const { startLocalStack } = await import("./stack");
  let faults;
  try {
    faults = args["management-faults"] === undefined ? undefined : parseFaults(args["management-faults"]);
  } catch (err) {
    throw new StartupProblem((err as Error).message);
  }
  let stack: Stack | undefined;
  try {
    stack = await startLocalStack({
      stack: args.stack!,
      port,
      dataDir: args["data-dir"],
      idleTimeoutMs: idle && idle * 1000,
      maxDurationMs: max && max * 1000,
      managementLatencyMs: positiveInt("management-latency", args["management-latency"], undefined, 0),
      managementFaults: faults,
      maxInstances: positiveInt("max-instances", args["max-instances"], undefined),
      instanceIdleMs: instanceIdle && instanceIdle * 1000,
      loseAbnormalDisconnects: args["lose-abnormal-disconnects"],
      iam: !args["no-iam"],
      outputsFile: args.outputs,
      configOverrides: configOverrides(readProjectFile().name, args.config ?? []),
      signal: stop.signal,
      takeOverPort: portFromLauncher,
    });
  } catch (err) {
    if (!stop.signal.aborted) throw err; // else: stopped while starting, and cleaned up
  }
  if (stack && !stop.signal.aborted) {
    printReady(stack, args);
    await once(stop.signal, "abort");
  }
  let code = stop.exitCode();
  try {
    await stack?.stop(); // each step of it reports its own failure and goes on
  } catch (err) {
    console.error(err);
    code = 1;
  }
  console.log("Stopped.");
  process.exit(code);
}

function fail(err: unknown): never {
  const name = (err as Error)?.name;
  if (err instanceof StartupProblem || ["StartupError", "ProgramError", "SettingsError"].includes(name)) {
    console.error(`error: ${(err as Error).message}`);
  } else if ((err as { code?: string })?.code?.startsWith("ERR_PARSE_ARGS")) {
    console.error(`error: ${(err as Error).message}\n\n${USAGE}`);
  } else {
    console.error(err);
  }
  process.exit(1);
}

if (process.env[STACK_PORT]) serve().catch(fail);
else launch().catch(fail);
