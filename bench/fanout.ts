/**
 * Fan-out: one message to N members of one room; time from send to the last delivery, how many
 * got it, CPU per recipient and peak RSS of the instances that did the work. Three
 * implementations on this machine: ours and the seed's (both through the local stack, with the
 * management API's injected latency), and a raw `ws` relay (the floor).
 */
import { randomBytes } from "crypto";
import WebSocket from "ws";
import { localStack } from "../test/e2e/stack";
import { startFloor } from "./floor";
import { parseReports, reportsOf } from "./reports";
import { sleep } from "./stats";
import { Receipt, Swarm } from "./swarm";

export type Implementation = "ours" | "seed" | "floor";

export interface FanoutSample {
  implementation: Implementation;
  members: number;
  recipients: number;
  delivered: number;
  /** Send to last delivery. */
  timeMs: number;
  /** CPU of the function instances (or the floor's process) per recipient. */
  cpuMsPerRecipient: number;
  /** Highest "Max Memory Used" of any instance that worked on the message (the floor: its process). */
  peakRssMb: number;
  /** Function runs that worked on the message (1 + fanout chunks), 1 for the floor. */
  invocations: number;
  /** How runs ended that failed (e.g. Runtime.ExitError when an instance ran out of memory). */
  errors: string[];
  /** Posts our handlers gave up on after retries (from their log lines); 0 for the others. */
  failedPosts: number;
}

export interface FanoutOptions {
  sizes: number[];
  runs: number;
  latencyMs: number;
  /** Extra `npm start` flags: [] runs the stack as users do, ["--no-iam"] for comparison. */
  stackFlags: string[];
  /** Swarm processes. */
  processes: number;
  log: (line: string) => void;
}

interface Usage {
  cpuMs: number;
  peakRssMb: number;
  invocations: number;
  errors: string[];
  failedPosts: number;
}

interface Target {
  url: string;
  mark(): Promise<unknown>;
  /** Whether the runs working on the message sent since `mark` have ended, and how many reported. */
  progress(mark: unknown): Promise<{ ended: boolean; reports: number }>;
  /** CPU ms, peak RSS and invocation count of what worked on that message. */
  usage(mark: unknown): Promise<Usage>;
  stop(): Promise<void>;
}

async function stackTarget(implementation: "ours" | "seed", latencyMs: number, stackFlags: string[]): Promise<Target> {
  // Both get the longest timeout API Gateway allows an integration (29 s), so the seed's fan-out
  // is timed to its end rather than cut at the dev stack's 10 s.
  const stack = await localStack([
    ...stackFlags,
    "--management-latency", String(latencyMs),
    "--idle-timeout", "7200",
    "--config", "rateLimitMessages=10000",
    "--config", "lambdaTimeoutSeconds=29",
    ...(implementation === "seed" ? ["--config", "benchSeedFanout=true"] : []),
  ]);
  const reportsSince = (mark: unknown) => reportsOf(parseReports(stack.logs().slice(mark as number)), "-sendmessage-", "-fanout-");
  return {
    url: `${stack.outputs.url}?room=bench`,
    mark: async () => stack.logs().length,
    async progress(mark) {
      const reports = reportsSince(mark);
      return { ended: reports.some((r) => r.functionName.includes("-sendmessage-")), reports: reports.length };
    },
    async usage(mark) {
      const reports = reportsSince(mark);
      if (process.env.BENCH_DEBUG) console.log(stack.logs().slice(mark as number).split("\n").filter((l) => /"msg":"(message|fan-out chunk|delivery failed)|hand-off|dropped/.test(l)).join("\n"));
      // An instance that died could not measure itself: Lambda would show its memory size as used.
      return {
        cpuMs: reports.reduce((n, r) => n + (r.cpuMs ?? NaN), 0),
        peakRssMb: Math.max(...reports.map((r) => r.maxMemoryUsedMb ?? NaN)),
        invocations: reports.length,
        errors: reports.flatMap((r) => (r.error ? [r.error] : [])),
        failedPosts: failedPosts(stack.logs().slice(mark as number)),
      };
    },
    stop: () => stack.stop(),
  };
}

/** Sums `failed` over our handlers' "message" and "fan-out chunk" log lines. */
function failedPosts(logs: string): number {
  let failed = 0;
  for (const m of logs.matchAll(/"msg":"(?:message|fan-out chunk)".*?"failed":(\d+)/g)) failed += Number(m[1]);
  return failed;
}

async function floorTarget(): Promise<Target> {
  const floor = await startFloor();
  return {
    url: floor.url,
    mark: () => floor.usage(),
    progress: async () => ({ ended: true, reports: 0 }),
    async usage(mark) {
      const now = await floor.usage();
      return { cpuMs: now.cpuMs - (mark as { cpuMs: number }).cpuMs, peakRssMb: now.maxRssMb, invocations: 1, errors: [], failedPosts: 0 };
    },
    async stop() {
      floor.stop();
    },
  };
}

function openSender(url: string): Promise<WebSocket> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, { perMessageDeflate: false });
    ws.once("open", () => resolve(ws));
    ws.once("error", reject);
  });
}

