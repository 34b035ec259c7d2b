/**
 * Cold start and package size, per function: the archive Pulumi uploads (bytes, and deflated as
 * in the zip), CallbackFunction's default packaging of the same code (every package in
 * `dependencies` copied in), the time to load the archive in a fresh Node process (the factory
 * included) against the time to `require` just the AWS SDK modules that archive uses, and the
 * first invocation of a fresh instance: real traffic through a fresh local prod stack (every
 * function's instance is a new process there), read from its REPORT lines.
 */
import * as pulumi from "@pulumi/pulumi";
import { execFileSync } from "child_process";
import * as fs from "fs";
import * as path from "path";
import { deflateRawSync } from "zlib";
import { loadProgram, PROJECT_DIR } from "../local/program";
import { Client } from "../test/e2e/clients";
import { localStack } from "../test/e2e/stack";
import { parseReports, Report } from "./reports";
import { median, sleep } from "./stats";

export interface ColdStartRow {
  function: string;
  archiveBytes: number;
  zippedBytes: number;
  defaultPackagingBytes: number;
  defaultPackagingFiles: number;
  defaultPackagingEntries: number;
  initMs: number;
  sdkRequireMs: number;
  initRatio: number;
  sdkModules: string[];
  /** The first invocation of a fresh instance (median over fresh stacks): wall and CPU time. */
  firstInvocationMs: number;
  firstInvocationCpuMs: number;
  /** Init Duration as the local runtime reports it for that instance (median). */
  reportedInitMs: number;
}

function walk(dir: string): { bytes: number; files: number } {
  let bytes = 0;
  let files = 0;
  for (const entry of fs.readdirSync(dir, { withFileTypes: true })) {
    const full = path.join(dir, entry.name);
    if (entry.isDirectory()) {
      const sub = walk(full);
      bytes += sub.bytes;
      files += sub.files;
    } else if (entry.isFile()) {
      bytes += fs.statSync(full).size;
      files++;
    }
  }
  return { bytes, files };
}

/** What CallbackFunction packs by default: every package reachable from `dependencies` (minus @pulumi/*). */
async function defaultPackaging(): Promise<{ bytes: number; files: number; entries: number }> {
  const cwd = process.cwd();
  process.chdir(PROJECT_DIR);
  try {
    const paths = await pulumi.runtime.computeCodePaths();
    let bytes = 0;
    let files = 0;
    for (const [, archive] of paths) {
      const dir = await (archive as pulumi.asset.FileArchive).path;
      const size = walk(path.resolve(PROJECT_DIR, dir));
      bytes += size.bytes;
      files += size.files;
    }
    return { bytes, files, entries: paths.size };
  } finally {
    process.chdir(cwd);
  }
}

/** Milliseconds to run `code` in a fresh Node process, measured inside it; median of `runs`. */
function timeInFreshProcess(code: string, env: Record<string, string>, runs: number): number {
  const samples: number[] = [];
  for (let i = 0; i < runs; i++) {
    const out = execFileSync(process.execPath, ["-e", `const t = performance.now(); ${code}; process.stdout.write(String(performance.now() - t));`], {
      cwd: PROJECT_DIR,
      env: { PATH: process.env.PATH ?? "", AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED: "true", ...env },
      encoding: "utf8",
    });
    samples.push(Number(out));
  }
  return median(samples);
}

/**
 * One fresh local prod stack (fan-out chunks of 2, so a message to a room of 4 also hands a chunk
 * to `fanout`), driven as a user would: 4 connections with tokens (authorizer, $connect, and
 * presence for the joins), a message (sendmessage, fanout), a history request, a line $default
 * answers, typing, members and read, a close ($disconnect). Returns
 * the first REPORT of each of `functions` (physical names; the mocks make them the same in every
 * load of the program), which is its fresh instance's cold invocation.
 */
