/**
 * Room capacity: one room stepped through rising message rates, ours (through the local stack)
 * and the raw `ws` relay (the floor) side by side. Every client lives in this process, so send and
 * receive times share one clock. Our senders behave as the chat page does (web/room-stream.js):
 * one unacknowledged message in flight per sender, the rest queued; `unavailable` resent with the
 * same id after `retryAfterMs`; every member follows the room's sequence and fills gaps from
 * `history`. Latency counts from the moment a message was due to be sent (its slot in the
 * schedule), so time spent queued behind a slow ack is counted, not hidden.
 */
import WebSocket from "ws";
import { OrderedSender, RoomStream, StreamFrame } from "../web/room-stream";
import { quantile, sleep } from "./stats";

export interface RoomStep {
  implementation: "ours" | "floor";
  members: number;
  senders: number;
  rate: number;
  seconds: number;
  messages: number;
  /** Messages still queued or unacknowledged at a sender when the step ended (past capacity). */
  unacknowledged: number;
  /** Deliveries expected: every message to every member but its sender. */
  expected: number;
  /** Distinct (member, message) deliveries, live or from history. */
  delivered: number;
  /** Messages stored under two cursors, or shown twice to one member: must be 0. */
  duplicates: number;
  /** Repeated frames the clients dropped (a retried post, a history page racing live delivery). */
  repeatsDropped: number;
  /** Refusals by code (each `unavailable` is resent). */
  refusals: Record<string, number>;
  resends: number;
  /** History requests the members made to fill gaps. */
  historyRequests: number;
  p50Ms: number;
  p99Ms: number;
  maxMs: number;
  /** Latency from the moment a message was put on the wire (its last send), not from its slot. */
  wireP50Ms: number;
  wireP99Ms: number;
  /** A sender's wait from putting a message on the wire to its ack. */
  ackP50Ms: number;
  ackP99Ms: number;
}

export interface RoomOptions {
  members: number;
  senders: number;
  rate: number;
  seconds: number;
  log?: (line: string) => void;
}

function open(url: string): Promise<WebSocket> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, { perMessageDeflate: false });
    ws.once("open", () => resolve(ws));
    ws.once("error", reject);
  });
}

async function openAll(url: string, count: number): Promise<WebSocket[]> {
  const sockets: WebSocket[] = [];
  for (let i = 0; i < count; i += 25) sockets.push(...(await Promise.all(Array.from({ length: Math.min(25, count - i) }, () => open(url)))));
  return sockets;
}

/** What every member records: when each marker first reached it, and what arrived twice. */
class Tally {
  readonly dueAt = new Map<string, number>();
  /** When each marker was last put on the wire (a resend moves it). */
  readonly wireAt = new Map<string, number>();
  readonly wireLatencies: number[] = [];
  readonly ackLatencies: number[] = [];
  readonly senderOf = new Map<string, number>();
  readonly latencies: number[] = [];
  readonly cursorsOf = new Map<string, Set<string>>();
  readonly seenBy: Set<string>[] = [];
  delivered = 0;
  duplicates = 0;
  repeatsDropped = 0;

  constructor(members: number) {
    for (let i = 0; i < members; i++) this.seenBy.push(new Set());
  }

  receive(member: number, marker: string, cursor?: string) {
    if (cursor) this.storedAt(marker, cursor);
    if (this.senderOf.get(marker) === member) return;
    if (this.seenBy[member].has(marker)) {
      this.duplicates++;
      return;
    }
    this.seenBy[member].add(marker);
    this.delivered++;
    const now = Date.now();
    const due = this.dueAt.get(marker);
    if (due !== undefined) this.latencies.push(Math.round(now - due));
    const wire = this.wireAt.get(marker);
    if (wire !== undefined) this.wireLatencies.push(now - wire);
  }

  /** Records a cursor a message was seen (or acknowledged) under. */
  storedAt(marker: string, cursor: string) {
    const cursors = this.cursorsOf.get(marker) ?? new Set();
    cursors.add(cursor);
    this.cursorsOf.set(marker, cursors);
  }

  /** Messages stored under more than one cursor (a resend stored twice). */
  storedTwice(): number {
    return [...this.cursorsOf.values()].filter((c) => c.size > 1).length;
  }
}

