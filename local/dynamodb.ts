/**
 * The embedded DynamoDB: a dynalite server (in memory, or in LevelDB files under --data-dir),
 * with every `aws.dynamodb.Table` the program declared created in it, a sweeper that honours
 * each table's TTL (dynalite stores the setting but never expires items), a proxy in front
 * that adds TransactWriteItems (transactions.ts), which dynalite lacks, and the stream of every
 * table with `streamEnabled` (stream-capture.ts; delivered to functions by streams.ts).
 */
import { CreateTableCommand, CreateTableCommandInput, DescribeTableCommand, DynamoDBClient, ResourceNotFoundException } from "@aws-sdk/client-dynamodb";
import { DynamoDBDocumentClient } from "@aws-sdk/lib-dynamodb";
import "./dynalite-patch"; // before dynalite loads its db module: unique index keys, sizes in UTF-8 bytes
import "./dynalite-memo"; // dynalite's expression parsers, memoized
import dynalite = require("dynalite");
import * as fs from "fs";
import type { AddressInfo } from "net";
import type { RecordedResource } from "./program";
import { directCall, dynamo } from "./dynalite-direct";
import { compilePattern, passesFilters } from "./event-filter";
import { dynamodbActions, guard, IamConfig } from "./iam";
import { createStreamCapture, hookDynalite, Item, STREAM_VIEW_TYPES, StreamRecord, StreamViewType, TableStream } from "./stream-capture";
import { CapacityMeter, RequestGuard, startTransactionProxy } from "./transactions";

export interface TableSpec {
  name: string;
  create: CreateTableCommandInput;
  ttlAttribute?: string;
  /** Its DynamoDB stream, when `streamEnabled`: every change is captured (stream-capture.ts). */
  stream?: TableStream;
}

interface TableInputs {
  hashKey?: string;
  rangeKey?: string;
  attributes?: { name: string; type: string }[];
  globalSecondaryIndexes?: {
    name: string;
    hashKey?: string;
    rangeKey?: string;
    keySchemas?: { attributeName: string; keyType: string }[];
    projectionType: string;
    nonKeyAttributes?: string[];
  }[];
  localSecondaryIndexes?: { name: string; rangeKey: string; projectionType: string; nonKeyAttributes?: string[] }[];
  ttl?: { attributeName?: string; enabled?: boolean };
  streamEnabled?: boolean;
  streamViewType?: string;
}

/** The table's stream, as `streamEnabled`, `streamViewType` and the mocked `streamArn` (program.ts) give it. */
function streamOf(resource: RecordedResource): TableStream | undefined {
  const inputs = resource.inputs as TableInputs;
  if (!inputs.streamEnabled) return undefined;
  const viewType = inputs.streamViewType as StreamViewType;
  if (!STREAM_VIEW_TYPES.includes(viewType)) {
    throw new Error(`table ${resource.name}: streamEnabled needs a streamViewType (${STREAM_VIEW_TYPES.join(", ")}), got ${JSON.stringify(inputs.streamViewType)}`);
  }
  return { arn: String(resource.state.streamArn), viewType };
}

/** Translates a Table resource's Pulumi inputs into the CreateTable call AWS would receive. */
export function tableSpec(resource: RecordedResource): TableSpec {
  const inputs = resource.inputs as TableInputs;
  const name = resource.state.name as string;
  const keys = (hash?: string, range?: string) => [
    ...(hash ? [{ AttributeName: hash, KeyType: "HASH" as const }] : []),
    ...(range ? [{ AttributeName: range, KeyType: "RANGE" as const }] : []),
  ];
  const projection = (type: string, nonKey?: string[]) => ({
    ProjectionType: type as "ALL" | "KEYS_ONLY" | "INCLUDE",
    ...(nonKey?.length ? { NonKeyAttributes: nonKey } : {}),
  });
  const gsis = (inputs.globalSecondaryIndexes ?? []).map((g) => ({
    IndexName: g.name,
    KeySchema: g.keySchemas?.length
      ? g.keySchemas.map((k) => ({ AttributeName: k.attributeName, KeyType: k.keyType as "HASH" | "RANGE" }))
      : keys(g.hashKey, g.rangeKey),
    Projection: projection(g.projectionType, g.nonKeyAttributes),
  }));
  const lsis = (inputs.localSecondaryIndexes ?? []).map((l) => ({
    IndexName: l.name,
    KeySchema: keys(inputs.hashKey, l.rangeKey),
    Projection: projection(l.projectionType, l.nonKeyAttributes),
  }));
  const stream = streamOf(resource);
  return {
    name,
    ttlAttribute: inputs.ttl?.enabled ? inputs.ttl.attributeName : undefined,
    ...(stream ? { stream } : {}),
    create: {
      TableName: name,
      BillingMode: "PAY_PER_REQUEST",
      AttributeDefinitions: (inputs.attributes ?? []).map((a) => ({ AttributeName: a.name, AttributeType: a.type as "S" | "N" | "B" })),
      KeySchema: keys(inputs.hashKey, inputs.rangeKey),
      ...(gsis.length ? { GlobalSecondaryIndexes: gsis } : {}),
      ...(lsis.length ? { LocalSecondaryIndexes: lsis } : {}),
    },
  };
}

