/**
 * How the local stack starts and stops (issue 12, "Start and stop", "Settings and outputs"): 503
 * at once while it starts; a stop in order (new connections refused, running invocations drained,
 * 1001 to every client, then the workers) with no error line; every stop signal, sent to the
 * stack, to its launcher, to npm, or to a terminal's whole process group, leaving no process and
 * no folder; outputs that stand in for what only AWS has are marked; stacks of one name never
 * clobber each other's outputs file. Every wait is on an event or an output line, never a sleep.
 */
import assert from "node:assert/strict";
import { ChildProcess, spawn } from "node:child_process";
import { once } from "node:events";
import * as fs from "node:fs";
import { connect as tcpConnect, createServer, Socket } from "node:net";
import * as os from "node:os";
import * as path from "node:path";
import {
  checkConfigOverrides,
  knownConfigKeys,
  liveRuns,
  localOutputs,
  NOT_SERVED_LOCALLY,
  publishOutputs,
  startLocalStack,
  sweepDeadRuns,
} from "../../local/stack";
import { FAKE_ACCOUNT_ID } from "../../local/program";
import { Client } from "../e2e/clients";
import { PROJECT_DIR } from "../e2e/stack";

/** Whatever a stop must not print: a function's failure, a crash, an instance that died mid-invocation. */
const ERROR_LINE = /Runtime\.\w+|Status: error|EPIPE|"level":"error"|\bERROR\b|Error:|warning:/;
const errorLines = (output: string) => output.split("\n").filter((l) => ERROR_LINE.test(l));

/** Alive and not a zombie (a zombie has exited and only waits for its parent to reap it). */
function running(pid: number): boolean {
  try {
    return fs.readFileSync(`/proc/${pid}/stat`, "utf8").replace(/\(.*\)/, "x").split(" ")[2] !== "Z";
  } catch {
    return false;
  }
}

/** The children of `pid`, from /proc (no `ps`, which would count itself among this process's children). */
function childrenOf(pid: number): number[] {
  try {
    return fs.readdirSync(`/proc/${pid}/task`).flatMap((task) => fs.readFileSync(`/proc/${pid}/task/${task}/children`, "utf8").split(" ").map(Number).filter(Boolean));
  } catch {
    return []; // gone
  }
}

/** Every process below `pid`: children, theirs, and so on (a detached child is still a child). */
const descendants = (pid: number): number[] => childrenOf(pid).flatMap((child) => [child, ...descendants(child)]);

/** The folder a Lambda runtime compiled its worker into (ws-chat-lambda-* in the system temp dir), read off a worker's command line. */
function workerDirOf(pids: number[]): string | undefined {
  for (const pid of pids) {
    const args = fs.readFileSync(`/proc/${pid}/cmdline`, "utf8").split("\0");
    const worker = args.find((a) => a.includes(`${path.sep}ws-chat-lambda-`));
    if (worker) return path.dirname(worker);
  }
  return undefined;
}

function freePort(): Promise<number> {
  const server = createServer().listen(0, "127.0.0.1");
  return once(server, "listening").then(() => {
    const { port } = server.address() as { port: number };
    return new Promise<number>((resolve) => server.close(() => resolve(port)));
  });
}

/** One run of the CLI (directly, or through `npm start`), followed line by line. */
class Run {
  output = "";
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** stdout and stderr closed: every process that writes to them (launcher, stack, DynamoDB) is gone. */
  readonly ended: Promise<void>;
  private wake: (() => void)[] = [];

  private constructor(readonly child: ChildProcess) {
    const onData = (d: Buffer) => {
      this.output += d;
      for (const w of this.wake.splice(0)) w();
    };
    child.stdout!.on("data", onData);
    child.stderr!.on("data", onData);
    this.exited = once(child, "exit").then(([code, signal]) => ({ code, signal }));
    this.ended = Promise.all([once(child.stdout!, "close"), once(child.stderr!, "close")]).then(() => undefined);
  }

  /** `node local/cli.ts …`, as the e2e suite and tools start it. */
  static node(args: string[], options: { detached?: boolean; env?: Record<string, string> } = {}) {
    return new Run(
      spawn(process.execPath, ["--require", "ts-node/register/transpile-only", "local/cli.ts", ...args], {
        cwd: PROJECT_DIR,
        detached: options.detached,
        env: { ...process.env, ...options.env },
      }),
    );
  }