/** Our members: each follows the room stream; senders send through an OrderedSender. */
function ourMember(ws: WebSocket, index: number, tally: Tally, counters: { refusals: Record<string, number>; resends: number; history: number }) {
  const stream = new RoomStream(
    {
      event(frame) {
        if (frame.type === "message") tally.receive(index, String(frame.message), String(frame.cursor));
      },
      reset() {
        throw new Error("the room's epoch changed during a benchmark step");
      },
      history(request) {
        counters.history++;
        ws.send(JSON.stringify(request));
      },
    },
  );
  const sender = new OrderedSender(
    {
      send: (frame) => {
        tally.wireAt.set(String(frame.id), Date.now());
        ws.send(JSON.stringify(frame));
      },
      acked: (item, ack) => {
        tally.ackLatencies.push(Date.now() - tally.wireAt.get(item.id)!);
        tally.storedAt(item.message, String(ack.cursor));
      },
      retrying: () => counters.resends++,
    },
    { resendBaseMs: 100 },
  );
  ws.on("message", (data) => {
    const frame = JSON.parse(data.toString()) as StreamFrame;
    if (frame.type === "error") counters.refusals[String(frame.code)] = (counters.refusals[String(frame.code)] ?? 0) + 1;
    sender.frame(frame);
    if (!stream.frame(frame) && frame.type === "message") tally.repeatsDropped++;
  });
  return { stream, sender };
}

/** One step: `rate` messages a second for `seconds`, spread over `senders` members of a fresh room. */
export async function measureRoom(implementation: "ours" | "floor", url: string, options: RoomOptions): Promise<RoomStep> {
  const sockets = await openAll(url, options.members);
  const tally = new Tally(options.members);
  const counters = { refusals: {} as Record<string, number>, resends: 0, history: 0 };
  const members =
    implementation === "ours"
      ? sockets.map((ws, i) => ourMember(ws, i, tally, counters))
      : sockets.map((ws, i) => {
          ws.on("message", (data) => tally.receive(i, data.toString()));
          return undefined;
        });
  if (implementation === "ours") {
    // Every member learns where the room stands before the step starts.
    for (const m of members) m!.stream.start();
    await sleep(500);
  }
  const started = Date.now();
  let n = 0;
  for (; Date.now() - started < options.seconds * 1000; n++) {
    const marker = `room-${n}`;
    const s = n % options.senders;
    const due = started + (n * 1000) / options.rate;
    await sleep(Math.max(0, due - Date.now()));
    tally.dueAt.set(marker, due);
    tally.senderOf.set(marker, s);
    if (implementation === "ours") members[s]!.sender.send(marker, marker);
    else {
      tally.wireAt.set(marker, Date.now());
      sockets[s].send(marker);
    }
  }
  const expected = n * (options.members - 1);
  // The tail: until everything arrived, or nothing more for 5 s, or 60 s in all (past a room's
  // capacity the senders' queues hold more than that; what is still queued then counts as not delivered).
  const drainEnds = Date.now() + 60_000;
  for (let seen = -1, quietSince = Date.now(); tally.delivered < expected && Date.now() - quietSince < 5_000 && Date.now() < drainEnds; ) {
    await sleep(100);
    if (tally.delivered !== seen) {
      seen = tally.delivered;
      quietSince = Date.now();
    }
  }
  const unsent = members.reduce((count, m) => count + (m?.sender.unacknowledged().length ?? 0), 0);
  for (const m of members) {
    m?.stream.stop();
    m?.sender.stop();
  }
  for (const ws of sockets) ws.terminate();
  return {
    implementation,
    members: options.members,
    senders: options.senders,
    rate: options.rate,
    seconds: options.seconds,
    messages: n,
    unacknowledged: unsent,
    expected,
    delivered: tally.delivered,
    duplicates: tally.duplicates + tally.storedTwice(),
    repeatsDropped: tally.repeatsDropped,
    refusals: counters.refusals,
    resends: counters.resends,
    historyRequests: counters.history,
    p50Ms: quantile(tally.latencies, 0.5),
    p99Ms: quantile(tally.latencies, 0.99),
    maxMs: tally.latencies.reduce((max, v) => Math.max(max, v), tally.latencies.length ? -Infinity : NaN),
    wireP50Ms: quantile(tally.wireLatencies, 0.5),
    wireP99Ms: quantile(tally.wireLatencies, 0.99),
    ackP50Ms: quantile(tally.ackLatencies, 0.5),
    ackP99Ms: quantile(tally.ackLatencies, 0.99),
  };
}

/** The room's capacity: the highest rate whose step delivered everything exactly once with p99 within `p99LimitMs`. */
export function capacity(steps: RoomStep[], p99LimitMs: number): number {
  const ok = steps.filter((s) => s.delivered === s.expected && s.duplicates === 0 && s.p99Ms <= p99LimitMs);
  return ok.length ? Math.max(...ok.map((s) => s.rate)) : 0;
}