export interface LocalDynamoDB {
  endpoint: string;
  client: DynamoDBDocumentClient;
  /** Capacity consumed so far, per ReturnConsumedCapacity (transactions.ts). */
  readMeter(): Promise<CapacityMeter>;
  /** Fault injection: every request arriving in the next `ms` milliseconds waits until then. */
  stall(ms: number): Promise<void>;
  /** Fault injection: connections reset and refused for `ms` milliseconds, data kept (transactions.ts). */
  restart(ms: number): Promise<void>;
  /** Fault injection: the next `count` writes of a chat message to `table` are held unanswered (transactions.ts). */
  holdMessageWrites(table: string, count: number): Promise<void>;
  /** Applies the held writes, as late writers', and returns their answers. */
  releaseHeld(): Promise<{ status: number; type?: string }[]>;
  /** Deletes every item whose TTL attribute is in the past; returns how many it removed. */
  sweepExpired(nowSeconds?: number): Promise<number>;
  /**
   * Every record of every table's stream from now on (as StartingPosition LATEST reads them), in
   * the order they were written, in batches. Returns the unsubscribe.
   */
  onStream(listener: StreamListener): () => void;
  close(): Promise<void>;
}

export type StreamListener = (records: StreamRecord[]) => void;

export interface DynamoOptions {
  tables: TableSpec[];
  /** LevelDB directory that keeps data across restarts; in memory when absent. */
  dataDir?: string;
  /** How often expired items are removed. AWS takes up to days; here it is well within a minute. */
  sweepIntervalMs?: number;
  region: string;
  /** Verify every request's signature and authorize it against the caller's role (local/iam.ts). */
  iam?: IamConfig;
  /**
   * Who reads each stream: per stream ARN, one list of filter patterns per reader (an empty list
   * takes every record; streams.ts applies the same filters again). When given, a record no reader
   * takes is dropped here, before it costs an IPC message and the stack's process a parse (every
   * chat message updates its sender's connection: a MODIFY no presence filter takes), and a stream
   * nobody reads is not captured at all. When absent, every stream is captured whole (tests).
   */
  streamReaders?: Record<string, string[][]>;
}

/** Captures the stream-enabled tables' changes that someone reads (none: no capture, nothing on the hot path). */
function captureStreams(options: DynamoOptions, listeners: Set<StreamListener>) {
  const readers = options.streamReaders;
  const read = (arn: string) => !readers || (readers[arn] ?? []).length > 0;
  const tables = options.tables.flatMap((t) => (t.stream && read(t.stream.arn) ? [{ name: t.name, keyNames: (t.create.KeySchema ?? []).map((k) => k.AttributeName!), stream: t.stream }] : []));
  if (tables.length === 0) return undefined;
  hookDynalite();
  const filters = new Map(Object.entries(readers ?? {}).map(([arn, list]) => [arn, list.map((patterns) => patterns.map((p, i) => compilePattern(p, `stream ${arn}, filter ${i + 1}`)))]));
  const accept = (record: StreamRecord) => !readers || filters.get(record.eventSourceARN)!.some((patterns) => passesFilters(patterns, record));
  const emit = (records: StreamRecord[]) => {
    for (const listener of listeners) listener(records);
  };
  return createStreamCapture(tables, options.region, emit, accept);
}

