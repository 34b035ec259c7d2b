/**
 * A swarm of WebSocket clients spread over child processes (swarm-worker.ts). The benchmark
 * opens N members of one room with it and asks how many received a marked frame, and when.
 */
import { ChildProcess, fork } from "child_process";
import * as path from "path";

export interface Receipt {
  count: number;
  /** Epoch ms of the first and last frame carrying the marker (0 when none). */
  first: number;
  last: number;
}

interface Worker {
  child: ChildProcess;
  next(type: string): Promise<Record<string, unknown>>;
}

function spawnWorker(): Worker {
  const child = fork(path.join(__dirname, "swarm-worker.ts"), [], { execArgv: ["--require", "ts-node/register/transpile-only"], stdio: ["ignore", "inherit", "inherit", "ipc"] });
  const waiters: { type: string; resolve: (m: Record<string, unknown>) => void }[] = [];
  child.on("message", (message: Record<string, unknown>) => {
    const at = waiters.findIndex((w) => w.type === message.type);
    if (at >= 0) waiters.splice(at, 1)[0].resolve(message);
  });
  return { child, next: (type) => new Promise((resolve) => waiters.push({ type, resolve })) };
}

export class Swarm {
  private readonly workers: Worker[];
  size = 0;

  constructor(processes: number) {
    this.workers = Array.from({ length: processes }, spawnWorker);
  }

  /** Opens `count` more connections to `url`, spread evenly; throws if any handshake failed. */
  async grow(url: string, count: number, parallel = 64): Promise<void> {
    const share = (i: number) => Math.floor(count / this.workers.length) + (i < count % this.workers.length ? 1 : 0);
    const results = await Promise.all(
      this.workers.map((w, i) => {
        const done = w.next("connected");
        w.child.send({ type: "connect", url, count: share(i), parallel });
        return done;
      }),
    );
    const failed = results.reduce((n, r) => n + Number(r.failed), 0);
    if (failed) throw new Error(`${failed} of ${count} connections failed: ${results.find((r) => r.failed)?.lastError}`);
    this.size += count;
  }

  async expect(marker: string): Promise<void> {
    await Promise.all(
      this.workers.map((w) => {
        const done = w.next("expecting");
        w.child.send({ type: "expect", marker });
        return done;
      }),
    );
  }

  async receipt(marker: string): Promise<Receipt> {
    const parts = await Promise.all(
      this.workers.map((w) => {
        const done = w.next("report");
        w.child.send({ type: "report", marker });
        return done;
      }),
    );
    const withAny = parts.filter((p) => Number(p.count) > 0);
    return {
      count: parts.reduce((n, p) => n + Number(p.count), 0),
      first: withAny.length ? Math.min(...withAny.map((p) => Number(p.first))) : 0,
      last: withAny.length ? Math.max(...withAny.map((p) => Number(p.last))) : 0,
    };
  }

  async close(): Promise<void> {
    await Promise.all(
      this.workers.map(
        (w) =>
          new Promise<void>((resolve) => {
            w.child.once("exit", () => resolve());
            w.child.send({ type: "close" });
          }),
      ),
    );
  }
}
