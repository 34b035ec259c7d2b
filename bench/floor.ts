/** Starts the floor (floor-server.ts, a raw `ws` relay) in its own process, as both benchmarks use it. */
import { fork } from "child_process";
import * as path from "path";

export interface Floor {
  url: string;
  /** The relay process's CPU time so far and its peak RSS. */
  usage(): Promise<{ cpuMs: number; maxRssMb: number }>;
  stop(): void;
}

export async function startFloor(): Promise<Floor> {
  const child = fork(path.join(__dirname, "floor-server.ts"), [], { execArgv: ["--require", "ts-node/register/transpile-only"], stdio: ["ignore", "inherit", "inherit", "ipc"] });
  const next = (type: string) =>
    new Promise<Record<string, number>>((resolve) => {
      const on = (m: Record<string, number> & { type: string }) => {
        if (m.type !== type) return;
        child.off("message", on);
        resolve(m);
      };
      child.on("message", on);
    });
  const { port } = await next("listening");
  return {
    url: `ws://127.0.0.1:${port}`,
    async usage() {
      const answer = next("usage");
      child.send({ type: "usage" });
      const { cpuMs, maxRssMb } = await answer;
      return { cpuMs, maxRssMb };
    },
    stop: () => child.kill(),
  };
}
