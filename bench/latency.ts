/**
 * End-to-end latency: sender to receiver, in a room of `members` at `rate` messages/s for
 * `seconds`, through the local stack (ours) and through the raw `ws` relay (the floor). Every
 * client lives in this process, so send and receive times share one clock. Senders behave as the
 * chat page does: each message has an id, and one refused as `unavailable` (the room is over what
 * it can take) is sent again with the same id after `retryAfterMs`; latency counts from the first
 * send. Unlike the page, senders here do not wait for one ack before the next send: this is the
 * open-loop measurement of issue 5, kept for comparison; the room benchmark (room.ts) is the
 * page's behaviour.
 */
import WebSocket from "ws";
import { quantile, sleep } from "./stats";

export interface LatencySample {
  implementation: "ours" | "floor";
  rate: number;
  /** Sends refused as `unavailable` and sent again with the same id. */
  resent: number;
  messages: number;
  deliveries: number;
  expected: number;
  p50Ms: number;
  p99Ms: number;
}

function open(url: string): Promise<WebSocket> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, { perMessageDeflate: false });
    ws.once("open", () => resolve(ws));
    ws.once("error", reject);
  });
}

export async function measureLatency(implementation: "ours" | "floor", url: string, options: { members: number; rate: number; seconds: number }): Promise<LatencySample> {
  const sentAt = new Map<string, number>();
  const latencies: number[] = [];
  const clients: WebSocket[] = [];
  for (let i = 0; i < options.members; i += 25) {
    clients.push(...(await Promise.all(Array.from({ length: Math.min(25, options.members - i) }, () => open(url)))));
  }
  let resent = 0;
  const send = (ws: WebSocket, marker: string) =>
    ws.send(implementation === "floor" ? marker : JSON.stringify({ action: "sendmessage", message: marker, id: marker }));
  for (const ws of clients) {
    ws.on("message", (data) => {
      const text = data.toString();
      if (text.includes('"type":"ack"')) return;
      const marker = /lat-\d+/.exec(text)?.[0];
      if (marker && text.includes('"code":"unavailable"')) {
        // As the page does: after the server's retryAfterMs, and at least 100 ms.
        resent++;
        const hint = Number(/"retryAfterMs":(\d+)/.exec(text)?.[1] ?? 0);
        setTimeout(() => send(ws, marker), Math.max(100, hint));
        return;
      }
      const at = marker && sentAt.get(marker);
      if (at) latencies.push(Date.now() - at);
    });
  }
  const started = Date.now();
  let n = 0;
  for (; Date.now() - started < options.seconds * 1000; n++) {
    const marker = `lat-${n}`;
    const sender = clients[n % clients.length];
    sentAt.set(marker, Date.now());
    send(sender, marker);
    await sleep(Math.max(0, started + ((n + 1) * 1000) / options.rate - Date.now()));
  }
  // The tail: until everything arrived, or nothing more for 5 s (a saturated stack drains slowly).
  const expected = n * (options.members - 1);
  for (let seen = -1, quietSince = Date.now(); latencies.length < expected && Date.now() - quietSince < 5_000; ) {
    await sleep(100);
    if (latencies.length !== seen) {
      seen = latencies.length;
      quietSince = Date.now();
    }
  }
  for (const ws of clients) ws.terminate();
  return { implementation, rate: options.rate, resent, messages: n, deliveries: latencies.length, expected, p50Ms: quantile(latencies, 0.5), p99Ms: quantile(latencies, 0.99) };
}