  /** `npm start -- …`, as a person, an IDE or a process manager starts it. */
  static npm(args: string[], options: { detached?: boolean; scriptShell?: string } = {}) {
    const shell = options.scriptShell ? [`--script-shell=${options.scriptShell}`] : [];
    return new Run(spawn("npm", ["start", ...shell, "--", ...args], { cwd: PROJECT_DIR, detached: options.detached }));
  }

  /** Resolves with the first match of `pattern` in the output (seen or to come). */
  async until(pattern: RegExp, timeoutMs = 120_000): Promise<RegExpMatchArray> {
    const deadline = Date.now() + timeoutMs;
    let ended = false;
    void this.ended.then(() => (ended = true));
    for (;;) {
      const found = pattern.exec(this.output);
      if (found) return found;
      if (ended) throw new Error(`the run ended without ${pattern}:\n${this.output.slice(-3000)}`);
      if (Date.now() > deadline) throw new Error(`no ${pattern} in ${timeoutMs} ms:\n${this.output.slice(-3000)}`);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, deadline - Date.now());
        const done = () => {
          clearTimeout(timer);
          resolve();
        };
        this.wake.push(done);
        void this.ended.then(done);
      });
    }
  }

  async stackPid(): Promise<number> {
    return Number((await this.until(/Ready \(pid (\d+)\)/))[1]);
  }
}

/** What a running stack consists of, noted before it is stopped, to check that none of it is left. */
interface Snapshot {
  pids: number[];
  workerDir: string;
  runDir: string;
  outputsFile: string;
  client: Client;
}

/** Waits for Ready, connects a client (which starts function instances), and notes every process and folder. */
async function snapshot(run: Run, outputsFile: string, stack = "dev"): Promise<Snapshot> {
  const stackPid = await run.stackPid();
  const outputs = JSON.parse(fs.readFileSync(outputsFile, "utf8"));
  const client = await Client.open(outputs.url);
  await client.connectionId(); // $connect and $default instances now run
  const children = childrenOf(stackPid);
  assert.ok(children.length >= 3, `DynamoDB and function instances under the stack: ${children}`);
  const workerDir = workerDirOf(children);
  assert.ok(workerDir && fs.existsSync(workerDir), "the runtime's worker folder exists while it runs");
  const runDir = path.join(PROJECT_DIR, ".local", stack, `run-${stackPid}`);
  assert.ok(fs.existsSync(runDir), `${runDir} exists while it runs`);
  const pids = [run.child.pid!, ...descendants(run.child.pid!)];
  assert.ok(pids.includes(stackPid) && children.every((pid) => pids.includes(pid)), `${pids} holds the stack and its children`);
  return { pids, workerDir, runDir, outputsFile, client };
}

async function assertStoppedCleanly(run: Run, snap: Snapshot) {
  await run.ended;
  assert.match(run.output, /\nStopped\.\n/, run.output.slice(-2000));
  assert.deepEqual(await snap.client.closed, { code: 1001, reason: "Going away" });
  assert.deepEqual(errorLines(run.output), [], "no error line");
  for (const pid of snap.pids) assert.ok(!running(pid), `process ${pid} is left`);
  for (const folder of [snap.workerDir, snap.runDir, snap.outputsFile]) assert.ok(!fs.existsSync(folder), `${folder} is left`);
}