/**
 * Polls until every recipient has the marker and the runs have ended, or, once the runs have
 * ended, nothing has moved for 3 s (at most three minutes in all).
 */
async function waitForDeliveries(swarm: Swarm, target: Target, mark: unknown, marker: string, expected: number): Promise<Receipt> {
  let last = { count: -1, reports: -1 };
  let stableSince = Date.now();
  for (const deadline = Date.now() + 180_000; ; ) {
    await sleep(250);
    const receipt = await swarm.receipt(marker);
    const progress = await target.progress(mark);
    if (receipt.count !== last.count || progress.reports !== last.reports) {
      last = { count: receipt.count, reports: progress.reports };
      stableSince = Date.now();
    }
    const quiet = Date.now() - stableSince;
    if (progress.ended && ((receipt.count >= expected && quiet > 600) || quiet > 3_000)) return receipt;
    if (Date.now() > deadline) return receipt;
  }
}

export async function runFanout(implementation: Implementation, options: FanoutOptions): Promise<FanoutSample[]> {
  const target = implementation === "floor" ? await floorTarget() : await stackTarget(implementation, options.latencyMs, options.stackFlags);
  const swarm = new Swarm(options.processes);
  const samples: FanoutSample[] = [];
  try {
    const sender = await openSender(target.url);
    for (const members of [...options.sizes].sort((a, b) => a - b)) {
      const recipients = members - 1;
      const growBy = recipients - swarm.size;
      const opened = Date.now();
      await swarm.grow(target.url, growBy);
      options.log(`  ${implementation}: ${members} members connected (+${growBy} in ${((Date.now() - opened) / 1000).toFixed(1)} s)`);
      await sleep(1_000); // let $connect writes and logs settle
      for (let run = 1; run <= options.runs; run++) {
        const marker = `bench-${members}-${run}-${randomBytes(4).toString("hex")}`;
        await swarm.expect(marker);
        const mark = await target.mark();
        const sentAt = Date.now();
        sender.send(implementation === "floor" ? marker : JSON.stringify({ action: "sendmessage", message: marker }));
        const receipt = await waitForDeliveries(swarm, target, mark, marker, recipients);
        const usage = await target.usage(mark);
        const sample: FanoutSample = {
          implementation,
          members,
          recipients,
          delivered: receipt.count,
          timeMs: receipt.count ? receipt.last - sentAt : NaN,
          cpuMsPerRecipient: usage.cpuMs / recipients,
          peakRssMb: usage.peakRssMb,
          invocations: usage.invocations,
          errors: usage.errors,
          failedPosts: usage.failedPosts,
        };
        samples.push(sample);
        options.log(
          `  ${implementation} N=${members} run ${run}: ${sample.delivered}/${recipients} delivered in ${sample.timeMs} ms, ` +
            `${sample.cpuMsPerRecipient.toFixed(3)} CPU ms/recipient, peak ${sample.peakRssMb} MB, ${sample.invocations} run(s)` +
            (sample.errors.length ? `, failed: ${sample.errors.join(", ")}` : "") +
            (sample.failedPosts ? `, ${sample.failedPosts} posts given up after retries` : ""),
        );
        await sleep(500);
      }
    }
    sender.terminate();
  } finally {
    await swarm.close();
    await target.stop();
  }
  return samples;
}
