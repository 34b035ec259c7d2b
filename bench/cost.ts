/**
 * Cost per message: DynamoDB capacity (the local stack meters every request with
 * ReturnConsumedCapacity), @connections calls and invocations, for one message to a room of
 * 100 in a table of `connections` spread over `rooms` rooms. Ours, then the seed's.
 */
import WebSocket from "ws";
import { METRICS_PATH } from "../local/stack";
import { localStack } from "../test/e2e/stack";
import { presenceSettler } from "./room";
import { sleep } from "./stats";
import { Swarm } from "./swarm";

export interface CostSample {
  implementation: "ours" | "seed";
  connections: number;
  roomSize: number;
  readUnits: number;
  writeUnits: number;
  dynamodbRequests: Record<string, number>;
  managementCalls: number;
  invocations: number;
}

interface Metrics {
  dynamodb: { requests: Record<string, number>; readUnits: number; writeUnits: number };
  management: Record<string, number>;
  invocations: Record<string, number>;
}

const total = (record: Record<string, number>) => Object.values(record).reduce((n, v) => n + v, 0);

export async function measureCost(implementation: "ours" | "seed", options: { connections: number; rooms: number; processes: number; stackFlags: string[]; log: (line: string) => void }): Promise<CostSample> {
  const stack = await localStack([...options.stackFlags, "--idle-timeout", "7200", ...(implementation === "seed" ? ["--config", "benchSeedFanout=true"] : [])]);
  const swarm = new Swarm(options.processes);
  try {
    const perRoom = options.connections / options.rooms;
    const base = stack.outputs.url;
    // Room 0 gets one member fewer: the sender below makes it 100.
    for (let room = 0; room < options.rooms; room++) await swarm.grow(`${base}?room=cost-${room}`, room === 0 ? perRoom - 1 : perRoom, 32);
    options.log(`  ${implementation}: ${options.connections} connections in ${options.rooms} rooms`);
    const metricsUrl = `http://${new URL(base).host}${METRICS_PATH}`;
    const metrics = async () => (await (await fetch(metricsUrl)).json()) as Metrics;
    const sender = new WebSocket(`${base}?room=cost-0`);
    await new Promise((resolve, reject) => (sender.once("open", resolve), sender.once("error", reject)));
    // Every connection's join is appended and fanned out by presence: measured after they all are,
    // or the joins' queries and posts would be counted as the message's.
    await presenceSettler(stack.logs)("joins", options.connections);
    await sleep(1_000);
    const before = await metrics();
    await swarm.expect("cost-probe");
    sender.send(JSON.stringify({ action: "sendmessage", message: "cost-probe" }));
    // Settled once sendmessage's run has ended and the @connections count has not moved for 1 s.
    let last = -1;
    let after = await metrics();
    for (let i = 0; i < 600; i++) {
      await sleep(500);
      after = await metrics();
      const calls = total(after.management);
      if (total(after.invocations) > total(before.invocations) && calls === last) break;
      last = calls;
    }
    sender.terminate();
    const requests: Record<string, number> = {};
    for (const [op, n] of Object.entries(after.dynamodb.requests)) if (n - (before.dynamodb.requests[op] ?? 0)) requests[op] = n - (before.dynamodb.requests[op] ?? 0);
    return {
      implementation,
      connections: options.connections,
      roomSize: perRoom,
      readUnits: after.dynamodb.readUnits - before.dynamodb.readUnits,
      writeUnits: after.dynamodb.writeUnits - before.dynamodb.writeUnits,
      dynamodbRequests: requests,
      managementCalls: total(after.management) - total(before.management),
      invocations: total(after.invocations) - total(before.invocations),
    };
  } finally {
    await swarm.close();
    await stack.stop();
  }
}
