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
  /**
   * Ours: called with the presence records a step caused (a join per member once all are open, a
   * leave per member once all are closed); resolves once the stack has handled them. A room's
   * connect storm fans out its joins to the members already there (about n²/2 posts: README,
   * "Presence and the presence limit"), and a step measures the room's messages, not that.
   */
  settle?: (phase: "joins" | "leaves", records: number) => Promise<void>;
  /**
   * Ours: seconds of the same rate offered first in the same room and not counted, until every
   * warm-up message is acknowledged. A step measures the rate once the instances it needs run (each
   * sender keeps one message in flight, so a faster rate can need more instances than the step
   * before it started); what a new instance costs is the cold-start table's.
   */
  warmupSeconds?: number;
  /** Called right before the measured messages are offered, and once they have all arrived (or stopped arriving). */
  measuring?: (phase: "start" | "end") => Promise<void>;
}

/** Markers of warm-up messages, which no tally counts. */
const WARM_UP = "warm-up-";

/**
 * A `settle` hook for a local stack: presence logs one line per batch with the records it took
 * (INSERTs and REMOVEs of connection records with a room); it waits until they add up to every
 * connect and disconnect so far. (A batch Lambda retried counts again: at least, not exactly.)
 */
export function presenceSettler(logs: () => string, timeoutMs = 300_000): NonNullable<RoomOptions["settle"]> {
  let expected = 0;
  // The logs only grow: each look reads the complete lines added since the last one.
  let handledSoFar = 0;
  let readTo = 0;
  const handled = () => {
    const text = logs();
    const end = text.lastIndexOf("\n") + 1;
    for (const m of text.slice(readTo, end).matchAll(/"msg":"presence".*?"records":(\d+)/g)) handledSoFar += Number(m[1]);
    readTo = Math.max(readTo, end);
    return handledSoFar;
  };
  return async (phase, records) => {
    expected += records;
    if (!(await waitUntil(() => handled() >= expected, timeoutMs))) throw new Error(`presence handled ${handled()} of ${expected} records (${phase}) in ${timeoutMs} ms`);
  };
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
        if (frame.type === "message" && !String(frame.message).startsWith(WARM_UP)) tally.receive(index, String(frame.message), String(frame.cursor));
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
        if (item.id.startsWith(WARM_UP)) return;
        tally.ackLatencies.push(Date.now() - tally.wireAt.get(item.id)!);
        tally.storedAt(item.message, String(ack.cursor));
      },
      retrying: (item) => {
        if (!item.id.startsWith(WARM_UP)) counters.resends++;
      },
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

type OurMember = ReturnType<typeof ourMember>;

/** Offers `rate` messages a second for `seconds` (`send` the n-th at its due time); returns how many. */
async function offer(rate: number, seconds: number, send: (n: number, due: number) => void): Promise<number> {
  const started = Date.now();
  let n = 0;
  for (; Date.now() - started < seconds * 1000; n++) {
    const due = started + (n * 1000) / rate;
    await sleep(Math.max(0, due - Date.now()));
    send(n, due);
  }
  return n;
}

async function waitUntil(done: () => boolean, timeoutMs: number): Promise<boolean> {
  const until = Date.now() + timeoutMs;
  while (!done() && Date.now() < until) await sleep(50);
  return done();
}

/**
 * Ours, before the measured messages: the members' joins handled, every member's first history
 * page answered (the room's joins, up to 100 events: in a room of 100 that is 10,000 posts), and
 * the warm-up offered and acknowledged.
 */
async function readyToMeasure(members: OurMember[], options: RoomOptions): Promise<void> {
  await options.settle?.("joins", members.length);
  for (const m of members) m.stream.start();
  if (!(await waitUntil(() => members.every((m) => m.stream.cursor !== null), 120_000))) throw new Error("a member's first history request went unanswered for 120 s");
  if (!options.warmupSeconds) return;
  await offer(options.rate, options.warmupSeconds, (n) => members[n % options.senders].sender.send(`${WARM_UP}${n}`, `${WARM_UP}${n}`));
  await waitUntil(() => members.every((m) => m.sender.unacknowledged().length === 0), 30_000);
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
  if (implementation === "ours") await readyToMeasure(members as OurMember[], options);
  await options.measuring?.("start");
  const n = await offer(options.rate, options.seconds, (n, due) => {
    const marker = `room-${n}`;
    const s = n % options.senders;
    tally.dueAt.set(marker, due);
    tally.senderOf.set(marker, s);
    if (implementation === "ours") members[s]!.sender.send(marker, marker);
    else {
      tally.wireAt.set(marker, Date.now());
      sockets[s].send(marker);
    }
  });
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
  await options.measuring?.("end");
  const unsent = members.reduce((count, m) => count + (m?.sender.unacknowledged().length ?? 0), 0);
  for (const m of members) {
    m?.stream.stop();
    m?.sender.stop();
  }
  for (const ws of sockets) ws.terminate();
  if (implementation === "ours") await options.settle?.("leaves", sockets.length);
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
