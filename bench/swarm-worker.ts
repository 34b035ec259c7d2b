/**
 * One process of the client swarm (swarm.ts): opens WebSocket connections on command and counts,
 * per marker, the frames that carry it and when the last one arrived. Runs as a child process so
 * that tens of thousands of sockets are spread over several event loops (and file-descriptor
 * tables) instead of one.
 */
import WebSocket from "ws";

type Command =
  | { type: "connect"; url: string; count: number; parallel: number }
  | { type: "expect"; marker: string }
  | { type: "report"; marker: string }
  | { type: "close" };

const sockets: WebSocket[] = [];
const seen = new Map<string, { count: number; last: number; first: number }>();
let expecting: string[] = [];

const reply = (message: unknown) => process.send?.(message);

function open(url: string): Promise<WebSocket> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, { perMessageDeflate: false });
    ws.once("open", () => resolve(ws));
    ws.once("error", reject);
    ws.once("unexpected-response", (_req, res) => reject(new Error(`handshake answered ${res.statusCode}`)));
    ws.on("message", (data) => {
      if (!expecting.length) return;
      const text = data.toString();
      for (const marker of expecting) {
        if (!text.includes(marker)) continue;
        const now = Date.now();
        const entry = seen.get(marker) ?? { count: 0, last: 0, first: now };
        entry.count++;
        entry.last = now;
        seen.set(marker, entry);
      }
    });
  });
}

async function connect(url: string, count: number, parallel: number) {
  let next = 0;
  let failed = 0;
  let lastError = "";
  async function lane() {
    while (next < count) {
      next++;
      try {
        sockets.push(await open(url));
      } catch (err) {
        failed++;
        lastError = (err as Error).message;
      }
    }
  }
  await Promise.all(Array.from({ length: Math.min(parallel, count) }, lane));
  reply({ type: "connected", open: sockets.length, failed, lastError });
}

process.on("message", (command: Command) => {
  switch (command.type) {
    case "connect":
      void connect(command.url, command.count, command.parallel);
      break;
    case "expect":
      expecting = [...expecting, command.marker];
      reply({ type: "expecting" });
      break;
    case "report": {
      const entry = seen.get(command.marker);
      reply({ type: "report", marker: command.marker, count: entry?.count ?? 0, first: entry?.first ?? 0, last: entry?.last ?? 0 });
      break;
    }
    case "close":
      for (const ws of sockets) ws.terminate();
      process.exit(0);
  }
});
