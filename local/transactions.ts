/**
 * TransactWriteItems for the embedded DynamoDB, which dynalite lacks. A proxy in front of dynalite
 * forwards every request, but runs the writes to each table one at a time (PutItem, UpdateItem,
 * DeleteItem, BatchWriteItem and TransactWriteItems share the queues of the tables they name), so a
 * transaction is isolated from every other write to its tables. A transaction reads every item it
 * touches, then applies all its actions at once (they touch distinct items, as DynamoDB requires),
 * each with its own condition; when any fails, the items already changed are restored and the
 * caller gets a TransactionCanceledException with a CancellationReason per item, as DynamoDB answers.
 */
import {
  AttributeValue,
  DeleteItemCommand,
  DynamoDBClient,
  GetItemCommand,
  PutItemCommand,
  TransactWriteItem,
  UpdateItemCommand,
} from "@aws-sdk/client-dynamodb";
import { createServer, IncomingMessage, request, Server, ServerResponse } from "http";
import type { AddressInfo } from "net";

const WRITES = new Set(["PutItem", "UpdateItem", "DeleteItem", "BatchWriteItem", "TransactWriteItems"]);

type Key = Record<string, AttributeValue>;

/** The one action of a transaction item (DynamoDB requires exactly one). */
function actionOf(item: TransactWriteItem) {
  return item.Put ?? item.Update ?? item.Delete ?? item.ConditionCheck;
}

/** Applies one transaction item as a single-item write with its condition. */
function stepFor(client: DynamoDBClient, action: TransactWriteItem, current: () => Promise<Key | undefined>): () => Promise<unknown> {
  if (action.Put) {
    const p = action.Put;
    return () => client.send(new PutItemCommand({ TableName: p.TableName, Item: p.Item, ConditionExpression: p.ConditionExpression, ExpressionAttributeNames: p.ExpressionAttributeNames, ExpressionAttributeValues: p.ExpressionAttributeValues }));
  }
  if (action.Update) {
    const u = action.Update;
    return () => client.send(new UpdateItemCommand({ TableName: u.TableName, Key: u.Key, UpdateExpression: u.UpdateExpression, ConditionExpression: u.ConditionExpression, ExpressionAttributeNames: u.ExpressionAttributeNames, ExpressionAttributeValues: u.ExpressionAttributeValues }));
  }
  if (action.Delete) {
    const d = action.Delete;
    return () => client.send(new DeleteItemCommand({ TableName: d.TableName, Key: d.Key, ConditionExpression: d.ConditionExpression, ExpressionAttributeNames: d.ExpressionAttributeNames, ExpressionAttributeValues: d.ExpressionAttributeValues }));
  }
  if (action.ConditionCheck) {
    // Evaluates the condition against the item without changing it: rewrite the item as it is
    // (or, when there is none, delete nothing), with the condition attached.
    const c = action.ConditionCheck;
    const names = { ExpressionAttributeNames: c.ExpressionAttributeNames, ExpressionAttributeValues: c.ExpressionAttributeValues };
    return async () => {
      const item = await current();
      return item
        ? client.send(new PutItemCommand({ TableName: c.TableName, Item: item, ConditionExpression: c.ConditionExpression, ...names }))
        : client.send(new DeleteItemCommand({ TableName: c.TableName, Key: c.Key, ConditionExpression: c.ConditionExpression, ...names }));
    };
  }
  throw Object.assign(new Error("each TransactItem needs one of Put, Update, Delete or ConditionCheck"), { type: "ValidationException" });
}

/** The key of a Put's item, from the table's key schema. */
async function keyOf(client: DynamoDBClient, schemas: Map<string, string[]>, table: string, item: Key): Promise<Key> {
  const names = schemas.get(table);
  if (!names) throw Object.assign(new Error(`Requested resource not found: Table: ${table} not found`), { type: "ResourceNotFoundException" });
  return Object.fromEntries(names.map((n) => [n, item[n]]));
}