describe("the local stack's start and stop", function () {
  this.timeout(180_000);
  let tmp: string;
  const runs: Run[] = [];
  const outputsFile = () => path.join(tmp, "outputs.json");

  beforeEach(() => {
    tmp = fs.mkdtempSync(path.join(os.tmpdir(), "ws-chat-lifecycle-"));
  });
  afterEach(async () => {
    // A failed test must not leave a stack behind: its launcher relays SIGTERM.
    for (const run of runs.splice(0)) {
      if (run.child.exitCode === null && run.child.signalCode === null) run.child.kill("SIGTERM");
      await run.ended;
    }
    fs.rmSync(tmp, { recursive: true, force: true });
  });
  const track = (run: Run) => (runs.push(run), run);

  describe("start", () => {
    it("answers 503 at once while it starts, HTTP and WebSocket alike, without waiting for the program to load; then serves on that port", async () => {
      const port = await freePort();
      const run = track(Run.node(["--port", String(port), "--outputs", outputsFile()]));
      await run.until(/Loading the program/);
      const page = await fetch(`http://127.0.0.1:${port}/`);
      await assert.rejects(Client.open(`ws://127.0.0.1:${port}/dev`), { status: 503 });
      // Both answered while the stack process was still loading the program (its event loop busy):
      // the launcher holds the port and answers for it.
      assert.doesNotMatch(run.output, /Starting DynamoDB/, "answered before the program had loaded");
      assert.equal(page.status, 503);
      assert.equal(page.headers.get("retry-after"), "1");
      assert.deepEqual(await page.json(), { message: "The local stack is starting; try again in a moment" });
      await run.until(/Ready \(pid/);
      assert.equal((await fetch(`http://127.0.0.1:${port}/`)).status, 200);
      const client = await Client.open(`ws://127.0.0.1:${port}/dev`);
      await client.connectionId();
      run.child.kill("SIGTERM");
      assert.equal((await run.exited).code, 0);
    });

    it("a stop signal while it starts ends the start: exit 0 after \"Stopped.\", no process or folder left", async () => {
      const run = track(Run.node(["--port", "0", "--outputs", outputsFile()]));
      await run.until(/Loading the program/);
      const [stackPid] = childrenOf(run.child.pid!);
      const pids = [run.child.pid!, stackPid, ...descendants(stackPid)];
      run.child.kill("SIGINT");
      assert.deepEqual(await run.exited, { code: 0, signal: null });
      await run.ended;
      assert.match(run.output, /SIGINT: stopping the local stack…\nStopped\.\n$/);
      assert.doesNotMatch(run.output, /Ready/);
      assert.deepEqual(errorLines(run.output), []);
      for (const pid of pids) assert.ok(!running(pid), `process ${pid} is left`);
      for (const folder of [path.join(PROJECT_DIR, ".local", "dev", `run-${stackPid}`), outputsFile()]) assert.ok(!fs.existsSync(folder), `${folder} is left`);
    });

    it("prints its progress while it starts, then the outputs and the Ready line", async () => {
      const run = track(Run.node(["--port", "0", "--outputs", outputsFile()]));
      await run.until(/Ready \(pid \d+\)\. Ctrl-C stops everything\./);
      const steps = ["Starting the local stack \"dev\"…", "Loading the program", "Starting DynamoDB (2 tables)…", /Starting \d+ functions/, "Current stack outputs"];
      let at = 0;
      for (const step of steps) {
        const index = typeof step === "string" ? run.output.indexOf(step, at) : run.output.slice(at).search(step) + at;
        assert.ok(index >= at, `"${step}" in order in:\n${run.output}`);
        at = index;
      }
      run.child.kill("SIGTERM");
      assert.equal((await run.exited).code, 0);
    });
  });

  describe("stop, in order", () => {
    /** A WebSocket client that never answers the close frame: the stop must wait for it (up to its limit), which holds the stop open. */
    async function silentClient(url: string): Promise<Socket> {
      const target = new URL(url);
      const socket = tcpConnect(Number(target.port), target.hostname);
      await once(socket, "connect");
      socket.write(
        [`GET ${target.pathname} HTTP/1.1`, `Host: ${target.host}`, "Upgrade: websocket", "Connection: Upgrade", "Sec-WebSocket-Version: 13", "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==", "", ""].join("\r\n"),
      );
      const [head] = (await once(socket, "data")) as [Buffer];
      assert.match(head.toString(), /^HTTP\/1\.1 101 /);
      socket.on("data", () => undefined); // reads, never answers
      return socket;
    }

    it("refuses new connections and page loads (503), answers what was sent, closes every client with 1001, then ends the workers: no error line, nothing left", async () => {
      const lines: string[] = [];
      const stack = await startLocalStack({ stack: "dev", port: 0, outputsFile: outputsFile(), log: (l) => lines.push(l) });
      const stateDir = path.join(PROJECT_DIR, ".local", "dev");
      const runDirs = fs.readdirSync(stateDir).filter((name) => new RegExp(`^run-${process.pid}(-\\d+)?$`).test(name));
      assert.equal(runDirs.length, 1, "this stack's run folder");
      const runDir = path.join(stateDir, runDirs[0]);
      const clients = await Promise.all([0, 1, 2].map((i) => Client.open(stack.outputs.url, { name: `c${i}`, room: "stop" })));
      const ids = await Promise.all(clients.map((c) => c.connectionId()));
      // Warm sendmessage instances, so the drain below is not spent on cold starts.
      await Promise.all(clients.map((c, i) => c.sendReliably(`warm ${i}`, `warm-${i}`)));
      const workerDir = workerDirOf(childrenOf(process.pid))!;
      assert.ok(workerDir && fs.existsSync(workerDir));
      const silent = await silentClient(stack.outputs.url);

      const finished = () => Object.values(stack.lambdas.invocationCounts()).reduce((a, b) => a + b, 0);
      const before = finished();
      clients.forEach((c, i) => c.send({ action: "sendmessage", message: `last words ${i}`, id: `last-${i}` }));
      // Stop once the three have reached the stack (running, or done already): what the drain is for.
      while (stack.lambdas.inFlight() + finished() - before < 3) await new Promise((r) => setImmediate(r));
      const stopping = stack.stop();
      await assert.rejects(Client.open(stack.outputs.url), { status: 503 });
      const page = await fetch(stack.pageUrl);
      assert.equal(page.status, 503);
      assert.deepEqual(await page.json(), { message: "The local stack is stopping" });
      await stopping;

      // Each message sent before the stop was answered before its client was closed: the drain
      // waited for it. Only one still running after the drain's limit (a very busy machine) is
      // cancelled, and then the stop says so.
      const cancelled = Number(/(\d+) invocation\(s\) still running were cancelled/.exec(lines.join("\n"))?.[1] ?? 0);
      let unanswered = 0;
      for (const [i, c] of clients.entries()) {
        assert.deepEqual(await c.closed, { code: 1001, reason: "Going away" });
        const answer = c.json().find((f) => f.id === `last-${i}`);
        if (!answer) unanswered++;
        else assert.ok(["ack", "error"].includes(String(answer.type)), JSON.stringify(answer));
      }
      assert.ok(unanswered <= cancelled, `${unanswered} message(s) unanswered, ${cancelled} invocation(s) cancelled:\n${lines.slice(-20).join("\n")}`);
      for (const id of ids) assert.ok(lines.some((l) => l.startsWith(`[gateway] $disconnect ${id} `) && / 200( \(cold\))?$/.test(l)), `${id}'s $disconnect ran`);
      assert.deepEqual(errorLines(lines.join("\n")), []);
      assert.ok(lines.includes("Closing 4 connection(s) (1001 Going away)…"), lines.join("\n"));
      assert.equal(childrenOf(process.pid).filter((pid) => running(pid)).length, 0, "no worker or DynamoDB process left");
      for (const folder of [workerDir, runDir, outputsFile()]) assert.ok(!fs.existsSync(folder), `${folder} is left`);
      silent.destroy();
      await stack.stop(); // a second stop is the same stop
    });
  });

  describe("stop signals: each leaves no process and no folder", () => {
    for (const signal of ["SIGINT", "SIGTERM", "SIGHUP"] as const) {
      it(`${signal} to the stack process (the pid on the Ready line): exit 0 after "Stopped."`, async () => {
        const run = track(Run.node(["--port", "0", "--outputs", outputsFile()]));
        const snap = await snapshot(run, outputsFile());
        process.kill(await run.stackPid(), signal);
        assert.deepEqual(await run.exited, { code: 0, signal: null });
        assert.match(run.output, new RegExp(`${signal}: stopping the local stack`));
        await assertStoppedCleanly(run, snap);
      });

      it(`${signal} to the launcher (the process \`node local/cli.ts\` is): relayed, exit 0 after "Stopped."`, async () => {
        const run = track(Run.node(["--port", "0", "--outputs", outputsFile()]));
        const snap = await snapshot(run, outputsFile());
        run.child.kill(signal);
        assert.deepEqual(await run.exited, { code: 0, signal: null });
        await assertStoppedCleanly(run, snap);
      });
    }

    it("Ctrl-C in a terminal (SIGINT to npm start's whole process group) with clients sending: the instances are not in that group, so they finish or are cancelled silently", async () => {
      const run = track(Run.npm(["--port", "0", "--outputs", outputsFile()], { detached: true }));
      const snap = await snapshot(run, outputsFile());
      const outputs = JSON.parse(fs.readFileSync(outputsFile(), "utf8"));
      const senders = await Promise.all([0, 1, 2].map((i) => Client.open(outputs.url, { name: `s${i}`, room: "ctrl-c" })));
      let n = 0;
      const chatter = setInterval(() => senders.forEach((c, i) => c.socket.readyState === c.socket.OPEN && c.send({ action: "sendmessage", message: `m${n}`, id: `${i}-${n++}` })), 400);
      await Promise.all(senders.map((c) => c.waitFor((f) => f.includes('"type":"ack"'), 60_000)));
      process.kill(-run.child.pid!, "SIGINT");
      // The launcher exits 0; the `sh -c` between it and npm then dies of the SIGINT it waited
      // through, and npm, seeing that, re-raises it: the usual exit of a program stopped by Ctrl-C.
      const exit = await run.exited;
      assert.ok(exit.code === 0 || exit.signal === "SIGINT", JSON.stringify(exit));
      clearInterval(chatter);
      await assertStoppedCleanly(run, snap);
      for (const c of senders) assert.equal((await c.closed).code, 1001);
    });

    for (const signal of ["SIGTERM", "SIGHUP"] as const) {
      it(`${signal} to npm's pid alone (as process managers send it): npm goes, the stack sees it go and stops`, async () => {
        const run = track(Run.npm(["--port", "0", "--outputs", outputsFile()]));
        const snap = await snapshot(run, outputsFile()); // npm, the `sh -c` it runs the script in, the launcher, the stack, …
        run.child.kill(signal);
        await run.exited; // npm's own exit (it re-raises the signal its script shell died of, or dies of SIGHUP)
        // npm relays SIGTERM to its child (the launcher itself, with `exec` in the start script); it
        // dies of SIGHUP, and the launcher sees its parent go. Either way the stack stops.
        await run.until(/(is gone\.\n\nSIGTERM|SIGTERM|SIGHUP): stopping the local stack/);
        await assertStoppedCleanly(run, snap);
      });
    }

    it("SIGINT to npm's pid alone, when npm runs the stack without a shell between (`exec` in the start script): relayed, exit 0", async function () {
      // npm relays SIGINT only to the process it started. Through `sh -c` (how npm runs a script),
      // dash waits through SIGINT, so the stack never hears it: the start script needs `exec`.
      // Until package.json has it, a script shell that execs stands in for it.
      const startScript = JSON.parse(fs.readFileSync(path.join(PROJECT_DIR, "package.json"), "utf8")).scripts.start as string;
      let scriptShell: string | undefined;
      if (!startScript.startsWith("exec ")) {
        scriptShell = path.join(tmp, "exec-sh");
        fs.writeFileSync(scriptShell, '#!/bin/sh\n# npm runs "<shell> -c <script>": run the script by exec, as `exec` in it would\nshift\nexec /bin/sh -c "exec $1"\n', { mode: 0o755 });
      }
      const run = track(Run.npm(["--port", "0", "--outputs", outputsFile()], { scriptShell }));
      const snap = await snapshot(run, outputsFile());
      const [launcher] = childrenOf(run.child.pid!);
      assert.match(fs.readFileSync(`/proc/${launcher}/cmdline`, "utf8"), /local\/cli\.ts/, "npm's own child is the launcher, no shell between");
      run.child.kill("SIGINT");
      assert.deepEqual(await run.exited, { code: 0, signal: null });
      await assertStoppedCleanly(run, snap);
    });

    it("SIGKILL to the launcher: the stack sees its channel close and stops by itself", async () => {
      const run = track(Run.node(["--port", "0", "--outputs", outputsFile()]));
      const snap = await snapshot(run, outputsFile());
      run.child.kill("SIGKILL");
      await run.until(/the launcher exited: stopping the local stack/);
      await assertStoppedCleanly(run, snap);
    });
  });

  describe("settings and outputs", () => {
    it("accepts every setting of the schema, the secrets and aws:region, and refuses anything else", () => {
      const ok = Object.fromEntries(knownConfigKeys().map((k) => [k.includes(":") ? k : `ws-chat:${k}`, "1"]));
      checkConfigOverrides("ws-chat", ok);
      assert.throws(() => checkConfigOverrides("ws-chat", { "ws-chat:foo": "bar" }), /unknown setting "foo".*\nknown keys: stageName, /s);
      assert.throws(() => checkConfigOverrides("ws-chat", { "other:stageName": "x" }), /unknown setting "other:stageName"/);
    });

    it("marks the outputs that stand in for what only AWS has: the CloudFront URL becomes this stack's page, an SNS ARN is marked", () => {
      const resources = [
        { type: "aws:dynamodb/table:Table", name: "connections", id: "c", inputs: {}, state: { name: "connections-1", arn: `arn:aws:dynamodb:us-east-1:${FAKE_ACCOUNT_ID}:table/connections-1` }, secretInputs: [] },
        { type: "aws:sns/topic:Topic", name: "alarms", id: "a", inputs: {}, state: { arn: `arn:aws:sns:us-east-1:${FAKE_ACCOUNT_ID}:alarms-1` }, secretInputs: [] },
        { type: "aws:cloudfront/distribution:Distribution", name: "web", id: "E1", inputs: {}, state: { domainName: "e1.cloudfront.net" }, secretInputs: [] },
      ];
      const outputs = { url: "ws://127.0.0.1:1/dev", tableName: "connections-1", alarmTopicArn: `arn:aws:sns:us-east-1:${FAKE_ACCOUNT_ID}:alarms-1`, webUrl: "https://e1.cloudfront.net/", authEnabled: true };
      const local = localOutputs({ resources, outputs }, "http://127.0.0.1:1/");
      assert.deepEqual(local.outputs, {
        url: "ws://127.0.0.1:1/dev",
        tableName: "connections-1",
        alarmTopicArn: `${NOT_SERVED_LOCALLY} arn:aws:sns:us-east-1:${FAKE_ACCOUNT_ID}:alarms-1`,
        webUrl: "http://127.0.0.1:1/",
        authEnabled: true,
      });
      assert.deepEqual(Object.keys(local.notes).sort(), ["alarmTopicArn", "webUrl"]);
      assert.match(local.notes.alarmTopicArn, /SNS is not served locally/);
      assert.match(local.notes.webUrl, /the chat page, served by this stack \(on AWS: a CloudFront distribution/);
    });

    it("prod's outputs, printed and in the JSON: webUrl is the page it serves, alarmTopicArn is marked, the e2e suite's keys are as before", async () => {
      const run = track(Run.node(["--stack", "prod", "--port", "0", "--outputs", outputsFile()], { env: { CHAT_TOKEN_KEY: "k".repeat(48) } }));
      await run.until(/Ready \(pid/);
      const outputs = JSON.parse(fs.readFileSync(outputsFile(), "utf8"));
      const port = new URL(outputs.url).port;
      assert.equal(outputs.webUrl, `http://127.0.0.1:${port}/`);
      assert.match((await (await fetch(outputs.webUrl)).text()).slice(0, 200), /<!doctype html>/i);
      assert.match(outputs.alarmTopicArn, new RegExp(`^\\(not served locally\\) arn:aws:sns:us-east-1:${FAKE_ACCOUNT_ID}:`));
      assert.deepEqual(
        { url: outputs.url, connectionsUrl: outputs.connectionsUrl, stage: outputs.stage, region: outputs.region, authEnabled: outputs.authEnabled, tokenAudience: outputs.tokenAudience },
        { url: `ws://127.0.0.1:${port}/prod`, connectionsUrl: `http://127.0.0.1:${port}/prod/@connections`, stage: "prod", region: "us-east-1", authEnabled: true, tokenAudience: "ws-chat/prod" },
      );
      assert.match(outputs.tableName, /^connections-/);
      assert.match(run.output, /\n {4}alarmTopicArn +\(not served locally\) arn:aws:sns:/);
      assert.match(run.output, /\n {2}alarmTopicArn: a mock value: SNS is not served locally\n/);
      assert.match(run.output, /\n {2}webUrl: the chat page, served by this stack \(on AWS: a CloudFront distribution; the mock was https:\/\/\w+\.cloudfront\.net\/\)\n/);
      assert.doesNotMatch(run.output, /\n {4}webUrl +https:/);
      run.child.kill("SIGTERM");
      assert.equal((await run.exited).code, 0);
    });

    it("publishOutputs: the default file always holds the newest live stack's outputs; a stopping stack hands it on or removes it", async () => {
      const stateDir = path.join(tmp, "state");
      fs.mkdirSync(stateDir);
      const sleeper = () => spawn(process.execPath, ["-e", "setTimeout(() => {}, 600000)"]);
      const [a, b] = [sleeper(), sleeper()];
      try {
        const dead = spawn(process.execPath, ["-e", ""]);
        await once(dead, "exit");
        const runDir = (pid: number) => path.join(stateDir, `run-${pid}`);
        const defaultFile = path.join(stateDir, "outputs.json");
        const read = () => (fs.existsSync(defaultFile) ? fs.readFileSync(defaultFile, "utf8") : undefined);

        fs.mkdirSync(runDir(dead.pid!)); // a stack killed with SIGKILL left its folder
        fs.writeFileSync(path.join(runDir(dead.pid!), "outputs.json"), "dead");
        assert.deepEqual(liveRuns(stateDir), []);
        sweepDeadRuns(stateDir);
        assert.ok(!fs.existsSync(runDir(dead.pid!)), "a dead stack's folder is swept");

        const first = publishOutputs(stateDir, runDir(a.pid!), "A");
        assert.equal(first.file, defaultFile);
        assert.equal(read(), "A");
        fs.utimesSync(path.join(runDir(a.pid!), "outputs.json"), new Date(Date.now() - 60_000), new Date(Date.now() - 60_000));
        const second = publishOutputs(stateDir, runDir(b.pid!), "B");
        assert.equal(read(), "B", "the newest stack's");
        assert.deepEqual(liveRuns(stateDir), [runDir(b.pid!), runDir(a.pid!)]);

        first.withdraw(); // A stops while B's outputs are the default: nothing to do there
        assert.equal(read(), "B");
        const third = publishOutputs(stateDir, runDir(a.pid!), "A2");
        second.withdraw(); // B stops, its outputs still the default's: handed on to the live A
        assert.equal(read(), "A2");
        third.withdraw(); // the last one stops: no file describes a stopped stack
        assert.equal(read(), undefined);

        const asked = path.join(tmp, "mine.json");
        const own = publishOutputs(stateDir, runDir(a.pid!), "A3", asked);
        assert.equal(read(), undefined, "a stack given --outputs leaves the default alone");
        assert.equal(fs.readFileSync(asked, "utf8"), "A3");
        own.withdraw();
        assert.ok(!fs.existsSync(asked), "and removes its own file as it stops");
        assert.ok(!fs.existsSync(path.join(stateDir, "outputs.lock")));
      } finally {
        a.kill();
        b.kill();
      }
    });

    it("two dev stacks at once: .local/dev/outputs.json follows the newest live one, and never names a stopped one", async () => {
      const defaultFile = path.join(PROJECT_DIR, ".local", "dev", "outputs.json");
      const urlIn = () => (fs.existsSync(defaultFile) ? JSON.parse(fs.readFileSync(defaultFile, "utf8")).url : undefined);
      const first = track(Run.node(["--port", "0"]));
      const firstPid = await first.stackPid();
      const firstUrl = JSON.parse(fs.readFileSync(path.join(PROJECT_DIR, ".local", "dev", `run-${firstPid}`, "outputs.json"), "utf8")).url;
      assert.match(first.output, new RegExp(`Outputs written to ${defaultFile.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")}`));
      const second = track(Run.node(["--port", "0"]));
      const secondPid = await second.stackPid();
      const secondUrl = JSON.parse(fs.readFileSync(path.join(PROJECT_DIR, ".local", "dev", `run-${secondPid}`, "outputs.json"), "utf8")).url;
      assert.notEqual(secondUrl, firstUrl);
      assert.equal(urlIn(), secondUrl, "the newest stack's outputs");

      second.child.kill("SIGTERM");
      assert.equal((await second.exited).code, 0);
      assert.notEqual(urlIn(), secondUrl, "no longer the stopped stack's");
      const others = liveRuns(path.join(PROJECT_DIR, ".local", "dev")).filter((dir) => !dir.endsWith(`run-${firstPid}`));
      if (others.length === 0) assert.equal(urlIn(), firstUrl, "handed on to the stack still running");

      first.child.kill("SIGTERM");
      assert.equal((await first.exited).code, 0);
      assert.notEqual(urlIn(), firstUrl, "and not the first's once it has stopped too");
    });
  });
});
