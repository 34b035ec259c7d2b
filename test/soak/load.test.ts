/**
 * Load: 1,000 connections over 10 rooms, a steady message rate for SOAK_SECONDS (default 60),
 * through a local stack in its own process. Senders behave like the chat page: each message carries
 * an `id`, and one refused as `unavailable` (stored nowhere; a busy room, a slow machine) is sent
 * again with the same id. Every message must be acknowledged, and is counted per recipient: none
 * may be lost or duplicated. Reports p50/p99 send-to-receive latency and the stack's peak memory.
 * `npm run test:soak` (part of `npm test`).
 */
import assert from "node:assert/strict";
import * as fs from "node:fs";
import WebSocket from "ws";
import { parseReports } from "../../bench/reports";
import { quantile } from "../../bench/stats";
import { E2EStack, localStack } from "../e2e/stack";

const CONNECTIONS = 1_000;
const ROOMS = 10;
const SECONDS = Number(process.env.SOAK_SECONDS ?? 60);
/** Messages per second over all rooms: 10 × 99 recipients ≈ 1,000 deliveries a second. */
const RATE = 10;

interface Member {
  ws: WebSocket;
  room: number;
  /** message id → copies received */
  got: Map<string, number>;
}

function open(url: string): Promise<WebSocket> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, { perMessageDeflate: false });
    ws.once("open", () => resolve(ws));
    ws.once("error", reject);
  });
}

/** Peak resident memory of a process, from /proc (Linux). */
function peakRssMb(pid: number): number {
  const line = fs.readFileSync(`/proc/${pid}/status`, "utf8").split("\n").find((l) => l.startsWith("VmHWM:"));
  return Math.round(Number(line?.split(/\s+/)[1] ?? 0) / 1024);
}

describe(`soak: ${CONNECTIONS} connections in ${ROOMS} rooms, ${RATE} messages/s for ${SECONDS} s`, function () {
  this.timeout((SECONDS + 240) * 1000);
  let stack: E2EStack;
  const members: Member[] = [];
  after(async () => {
    for (const m of members) m.ws.terminate();
    await stack?.stop();
  });

  it("delivers every message to every other member of its room exactly once", async () => {
    stack = await localStack(["--idle-timeout", "3600", "--config", "rateLimitMessages=1000"]);
    const sentAt = new Map<string, number>();
    const latencies: number[] = [];
    const acked = new Set<string>();
    const refused: string[] = [];
    let resent = 0;
    for (let lane = 0; lane < CONNECTIONS; lane += 50) {
      await Promise.all(
        Array.from({ length: Math.min(50, CONNECTIONS - lane) }, async (_, k) => {
          const i = lane + k;
          const room = i % ROOMS;
          const ws = await open(`${stack.outputs.url}?room=soak-${room}&name=m${i}`);
          const member: Member = { ws, room, got: new Map() };
          ws.on("message", (data) => {
            const frame = JSON.parse(data.toString()) as { type: string; message?: string; id?: string; code?: string };
            if (frame.type === "ack" && frame.id) acked.add(frame.id);
            if (frame.type === "error" && frame.id && frame.code === "unavailable") {
              resent++;
              setTimeout(() => ws.send(JSON.stringify({ action: "sendmessage", message: frame.id, id: frame.id })), 200);
            } else if (frame.type === "error") refused.push(data.toString());
            if (frame.type !== "message" || !frame.message) return;
            const id = frame.message;
            member.got.set(id, (member.got.get(id) ?? 0) + 1);
            const at = sentAt.get(id);
            if (at !== undefined && member.got.get(id) === 1) latencies.push(Date.now() - at);
          });
          members.push(member);
        }),
      );
    }
    assert.equal(members.length, CONNECTIONS);
    // The connect storm's presence first: 1,000 joins, each posted to the members already in its room
    // (about 50,000 posts; README, "Presence and the presence limit"). presence logs one line per
    // batch with what became of each record; when they add up to 1,000 joins, the storm is over.
    const stormStarted = Date.now();
    const joinsHandled = () =>
      [...stack.logs().matchAll(/"msg":"presence".*?"stored":(\d+),"duplicates":(\d+),"overLimit":(\d+)/g)].reduce((n, m) => n + Number(m[1]) + Number(m[2]) + Number(m[3]), 0);
    for (let i = 0; i < 2_400 && joinsHandled() < CONNECTIONS; i++) await new Promise((r) => setTimeout(r, 100));
    // (A batch Lambda retried counts its joins again, as duplicates: at least, not exactly.)
    assert.ok(joinsHandled() >= CONNECTIONS, `every join was handled (${joinsHandled()})`);
    const presenceDrainMs = Date.now() - stormStarted;

    const sent: { id: string; room: number; from: Member }[] = [];
    const started = Date.now();
    for (let n = 0; Date.now() - started < SECONDS * 1000; n++) {
      const from = members[Math.floor(Math.random() * members.length)];
      const id = `soak-${n}`;
      sentAt.set(id, Date.now());
      from.ws.send(JSON.stringify({ action: "sendmessage", message: id, id }));
      sent.push({ id, room: from.room, from });
      const due = started + ((n + 1) * 1000) / RATE;
      await new Promise((r) => setTimeout(r, Math.max(0, due - Date.now())));
    }

    // Everything sent must arrive; give the tail up to 30 s.
    const expected = sent.length * (CONNECTIONS / ROOMS - 1);
    const received = () => members.reduce((n, m) => n + m.got.size, 0);
    for (let i = 0; i < 300 && received() < expected; i++) await new Promise((r) => setTimeout(r, 100));
    await new Promise((r) => setTimeout(r, 500)); // late duplicates would show up here

    let lost = 0;
    let duplicated = 0;
    for (const { id, room, from } of sent) {
      for (const m of members) {
        if (m.room !== room || m === from) continue;
        const copies = m.got.get(id) ?? 0;
        if (copies === 0) lost++;
        if (copies > 1) duplicated += copies - 1;
      }
    }
    const pid = Number(/Ready \(pid (\d+)\)/.exec(stack.logs())?.[1]);
    const instances = parseReports(stack.logs());
    const summary = {
      presenceDrainMs,
      messages: sent.length,
      resent,
      deliveries: expected,
      lost,
      duplicated,
      p50Ms: quantile(latencies, 0.5),
      p99Ms: quantile(latencies, 0.99),
      stackPeakRssMb: peakRssMb(pid),
      instancePeakRssMb: Math.max(...instances.map((r) => r.maxMemoryUsedMb ?? 0)),
    };
    console.log(`      ${JSON.stringify(summary)}`);
    assert.deepEqual(refused, [], "no refusal other than a retryable 'unavailable'");
    assert.deepEqual(sent.filter(({ id }) => !acked.has(id)).map(({ id }) => id), [], "every message acknowledged");
    assert.deepEqual({ lost, duplicated }, { lost: 0, duplicated: 0 });
  });
});