async function firstInvocations(functions: string[], stackFlags: string[]): Promise<Report[]> {
  const stack = await localStack([...stackFlags, "--config", "fanoutChunkSize=2"], "prod");
  const clients: Client[] = [];
  try {
    const room = "cold";
    for (const name of ["ann", "bo", "cy", "di"]) clients.push(await Client.open(stack.outputs.url, { room, token: stack.token({ name }) }));
    const [ann, ...others] = clients;
    ann.send({ action: "sendmessage", message: "cold start", id: "cold-1" });
    for (const c of others) await c.waitFor((f) => f.includes("cold start"), 20_000);
    await ann.history();
    await ann.connectionId();
    // The chat features' functions: typing (to the others), members and read (answered to ann);
    // presence already ran for the joins.
    ann.send({ action: "typing" });
    await others[0].waitFor((f) => f.includes('"type":"typing"'), 20_000);
    ann.send({ action: "members" });
    await ann.waitFor((f) => f.includes('"type":"members"'), 20_000);
    ann.send({ action: "read" });
    await ann.waitFor((f) => f.includes('"type":"read"'), 20_000);
    await others[2].close();
    for (let i = 0; i < 100; i++) {
      const cold = parseReports(stack.logs()).filter((r) => r.initDurationMs !== undefined);
      if (functions.every((f) => cold.some((r) => r.functionName === f))) return functions.map((f) => cold.find((r) => r.functionName === f)!);
      await sleep(100);
    }
    throw new Error(`not every function reported a cold invocation:\n${stack.logs().slice(-3000)}`);
  } finally {
    for (const c of clients) c.kill();
    await stack.stop();
  }
}

export async function runColdStart(runs: number, log: (line: string) => void, stackFlags: string[] = []): Promise<ColdStartRow[]> {
  const program = await loadProgram({ stack: "prod", apiEndpoint: () => "wss://a1b2c3d4e5.execute-api.us-east-1.amazonaws.com", secrets: { "ws-chat:tokenKey": "k".repeat(48) } });
  const packaging = await defaultPackaging();
  const functions = program.resources.filter((r) => r.type === "aws:lambda/function:Function");
  // firsts[run][i]: the cold report of functions[i] in that run.
  const firsts: Report[][] = [];
  for (let run = 1; run <= runs; run++) {
    log(`  first invocations: fresh local prod stack ${run}/${runs}`);
    firsts.push(await firstInvocations(functions.map((fn) => fn.state.name as string), stackFlags));
  }
  const dir = fs.mkdtempSync(path.join(PROJECT_DIR, ".local", "bench-cold-"));
  const rows: ColdStartRow[] = [];
  try {
    for (const [i, fn] of functions.entries()) {
      const first = firsts.map((reports) => reports[i]);
      const code = program.archives.get(fn.name)!.get("__index.js")!;
      const file = path.join(dir, `${fn.name}.js`);
      fs.writeFileSync(file, code);
      const sdkModules = [...new Set([...code.toString("utf8").matchAll(/require\("(@aws-sdk\/[^"]+)"\)/g)].map((m) => m[1]))].sort();
      const env = { ...fn.inputs.environment?.variables, AWS_REGION: "us-east-1", AWS_ACCESS_KEY_ID: "x", AWS_SECRET_ACCESS_KEY: "x" };
      const initMs = timeInFreshProcess(`require(${JSON.stringify(file)})`, env, runs);
      const sdkRequireMs = sdkModules.length ? timeInFreshProcess(sdkModules.map((m) => `require(${JSON.stringify(m)})`).join(";"), env, runs) : 0;
      const row: ColdStartRow = {
        function: fn.name,
        archiveBytes: code.length,
        zippedBytes: deflateRawSync(code).length,
        defaultPackagingBytes: packaging.bytes + code.length,
        defaultPackagingFiles: packaging.files + 1,
        defaultPackagingEntries: packaging.entries + 1,
        initMs,
        sdkRequireMs,
        initRatio: sdkRequireMs ? initMs / sdkRequireMs : NaN,
        sdkModules,
        firstInvocationMs: median(first.map((r) => r.durationMs)),
        firstInvocationCpuMs: median(first.map((r) => r.cpuMs ?? NaN)),
        reportedInitMs: median(first.map((r) => r.initDurationMs!)),
      };
      rows.push(row);
      log(
        `  ${fn.name}: ${row.archiveBytes} B (${row.zippedBytes} B zipped) vs ${(row.defaultPackagingBytes / 1e6).toFixed(1)} MB default; init ${initMs.toFixed(1)} ms vs SDK require ${sdkRequireMs.toFixed(1)} ms; ` +
          `first invocation ${row.firstInvocationMs.toFixed(1)} ms (${row.firstInvocationCpuMs.toFixed(1)} ms CPU)`,
      );
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
  return rows;
}
