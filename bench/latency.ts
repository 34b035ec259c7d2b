/**
 * End-to-end latency: sender to receiver, in a room of `members` at `rate` messages/s for
 * `seconds`, through the local stack (ours) and through the raw `ws` relay (the floor). Every
 * client lives in this process, so send and receive times share one clock.
 */
import WebSocket from "ws";
import { quantile, sleep } from "./stats";

export interface LatencySample {
  implementation: "ours" | "floor";
  rate: number;
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
  for (const ws of clients) {
    ws.on("message", (data) => {
      const text = data.toString();
      const marker = /lat-\d+/.exec(text)?.[0];
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
    sender.send(implementation === "floor" ? marker : JSON.stringify({ action: "sendmessage", message: marker }));
    await sleep(Math.max(0, started + ((n + 1) * 1000) / options.rate - Date.now()));
  }
  const expected = n * (options.members - 1);
  for (let i = 0; i < 100 && latencies.length < expected; i++) await sleep(100);
  for (const ws of clients) ws.terminate();
  return { implementation, rate: options.rate, messages: n, deliveries: latencies.length, expected, p50Ms: quantile(latencies, 0.5), p99Ms: quantile(latencies, 0.99) };
}