export async function transactWrite(client: DynamoDBClient, schemas: Map<string, string[]>, items: TransactWriteItem[]) {
  if (items.length === 0 || items.length > 100) {
    throw Object.assign(new Error("TransactItems must have from 1 to 100 items"), { type: "ValidationException" });
  }
  const reasons = items.map(() => ({ Code: "None" }) as { Code: string; Message?: string; Item?: Key });
  // Every item's state before the transaction, read at once (for the rollback); writes are serialized
  // by the caller, so nothing changes them between these reads and the steps.
  const targets = await Promise.all(
    items.map(async (action) => {
      const putItem = action.Put?.Item;
      const table = actionOf(action)?.TableName ?? "";
      const key = putItem ? await keyOf(client, schemas, table, putItem) : (action.Update ?? action.Delete ?? action.ConditionCheck)?.Key ?? {};
      const read = async () => (await client.send(new GetItemCommand({ TableName: table, Key: key, ConsistentRead: true }))).Item;
      return { table, key, read, previous: await read() };
    }),
  );
  // DynamoDB allows one action per item in a transaction, so the steps touch distinct items and
  // can run at once; if any fails, every step that succeeded is undone.
  const outcomes = await Promise.allSettled(items.map((action, i) => stepFor(client, action, targets[i].read)()));
  if (outcomes.every((o) => o.status === "fulfilled")) return { cancelled: undefined };
  for (let i = 0; i < items.length; i++) {
    const outcome = outcomes[i];
    if (outcome.status === "fulfilled") {
      if (items[i].ConditionCheck) continue;
      const { table, key, previous } = targets[i];
      if (previous) await client.send(new PutItemCommand({ TableName: table, Item: previous }));
      else await client.send(new DeleteItemCommand({ TableName: table, Key: key }));
    } else if ((outcome.reason as Error).name === "ConditionalCheckFailedException") {
      // With ReturnValuesOnConditionCheckFailure ALL_OLD the reason carries the item as it is (read
      // above; writes to its table are queued behind this one, so it has not changed).
      const current = actionOf(items[i])?.ReturnValuesOnConditionCheckFailure === "ALL_OLD" ? targets[i].previous : undefined;
      reasons[i] = { Code: "ConditionalCheckFailed", Message: "The conditional request failed", ...(current ? { Item: current } : {}) };
    }
  }
  const unexpected = outcomes.find((o): o is PromiseRejectedResult => o.status === "rejected" && (o.reason as Error).name !== "ConditionalCheckFailedException");
  if (unexpected) throw unexpected.reason;
  return { cancelled: reasons };
}

/** Capacity consumed since start, as DynamoDB reports it with ReturnConsumedCapacity, per operation. */
export interface CapacityMeter {
  requests: Record<string, number>;
  readUnits: number;
  writeUnits: number;
}

const READS = new Set(["GetItem", "BatchGetItem", "Query", "Scan"]);

/** Transactional writes cost twice a standard write: 2 WCU per KB of each item (DynamoDB pricing). */
function transactionWriteUnits(items: TransactWriteItem[]): number {
  return items.reduce((units, action) => {
    // An Update's item size is unknown here: its key stands in (at least 1 KB is billed anyway).
    const item = action.Put?.Item ?? action.Update?.Key ?? action.Delete?.Key ?? action.ConditionCheck?.Key ?? {};
    return units + 2 * Math.max(1, Math.ceil(Buffer.byteLength(JSON.stringify(item)) / 1024));
  }, 0);
}

/** The fields of a request body the proxy reads; parsed once per request. */
type RequestBody =
  | { ok: true; value: { TableName?: string; TransactItems?: TransactWriteItem[]; RequestItems?: Record<string, unknown>; ReturnConsumedCapacity?: string } }
  | { ok: false; error: unknown };

function parseRequest(body: Buffer): RequestBody {
  try {
    return { ok: true, value: JSON.parse(body.toString("utf8")) };
  } catch (error) {
    return { ok: false, error };
  }
}

export interface TransactionProxy {
  endpoint: string;
  /** What every request so far consumed (requests are metered with ReturnConsumedCapacity: TOTAL). */
  meter: CapacityMeter;
  /** Fault injection: holds every request that arrives in the next `ms` milliseconds until then. */
  stall(ms: number): void;
  /**
   * Fault injection: a restart as clients see it. Open connections are reset (requests in flight
   * get no answer) and every connection in the next `ms` milliseconds is reset on arrival; then
   * service resumes with the data intact, as a DynamoDB endpoint restarting over --data-dir.
   */
  restart(ms: number): void;
  close(): Promise<void>;
}

