/**
 * `npm run test:under-load [-- --runs 5 --burners 2]`: runs the e2e suite (faults included) again
 * and again while other processes keep every core busy, and stops at the first failure. A test that
 * passes only on an idle machine waits on time where it should wait on an event, or hides a race.
 */
import { ChildProcess, spawn, spawnSync } from "child_process";
import * as os from "os";
import { parseArgs } from "util";

const BURN = "for (;;) Math.sqrt(Math.random());";

function main(): number {
  const { values } = parseArgs({ options: { runs: { type: "string", default: "5" }, burners: { type: "string", default: String(os.cpus().length) } } });
  const runs = Number(values.runs);
  const burners: ChildProcess[] = Array.from({ length: Number(values.burners) }, () => spawn(process.execPath, ["-e", BURN], { stdio: "ignore" }));
  const stop = () => burners.forEach((b) => b.kill("SIGKILL"));
  process.on("exit", stop);
  try {
    for (let run = 1; run <= runs; run++) {
      console.log(`under load (${burners.length} CPU burners): e2e run ${run} of ${runs}, load average ${os.loadavg()[0].toFixed(1)}`);
      const started = Date.now();
      const result = spawnSync("npx", ["mocha", "test/e2e/**/*.test.ts"], { stdio: "inherit", cwd: `${__dirname}/..` });
      console.log(`run ${run}: ${result.status === 0 ? "passed" : "FAILED"} in ${Math.round((Date.now() - started) / 1000)} s`);
      if (result.status !== 0) return 1;
    }
    console.log(`all ${runs} runs passed under load`);
    return 0;
  } finally {
    stop();
  }
}

process.exitCode = main();
