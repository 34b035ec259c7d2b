/**
 * The embedded DynamoDB in a process of its own. Under load the local stack's main process is one
 * event loop serving the gateway, @connections, the Lambda runtime and DynamoDB; on 2 cores that
 * loop was the bottleneck (issue 10: every DynamoDB round trip took 20–25 ms at 100 messages a
 * second while a third of the CPU sat idle). Here DynamoDB gets its own loop. The parent talks to
 * it over IPC for what is not DynamoDB's own API (metering, fault injection, the TTL sweep) and
 * over HTTP, as every client does, for the rest. Stream records (stream-capture.ts) come back
 * over IPC too, one message per batch.
 *
 * `startDynamoDBProcess` (the parent side) returns the same LocalDynamoDB as `startDynamoDB`. The
 * child exits when its parent goes away (its IPC channel closes), so a killed stack leaves no
 * DynamoDB behind.
 */
import { DynamoDBClient } from "@aws-sdk/client-dynamodb";
import { DynamoDBDocumentClient } from "@aws-sdk/lib-dynamodb";
import { ChildProcess, fork } from "child_process";
import * as path from "path";
import type { DynamoOptions, LocalDynamoDB, StreamListener } from "./dynamodb";
import type { StreamRecord } from "./stream-capture";

type Call = { id: number; op: "meter" | "stall" | "restart" | "sweep" | "hold" | "release" | "close"; arg?: number; table?: string };
type Reply = { id: number; ok: true; value?: unknown } | { id: number; ok: false; error: string };
/** The child's unasked messages: stream records, in the order they were written. */
type StreamMessage = { type: "stream"; records: StreamRecord[] };
const isStream = (m: Reply | StreamMessage): m is StreamMessage => (m as StreamMessage).type === "stream";

/** The child's side: started with the options, answers the parent's calls. */
async function serve(): Promise<void> {
  const { startDynamoDB } = await import("./dynamodb");
  const options = JSON.parse(process.env.LOCAL_DYNAMODB_OPTIONS ?? "{}") as DynamoOptions;
  let db: LocalDynamoDB;
  try {
    db = await startDynamoDB(options);
  } catch (err) {
    process.send!({ type: "failed", error: (err as Error).message });
    process.exit(1);
  }
  const answer = async (call: Call): Promise<unknown> => {
    switch (call.op) {
      case "meter":
        return db.readMeter();
      case "stall":
        return db.stall(call.arg ?? 0);
      case "restart":
        return db.restart(call.arg ?? 0);
      case "sweep":
        return db.sweepExpired(call.arg);
      case "hold":
        return db.holdMessageWrites(call.table ?? "", call.arg ?? 0);
      case "release":
        return db.releaseHeld();
      case "close":
        await db.close();
        setImmediate(() => process.exit(0));
        return undefined;
    }
  };
  db.onStream((records) => {
    if (process.connected) process.send!({ type: "stream", records } satisfies StreamMessage);
  });
  process.on("message", (call: Call) => {
    answer(call).then(
      (value) => process.send!({ id: call.id, ok: true, value } satisfies Reply),
      (err: Error) => process.send!({ id: call.id, ok: false, error: err.message } satisfies Reply),
    );
  });
  // The parent went away (killed, crashed): nothing is left to serve.
  process.on("disconnect", () => void db.close().finally(() => process.exit(0)));
  process.send!({ type: "ready", endpoint: db.endpoint });
}

/** Starts the embedded DynamoDB in a child process; resolves once its tables are ACTIVE. */
export async function startDynamoDBProcess(options: DynamoOptions): Promise<LocalDynamoDB> {
  const child: ChildProcess = fork(__filename, [], {
    // The parent may run under ts-node (npm start) or plain node with its register hook (tests).
    // LOCAL_DYNAMODB_NODE_OPTIONS adds Node flags (--cpu-prof …), as LOCAL_LAMBDA_NODE_OPTIONS does for functions.
    execArgv: ["--require", "ts-node/register/transpile-only", ...(process.env.LOCAL_DYNAMODB_NODE_OPTIONS ?? "").split(" ").filter(Boolean)],
    env: { ...process.env, LOCAL_DYNAMODB_CHILD: "1", LOCAL_DYNAMODB_OPTIONS: JSON.stringify(options), TS_NODE_TRANSPILE_ONLY: "true" },
    stdio: ["ignore", "inherit", "inherit", "ipc"],
  });
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
  const endpoint = await new Promise<string>((resolve, reject) => {
    child.once("message", (m: { type: string; endpoint?: string; error?: string }) => (m.type === "ready" ? resolve(m.endpoint!) : reject(new Error(`DynamoDB did not start: ${m.error}`))));
    void exited.then(() => reject(new Error("DynamoDB's process exited while starting")));
  });
  let next = 0;
  const pending = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void }>();
  const streamListeners = new Set<StreamListener>();
  child.on("message", (reply: Reply | StreamMessage) => {
    if (isStream(reply)) {
      for (const listener of streamListeners) listener(reply.records);
      return;
    }
    const waiter = pending.get(reply.id);
    if (!waiter) return;
    pending.delete(reply.id);
    if (reply.ok) waiter.resolve(reply.value);
    else waiter.reject(new Error(reply.error));
  });
  void exited.then(() => {
    for (const w of pending.values()) w.reject(new Error("DynamoDB's process exited"));
    pending.clear();
  });
  const call = <T>(op: Call["op"], arg?: number, table?: string) =>
    new Promise<T>((resolve, reject) => {
      const id = ++next;
      pending.set(id, { resolve: resolve as (v: unknown) => void, reject });
      child.send({ id, op, arg, table } satisfies Call);
    });
  const client = DynamoDBDocumentClient.from(
    new DynamoDBClient({ endpoint, region: options.region, credentials: { accessKeyId: "local", secretAccessKey: "local" } }),
  );
  let closing: Promise<void> | undefined;
  return {
    endpoint,
    client,
    readMeter: () => call("meter"),
    stall: (ms) => call("stall", ms),
    restart: (ms) => call("restart", ms),
    sweepExpired: (nowSeconds) => call("sweep", nowSeconds),
    holdMessageWrites: (table, count) => call("hold", count, table),
    releaseHeld: () => call("release"),
    onStream(listener) {
      streamListeners.add(listener);
      return () => void streamListeners.delete(listener);
    },
    close() {
      closing ??= (async () => {
        client.destroy();
        if (child.exitCode === null && child.connected) await call("close").catch(() => undefined);
        await exited;
      })();
      return closing;
    },
  };
}

if (process.env.LOCAL_DYNAMODB_CHILD === "1" && require.main === module) void serve();

/** This module's file name, as the child's command line shows it (bench/stages.ts finds the process by it). */
export const DYNAMODB_PROCESS_FILE = path.basename(__filename);