/** Starts the proxy in front of `target` (dynalite's URL). `schemas` maps table name → key attribute names. */
export async function startTransactionProxy(target: string, client: DynamoDBClient, schemas: Map<string, string[]>): Promise<TransactionProxy> {
  const targetUrl = new URL(target);
  // One write queue per table: a write waits for the earlier writes to its tables only, so the
  // connections table's writes never queue behind the messages table's transactions. A transaction
  // joins the queues of every table it touches, all at once (no lock order, so no deadlock).
  const queues = new Map<string, Promise<unknown>>();
  const serialized = <T>(tables: string[], work: () => Promise<T>): Promise<T> => {
    const unique = [...new Set(tables)];
    const next = Promise.all(unique.map((t) => queues.get(t))).then(work, work);
    const settled = next.catch(() => undefined);
    for (const t of unique) queues.set(t, settled);
    return next;
  };
  /** The tables a write names (an unreadable body queues with every other unreadable one). */
  const tablesOf = (input: RequestBody): string[] => {
    if (!input.ok) return [""];
    if (input.value.TransactItems) return input.value.TransactItems.map((a) => actionOf(a)?.TableName ?? "");
    if (input.value.RequestItems) return Object.keys(input.value.RequestItems);
    return [input.value.TableName ?? ""];
  };

  const meter: CapacityMeter = { requests: {}, readUnits: 0, writeUnits: 0 };

  /**
   * Forwards to dynalite, asking for ConsumedCapacity on every request so the meter sees all of it;
   * the figure is removed from the answer when the caller did not ask for it.
   */
  function forward(req: IncomingMessage, original: Buffer, input: RequestBody, res: ServerResponse, operation: string): Promise<void> {
    // A body that is not JSON goes as it is: dynalite answers it as DynamoDB would.
    const asked = !input.ok || (input.value.ReturnConsumedCapacity !== undefined && input.value.ReturnConsumedCapacity !== "NONE");
    const body = asked ? original : Buffer.from(JSON.stringify({ ...input.value, ReturnConsumedCapacity: "TOTAL" }));
    meter.requests[operation] = (meter.requests[operation] ?? 0) + 1;
    return new Promise((resolve) => {
      const upstream = request(
        { hostname: targetUrl.hostname, port: targetUrl.port, path: req.url, method: req.method, headers: { ...req.headers, "content-length": String(body.length) } },
        (answer) => {
          const chunks: Buffer[] = [];
          answer.on("data", (c: Buffer) => chunks.push(c));
          answer.on("end", () => {
            let out = Buffer.concat(chunks);
            try {
              const parsed = JSON.parse(out.toString("utf8")) as { ConsumedCapacity?: { CapacityUnits?: number } | { CapacityUnits?: number }[] };
              const consumed = [parsed.ConsumedCapacity ?? []].flat().reduce((n, c) => n + (c.CapacityUnits ?? 0), 0);
              if (READS.has(operation)) meter.readUnits += consumed;
              else meter.writeUnits += consumed;
              if (!asked && parsed.ConsumedCapacity) {
                delete parsed.ConsumedCapacity;
                out = Buffer.from(JSON.stringify(parsed));
              }
            } catch {
              // not JSON: passed through as it is
            }
            res.writeHead(answer.statusCode ?? 500, { ...answer.headers, "content-length": String(out.length) });
            res.end(out);
            resolve();
          });
        },
      );
      upstream.on("error", (err) => {
        res.writeHead(500, { "Content-Type": "application/x-amz-json-1.0" });
        res.end(JSON.stringify({ __type: "com.amazonaws.dynamodb.v20120810#InternalServerError", message: err.message }));
        resolve();
      });
      upstream.end(body);
    });
  }

  function reply(res: ServerResponse, status: number, body: unknown) {
    res.writeHead(status, { "Content-Type": "application/x-amz-json-1.0", "x-amzn-RequestId": crypto.randomUUID() });
    res.end(JSON.stringify(body));
  }

  async function transact(body: RequestBody, res: ServerResponse) {
    try {
      if (!body.ok) throw body.error;
      const input = body.value;
      meter.requests.TransactWriteItems = (meter.requests.TransactWriteItems ?? 0) + 1;
      meter.writeUnits += transactionWriteUnits(input.TransactItems ?? []);
      const { cancelled } = await transactWrite(client, schemas, input.TransactItems ?? []);
      if (!cancelled) return reply(res, 200, {});
      reply(res, 400, {
        __type: "com.amazonaws.dynamodb.v20120810#TransactionCanceledException",
        message: `Transaction cancelled, please refer cancellation reasons for specific reasons [${cancelled.map((r) => r.Code).join(", ")}]`,
        CancellationReasons: cancelled,
      });
    } catch (err) {
      const type = (err as { type?: string }).type ?? (err as Error).name ?? "InternalServerError";
      reply(res, type === "InternalServerError" ? 500 : 400, { __type: `com.amazon.coral.validate#${type}`, message: (err as Error).message });
    }
  }

  let stalledUntil = 0;
  let downUntil = 0;
  const server: Server = createServer((req, res) => {
    if (Date.now() < downUntil) {
      req.socket.destroy();
      return;
    }
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("end", async () => {
      const wait = stalledUntil - Date.now();
      if (wait > 0) await new Promise((resolve) => setTimeout(resolve, wait));
      const body = Buffer.concat(chunks);
      const input = parseRequest(body);
      const operation = String(req.headers["x-amz-target"] ?? "").split(".")[1] ?? "";
      if (operation === "TransactWriteItems") void serialized(tablesOf(input), () => transact(input, res));
      else if (WRITES.has(operation)) void serialized(tablesOf(input), () => forward(req, body, input, res, operation));
      else void forward(req, body, input, res, operation);
    });
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", () => resolve()));
  return {
    endpoint: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    meter,
    stall(ms) {
      stalledUntil = Date.now() + ms;
    },
    restart(ms) {
      downUntil = Date.now() + ms;
      server.closeAllConnections();
    },
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}
