/**
 * Cost per message of each stage of the local stack, under a steady room load: the CPU time each
 * process spent per message sent (the gateway, @connections and Lambda runtime share the stack's
 * process; DynamoDB has its own; the function instances report theirs in REPORT lines; the
 * benchmark's own clients are this process), and the requests each stage served per message.
 * What `npm run bench -- --only stages` prints, to show where a room's capacity goes.
 */
import * as fs from "fs";
import { DYNAMODB_PROCESS_FILE } from "../local/dynamodb-process";
import { METRICS_PATH } from "../local/stack";
import { localStack } from "../test/e2e/stack";
import { parseReports } from "./reports";
import { measureRoom, presenceSettler, RoomStep } from "./room";

export interface StageCosts {
  members: number;
  rate: number;
  seconds: number;
  messages: number;
  step: RoomStep;
  /** CPU milliseconds per message sent, by stage. */
  cpuMsPerMessage: Record<string, number>;
  /** Requests per message sent, by stage and kind. */
  requestsPerMessage: Record<string, number>;
}

interface Metrics {
  dynamodb: { requests: Record<string, number> };
  management: Record<string, number>;
  invocations: Record<string, number>;
}

/** User + system CPU of a process so far, in ms (Linux: /proc/<pid>/stat, in clock ticks of 10 ms). */
function cpuMsOf(pid: number): number {
  const fields = fs.readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1].split(" ");
  return (Number(fields[11]) + Number(fields[12])) * 10;
}

/** The stack's DynamoDB process: its child running local/dynamodb-process.ts. */
function dynamodbPid(stackPid: number): number {
  for (const entry of fs.readdirSync("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = fs.readFileSync(`/proc/${entry}/stat`, "utf8");
      if (Number(stat.split(") ")[1].split(" ")[1]) !== stackPid) continue;
      if (fs.readFileSync(`/proc/${entry}/cmdline`, "utf8").includes(DYNAMODB_PROCESS_FILE)) return Number(entry);
    } catch {
      // gone meanwhile
    }
  }
  throw new Error(`no DynamoDB process under the stack (pid ${stackPid})`);
}

const diff = (after: Record<string, number>, before: Record<string, number>) =>
  Object.fromEntries(Object.entries(after).map(([k, v]) => [k, v - (before[k] ?? 0)]).filter(([, v]) => Number(v) > 0)) as Record<string, number>;

export async function measureStages(options: { members: number; rate: number; seconds: number; stackFlags: string[]; log: (line: string) => void }): Promise<StageCosts> {
  const stack = await localStack([...options.stackFlags, "--config", "rateLimitMessages=10000"]);
  try {
    const stackPid = Number(/Ready \(pid (\d+)\)/.exec(stack.logs())![1]);
    const dbPid = dynamodbPid(stackPid);
    const metricsUrl = `http://${new URL(stack.outputs.url).host}${METRICS_PATH}`;
    const metrics = async () => (await (await fetch(metricsUrl)).json()) as Metrics;
    const opts = { members: options.members, senders: Math.min(options.members, 20) };
    const presence = presenceSettler(() => stack.logs());
    // Counted: from the first measured message to the last delivery, so the figures are the
    // messages' (the room's joins, leaves and first history pages are not a message's cost).
    const snapshot = async () => ({ metrics: await metrics(), stack: cpuMsOf(stackPid), dynamodb: cpuMsOf(dbPid), bench: process.cpuUsage(), logMark: stack.logs().length });
    let before: Awaited<ReturnType<typeof snapshot>> | undefined;
    let after: Awaited<ReturnType<typeof snapshot>> | undefined;
    const measuring = async (phase: "start" | "end") => {
      if (phase === "start") before = await snapshot();
      else after = { ...(await snapshot()), bench: process.cpuUsage(before?.bench) };
    };
    options.log(`  room of ${options.members} at ${options.rate} msg/s for 3 s (not counted), then ${options.seconds} s…`);
    const step = await measureRoom("ours", `${stack.outputs.url}?room=stages-${Date.now()}`, { ...opts, rate: options.rate, seconds: options.seconds, warmupSeconds: 3, settle: presence, measuring });
    if (!before || !after) throw new Error("the step did not report its measured span");
    const logMark = before.logMark;
    const reports = parseReports(stack.logs().slice(logMark, after.logMark));
    const perMessage = (n: number) => Math.round((n / step.messages) * 100) / 100;
    const functionCpu: Record<string, number> = {};
    for (const r of reports) {
      const name = /ws-chat-([a-z]+)/.exec(r.functionName)?.[1] ?? r.functionName;
      functionCpu[`λ ${name}`] = (functionCpu[`λ ${name}`] ?? 0) + (r.cpuMs ?? 0);
    }
    const cpuMsPerMessage = {
      "gateway, @connections and Lambda runtime (stack process)": perMessage(after.stack - before.stack),
      "DynamoDB (dynalite and the transaction proxy)": perMessage(after.dynamodb - before.dynamodb),
      ...Object.fromEntries(Object.entries(functionCpu).map(([k, v]) => [k, perMessage(v)])),
      "the benchmark's clients": perMessage((after.bench.user + after.bench.system) / 1000),
    };
    const requestsPerMessage = {
      ...Object.fromEntries(Object.entries(diff(after.metrics.dynamodb.requests, before.metrics.dynamodb.requests)).map(([k, v]) => [`DynamoDB ${k}`, perMessage(v)])),
      ...Object.fromEntries(Object.entries(diff(after.metrics.management, before.metrics.management)).map(([k, v]) => [`@connections ${k}`, perMessage(v)])),
      ...Object.fromEntries(Object.entries(diff(after.metrics.invocations, before.metrics.invocations)).map(([k, v]) => [`invocations of ${/ws-chat-([a-z]+)/.exec(k)?.[1] ?? k}`, perMessage(v)])),
    };
    return { members: options.members, rate: options.rate, seconds: options.seconds, messages: step.messages, step, cpuMsPerMessage, requestsPerMessage };
  } finally {
    await stack.stop();
  }
}
