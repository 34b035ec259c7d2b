/**
 * One Lambda instance: a child process that loads a function's archive (`__index.js`, exactly
 * the code Pulumi uploads) once, so its factory runs once, then runs one invocation at a time
 * as the parent sends them over IPC. The parent enforces the timeout by killing this process.
 * Each result carries what Lambda's REPORT line shows (init time, peak memory) and the CPU time
 * the invocation used. It runs as plain JavaScript (lambda.ts transpiles it), without ts-node,
 * so its memory and start-up time are those of the function's own code.
 */
import * as fs from "fs";
import * as path from "path";

/**
 * This instance's peak resident memory, in KB. On Linux, `resourceUsage().maxRSS` keeps the peak
 * of the process that forked the instance (the stack's, often over 128 MB: measured, a child of a
 * 344 MB parent reported 304 MB with 44 MB resident), so the peak of this process's own memory
 * (VmHWM in /proc/self/status) is read instead; elsewhere, maxRSS.
 */
function peakRssKb(): number {
  try {
    const hwm = /^VmHWM:\s+(\d+) kB$/m.exec(fs.readFileSync("/proc/self/status", "utf8"));
    if (hwm) return Number(hwm[1]);
  } catch {
    // no /proc: not Linux
  }
  return process.resourceUsage().maxRSS;
}

interface InvokeMessage {
  type: "invoke";
  id: number;
  event: unknown;
  requestId: string;
  deadline: number;
}

type Handler = (event: unknown, context: Record<string, unknown>) => Promise<unknown>;

const send = (message: unknown) => process.send?.(message);

function serializeError(err: unknown) {
  if (err instanceof Error) return { errorType: err.name, errorMessage: err.message, stack: err.stack };
  return { errorType: typeof err, errorMessage: String(err) };
}

let handler: Handler;
let initDurationMs: number | undefined;
try {
  const loading = performance.now();
  const archiveDir = process.env.LOCAL_LAMBDA_ARCHIVE_DIR!;
  const [file, exportName] = (process.env._HANDLER ?? "__index.handler").split(".");
  handler = require(path.join(archiveDir, file))[exportName];
  if (typeof handler !== "function") throw new Error(`${process.env._HANDLER} is not a function`);
  initDurationMs = performance.now() - loading;
  send({ type: "ready" });
} catch (err) {
  send({ type: "init-error", error: serializeError(err) });
  process.exit(1);
}

process.on("message", async (message: InvokeMessage) => {
  if (message.type !== "invoke") return;
  const context = {
    awsRequestId: message.requestId,
    functionName: process.env.AWS_LAMBDA_FUNCTION_NAME,
    functionVersion: "$LATEST",
    invokedFunctionArn: process.env.LOCAL_LAMBDA_FUNCTION_ARN,
    memoryLimitInMB: process.env.AWS_LAMBDA_FUNCTION_MEMORY_SIZE,
    logGroupName: process.env.AWS_LAMBDA_LOG_GROUP_NAME,
    logStreamName: process.env.AWS_LAMBDA_LOG_STREAM_NAME,
    callbackWaitsForEmptyEventLoop: true,
    getRemainingTimeInMillis: () => Math.max(0, message.deadline - Date.now()),
  };
  const cpu = process.cpuUsage();
  // Lambda reports init once, with the first invocation of an instance.
  const report = () => ({
    cpuMs: (({ user, system }) => (user + system) / 1000)(process.cpuUsage(cpu)),
    maxMemoryUsedMb: Math.ceil(peakRssKb() / 1024),
    ...(initDurationMs === undefined ? {} : { initDurationMs }),
  });
  try {
    const result = await handler(message.event, context);
    send({ type: "result", id: message.id, result: result === undefined ? null : result, report: report() });
  } catch (err) {
    console.error(`ERROR\tInvoke Error\t${JSON.stringify(serializeError(err))}`);
    send({ type: "result", id: message.id, error: serializeError(err), report: report() });
  }
  initDurationMs = undefined;
});

// Shutdown ends the process normally, so exit hooks (--cpu-prof) still run.
process.on("SIGTERM", () => process.exit(0));

// An exception outside any invocation kills a real Lambda instance too.
process.on("uncaughtException", (err) => {
  console.error(`ERROR\tUncaught Exception\t${JSON.stringify(serializeError(err))}`);
  process.exit(129);
});
