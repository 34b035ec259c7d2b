/**
 * `npm start -- [--stack dev] [--port 8080] [--data-dir DIR] …`: runs the whole chat locally.
 * Prints the stack outputs as `pulumi stack output` names them, and a line to try it with wscat.
 */
import { parseArgs } from "util";
import { parseFaults } from "./management";
import { ProgramError, readProjectFile } from "./program";
import { startLocalStack, StartupError } from "./stack";

const USAGE = `usage: npm start -- [options]
  --stack <name>            stack whose Pulumi.<name>.yaml settings to use (default dev)
  --port <n>                port for the WebSocket and @connections APIs (default 8080; 0 = any free port)
  --data-dir <dir>          keep DynamoDB data in <dir> across restarts (default: in memory)
  --idle-timeout <s>        close idle connections after <s> seconds (default 600, as AWS)
  --max-duration <s>        close every connection after <s> seconds (default 7200, as AWS)
  --management-latency <ms> delay every @connections answer by <ms> (default 0)
  --management-faults 429=<share>,500=<share>
                            answer that share of @connections calls 429 or 500 (fault injection)
  --max-instances <n>       instances per function at most (default 10)
  --lose-abnormal-disconnects
                            skip $disconnect when a client vanishes without a close frame
  --outputs <file>          where to write the outputs JSON (default .local/<stack>/outputs.json)
  --config <key>=<value>    override one of the stack's settings (repeatable), e.g. --config lambdaTimeoutSeconds=2
  -h, --help                this text`;

function positiveInt(name: string, raw: string | undefined, fallback: number | undefined, min = 1): number | undefined {
  if (raw === undefined) return fallback;
  const value = Number(raw);
  if (!Number.isInteger(value) || value < min || value > 2 ** 31) throw new StartupError(`--${name} must be a whole number of at least ${min}; got "${raw}"`);
  return value;
}

/** `--config key=value` → `<project>:key` = value, validated by the program's own settings check. */
function configOverrides(pairs: string[]): Record<string, string> {
  const project = readProjectFile().name;
  return Object.fromEntries(
    pairs.map((pair) => {
      const at = pair.indexOf("=");
      if (at < 1) throw new StartupError(`--config takes <key>=<value>; got "${pair}"`);
      const key = pair.slice(0, at);
      return [key.includes(":") ? key : `${project}:${key}`, pair.slice(at + 1)];
    }),
  );
}

function faults(text: string) {
  try {
    return parseFaults(text);
  } catch (err) {
    throw new StartupError((err as Error).message);
  }
}

async function main() {
  // This machine runs Node 20; the SDK's notice about Node 22 is noise here (Lambda runs nodejs22.x).
  process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= "true";
  const { values } = parseArgs({
    options: {
      stack: { type: "string", default: "dev" },
      port: { type: "string", default: "8080" },
      "data-dir": { type: "string" },
      "idle-timeout": { type: "string" },
      "max-duration": { type: "string" },
      "management-latency": { type: "string" },
      "management-faults": { type: "string" },
      "max-instances": { type: "string" },
      "lose-abnormal-disconnects": { type: "boolean", default: false },
      outputs: { type: "string" },
      config: { type: "string", multiple: true },
      help: { type: "boolean", short: "h", default: false },
    },
    strict: true,
  });
  if (values.help) {
    console.log(USAGE);
    return;
  }
  const port = positiveInt("port", values.port, 8080, 0)!;
  if (port > 65535) throw new StartupError(`--port must be from 0 to 65535; got ${port}`);
  const idle = positiveInt("idle-timeout", values["idle-timeout"], undefined);
  const max = positiveInt("max-duration", values["max-duration"], undefined);

  console.log(`Starting the local stack "${values.stack}"…`);
  const stack = await startLocalStack({
    stack: values.stack!,
    port,
    dataDir: values["data-dir"],
    idleTimeoutMs: idle && idle * 1000,
    maxDurationMs: max && max * 1000,
    managementLatencyMs: positiveInt("management-latency", values["management-latency"], undefined, 0),
    managementFaults: values["management-faults"] === undefined ? undefined : faults(values["management-faults"]),
    maxInstances: positiveInt("max-instances", values["max-instances"], undefined),
    loseAbnormalDisconnects: values["lose-abnormal-disconnects"],
    outputsFile: values.outputs,
    configOverrides: configOverrides(values.config ?? []),
  });

  const outputs = Object.entries(stack.outputs).sort(([a], [b]) => a.localeCompare(b));
  const width = Math.max(6, ...outputs.map(([k]) => k.length));
  console.log(`\nCurrent stack outputs (${outputs.length}):`);
  console.log(`    ${"OUTPUT".padEnd(width)}  VALUE`);
  for (const [key, value] of outputs) console.log(`    ${key.padEnd(width)}  ${typeof value === "string" ? value : JSON.stringify(value)}`);
  console.log(`\nChat page: ${stack.pageUrl}`);
  console.log(`Outputs written to ${stack.outputsFile}`);
  console.log(`DynamoDB: ${stack.dynamodb.endpoint} (${values["data-dir"] ? `data in ${values["data-dir"]}` : "in memory"})`);
  if (stack.authEnabled) {
    console.log(`\nAuth is on: connecting needs a token signed with the key in ${stack.tokenKeyFile}.`);
    console.log(`Mint one:  npm run -s token -- --stack ${values.stack} --local --name alice`);
    console.log(`Try it:    npx wscat -c "${stack.outputs.url}?token=$(npm run -s token -- --stack ${values.stack} --local --name alice)"`);
  } else {
    console.log(`\nTry it:  npx wscat -c ${stack.outputs.url}`);
  }
  console.log(`then:    {"action":"sendmessage","message":"hello"}`);
  console.log(`\nReady (pid ${process.pid}). Ctrl-C stops everything.`);

  let stopping = false;
  const stop = async (signal: string) => {
    if (stopping) return;
    stopping = true;
    console.log(`\n${signal}: stopping the local stack…`);
    await stack.stop();
    console.log("Stopped.");
    process.exit(0);
  };
  process.on("SIGINT", () => void stop("SIGINT"));
  process.on("SIGTERM", () => void stop("SIGTERM"));
}

main().catch((err: unknown) => {
  if (err instanceof StartupError || err instanceof ProgramError || (err as Error)?.name === "SettingsError") {
    console.error(`error: ${(err as Error).message}`);
  } else if ((err as { code?: string })?.code?.startsWith("ERR_PARSE_ARGS")) {
    console.error(`error: ${(err as Error).message}\n\n${USAGE}`);
  } else {
    console.error(err);
  }
  process.exit(1);
});