export async function startDynamoDB(options: DynamoOptions): Promise<LocalDynamoDB> {
  if (options.dataDir) fs.mkdirSync(options.dataDir, { recursive: true });
  const streamListeners = new Set<StreamListener>();
  const capture = captureStreams(options, streamListeners);
  const server = dynalite({ createTableMs: 0, deleteTableMs: 0, updateTableMs: 0, ...(options.dataDir ? { path: options.dataDir } : {}), ...(capture ? { localStreams: capture } : {}) });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => resolve());
  });
  const dynaliteUrl = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  const raw = new DynamoDBClient({ endpoint: dynaliteUrl, region: options.region, credentials: { accessKeyId: "local", secretAccessKey: "local" } });
  // Clients use the proxy, which adds TransactWriteItems; the local stack itself talks to dynalite.
  const schemas = new Map(options.tables.map((t) => [t.name, (t.create.KeySchema ?? []).map((k) => k.AttributeName!)]));
  const iam = options.iam;
  const check: RequestGuard | undefined = iam
    ? (req, body, operation, input) => guard(iam, { method: req.method ?? "POST", url: req.url ?? "/", headers: req.headers, body, service: "dynamodb" }, () => dynamodbActions(iam, operation, input))
    : undefined;
  const call = directCall(server);
  const proxy = await startTransactionProxy(call, schemas, check, capture);
  const endpoint = proxy.endpoint;
  const client = DynamoDBDocumentClient.from(
    new DynamoDBClient({ endpoint, region: options.region, credentials: { accessKeyId: "local", secretAccessKey: "local" } }),
  );

  for (const table of options.tables) {
    try {
      await raw.send(new DescribeTableCommand({ TableName: table.name })); // kept from an earlier run (--data-dir)
    } catch (err) {
      if (!(err instanceof ResourceNotFoundException)) throw err;
      await raw.send(new CreateTableCommand(table.create));
    }
    // As on AWS, a table is usable once ACTIVE (with a data directory, dynalite takes a moment).
    for (let i = 0; ; i++) {
      const { Table } = await raw.send(new DescribeTableCommand({ TableName: table.name }));
      if (Table?.TableStatus === "ACTIVE" && (Table.GlobalSecondaryIndexes ?? []).every((g) => g.IndexStatus === "ACTIVE")) break;
      if (i > 200) throw new Error(`table ${table.name} did not become ACTIVE`);
      await new Promise((r) => setTimeout(r, 10));
    }
  }

  /** As DynamoDB's TTL: scans for expired items, deletes each one still expired (proxy.expire). */
  async function sweepExpired(nowSeconds = Math.floor(Date.now() / 1000)): Promise<number> {
    let removed = 0;
    for (const table of options.tables.filter((t) => t.ttlAttribute)) {
      const keyNames = (table.create.KeySchema ?? []).map((k) => k.AttributeName!);
      let startKey: Item | undefined;
      do {
        const page = await dynamo<{ Items?: Item[]; LastEvaluatedKey?: Item }>(call, "Scan", {
          TableName: table.name,
          FilterExpression: "#ttl < :now",
          ExpressionAttributeNames: { "#ttl": table.ttlAttribute! },
          ExpressionAttributeValues: { ":now": { N: String(nowSeconds) } },
          ...(startKey ? { ExclusiveStartKey: startKey } : {}),
        });
        for (const item of page.Items ?? []) {
          const key = Object.fromEntries(keyNames.map((k) => [k, item[k]]));
          if (await proxy.expire(table.name, key, table.ttlAttribute!, nowSeconds)) removed++;
        }
        startKey = page.LastEvaluatedKey;
      } while (startKey);
    }
    return removed;
  }

  const sweeping = { running: false, closed: false };
  const timer = setInterval(() => {
    if (sweeping.running) return;
    sweeping.running = true;
    sweepExpired()
      .catch((err) => console.error(`[dynamodb] TTL sweep failed: ${(err as Error).message}`))
      .finally(() => (sweeping.running = false));
  }, options.sweepIntervalMs ?? 15_000);
  timer.unref();

  return {
    endpoint,
    client,
    readMeter: async () => proxy.meter,
    stall: async (ms) => proxy.stall(ms),
    restart: async (ms) => proxy.restart(ms),
    holdMessageWrites: async (table, count) => proxy.holdMessageWrites(table, count),
    releaseHeld: () => proxy.releaseHeld(),
    sweepExpired,
    onStream(listener) {
      streamListeners.add(listener);
      return () => void streamListeners.delete(listener);
    },
    async close() {
      if (sweeping.closed) return;
      sweeping.closed = true;
      clearInterval(timer);
      await proxy.close();
      client.destroy();
      raw.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
