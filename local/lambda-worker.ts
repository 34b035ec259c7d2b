/**
 * One Lambda instance: a child process that loads a function's archive (`__index.js`, exactly
 * the code Pulumi uploads) once, so its factory runs once, then runs one invocation at a time
 * as the parent sends them over IPC. The parent enforces the timeout by killing this process.
 */
import * as path from "path";

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
try {
  const archiveDir = process.env.LOCAL_LAMBDA_ARCHIVE_DIR!;
  const [file, exportName] = (process.env._HANDLER ?? "__index.handler").split(".");
  handler = require(path.join(archiveDir, file))[exportName];
  if (typeof handler !== "function") throw new Error(`${process.env._HANDLER} is not a function`);
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
  try {
    const result = await handler(message.event, context);
    send({ type: "result", id: message.id, result: result === undefined ? null : result });
  } catch (err) {
    console.error(`ERROR\tInvoke Error\t${JSON.stringify(serializeError(err))}`);
    send({ type: "result", id: message.id, error: serializeError(err) });
  }
});

// An exception outside any invocation kills a real Lambda instance too.
process.on("uncaughtException", (err) => {
  console.error(`ERROR\tUncaught Exception\t${JSON.stringify(serializeError(err))}`);
  process.exit(129);
});
