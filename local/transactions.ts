/**
 * TransactWriteItems for the embedded DynamoDB, which dynalite lacks. A proxy in front of dynalite
 * forwards every request, and isolates each transaction per item (`itemQueue`): it waits for the
 * earlier writes to its items and later writes to them wait for it, as DynamoDB isolates them,
 * while single-item writes go on in parallel (dynalite locks an item per write). A transaction applies all its actions at
 * once (they touch distinct items, as DynamoDB requires), each with its own condition and asking
 * for the item as it was; when any fails, the items already changed are restored and the caller
 * gets a TransactionCanceledException with a CancellationReason per item, as DynamoDB answers.
 * A ClientRequestToken makes a transaction idempotent, as on DynamoDB (`requestTokens`).
 */
import type { AttributeValue, TransactWriteItem } from "@aws-sdk/client-dynamodb";
import { createHash } from "crypto";
import { createServer, IncomingMessage, Server, ServerResponse } from "http";
import type { Refusal } from "./iam";
import type { AddressInfo } from "net";
import { DirectCall, dynamo, DynamoError } from "./dynalite-direct";
import { StreamCapture, TTL_IDENTITY } from "./stream-capture";

const WRITES = new Set(["PutItem", "UpdateItem", "DeleteItem", "BatchWriteItem", "TransactWriteItems"]);

type Key = Record<string, AttributeValue>;

/** The one action of a transaction item (DynamoDB requires exactly one). */
function actionOf(item: TransactWriteItem) {
  return item.Put ?? item.Update ?? item.Delete ?? item.ConditionCheck;
}

type Attributes = { Attributes?: Key };

/** Applies one transaction item as a single-item write with its condition; resolves with the item as it was. */
function stepFor(call: DirectCall, action: TransactWriteItem, current: () => Promise<Key | undefined>): () => Promise<Key | undefined> {
  const write = action.Put ? "PutItem" : action.Update ? "UpdateItem" : action.Delete ? "DeleteItem" : undefined;
  if (write) {
    // The single-item write takes the same fields, less the transaction-only one.
    const { ReturnValuesOnConditionCheckFailure: _, ...input } = (action.Put ?? action.Update ?? action.Delete)!;
    return async () => (await dynamo<Attributes>(call, write, { ...input, ReturnValues: "ALL_OLD" })).Attributes;
  }
  if (action.ConditionCheck) {
    // Evaluates the condition against the item without changing it: rewrite the item as it is
    // (or, when there is none, delete nothing), with the condition attached.
    const c = action.ConditionCheck;
    const names = { TableName: c.TableName, ConditionExpression: c.ConditionExpression, ExpressionAttributeNames: c.ExpressionAttributeNames, ExpressionAttributeValues: c.ExpressionAttributeValues };
    return async () => {
      const item = await current();
      await (item ? dynamo(call, "PutItem", { ...names, Item: item }) : dynamo(call, "DeleteItem", { ...names, Key: c.Key }));
      return item;
    };
  }
  throw Object.assign(new Error("each TransactItem needs one of Put, Update, Delete or ConditionCheck"), { type: "ValidationException" });
}

/** The key of an item, from its table's key schema. */
function keyOf(schemas: Map<string, string[]>, table: string, item: Key): Key {
  const names = schemas.get(table);
  if (!names) throw Object.assign(new Error(`Requested resource not found: Table: ${table} not found`), { type: "ResourceNotFoundException" });
  return Object.fromEntries(names.map((n) => [n, item[n]]));
}

/** The table and key of a transaction item. */
function targetOf(schemas: Map<string, string[]>, action: TransactWriteItem): { table: string; key: Key } {
  const table = actionOf(action)?.TableName ?? "";
  const putItem = action.Put?.Item;
  return { table, key: putItem ? keyOf(schemas, table, putItem) : (action.Update ?? action.Delete ?? action.ConditionCheck)?.Key ?? {} };
}

export async function transactWrite(call: DirectCall, schemas: Map<string, string[]>, items: TransactWriteItem[]) {
  if (items.length === 0 || items.length > 100) {
    throw Object.assign(new Error("TransactItems must have from 1 to 100 items"), { type: "ValidationException" });
  }
  const reasons = items.map(() => ({ Code: "None" }) as { Code: string; Message?: string; Item?: Key });
  // Writes to these items are serialized by the caller, so nothing changes them meanwhile.
  const targets = items.map((action) => {
    const { table, key } = targetOf(schemas, action);
    return { table, key, read: async () => (await dynamo<{ Item?: Key }>(call, "GetItem", { TableName: table, Key: key, ConsistentRead: true })).Item };
  });
  // DynamoDB allows one action per item in a transaction, so the steps touch distinct items and
  // can run at once; if any fails, every step that succeeded is undone from the item it returned.
  const outcomes = await Promise.allSettled(items.map((action, i) => stepFor(call, action, targets[i].read)()));
  if (outcomes.every((o) => o.status === "fulfilled")) return { cancelled: undefined };
  for (let i = 0; i < items.length; i++) {
    const outcome = outcomes[i];
    if (outcome.status === "fulfilled") {
      if (items[i].ConditionCheck) continue;
      const { table, key } = targets[i];
      if (outcome.value) await dynamo(call, "PutItem", { TableName: table, Item: outcome.value });
      else await dynamo(call, "DeleteItem", { TableName: table, Key: key });
    } else if ((outcome.reason as Error).name === "ConditionalCheckFailedException") {
      // With ReturnValuesOnConditionCheckFailure ALL_OLD the reason carries the item as it is (writes
      // to it are queued behind this transaction, so it has not changed).
      const current = actionOf(items[i])?.ReturnValuesOnConditionCheckFailure === "ALL_OLD" ? await targets[i].read() : undefined;
      reasons[i] = { Code: "ConditionalCheckFailed", Message: "The conditional request failed", ...(current ? { Item: current } : {}) };
    }
  }
  const unexpected = outcomes.find((o): o is PromiseRejectedResult => o.status === "rejected" && (o.reason as Error).name !== "ConditionalCheckFailedException");
  if (unexpected) throw unexpected.reason;
  return { cancelled: reasons };
}

/**
 * Isolates transactions per item, as DynamoDB does. A transaction (exclusive) waits for every
 * earlier write to any of its items, and every later write to them waits for it; plain writes
 * (shared) wait only for the transactions before them, not for each other: dynalite locks an item
 * for each single-item write itself, and serializing them here made a busy room's head item (one
 * `ADD` per message) a queue of event-loop turns (issue 10's profile: 126 ms acks at 100 msg/s).
 * Keys are taken all at once, so there is no lock order and no deadlock.
 */
export function itemQueue() {
  const exclusive = new Map<string, Promise<unknown>>();
  const shared = new Map<string, Set<Promise<unknown>>>();
  const forget = (keys: string[], settled: Promise<unknown>) => {
    for (const k of keys) {
      if (exclusive.get(k) === settled) exclusive.delete(k);
      const set = shared.get(k);
      if (set?.delete(settled) && set.size === 0) shared.delete(k);
    }
  };
  return <T>(keys: string[], work: () => Promise<T>, mode: "shared" | "exclusive" = "exclusive"): Promise<T> => {
    const unique = [...new Set(keys)];
    const before = unique.flatMap((k) => [exclusive.get(k), ...(mode === "exclusive" ? (shared.get(k) ?? []) : [])]);
    const next = Promise.all(before).then(work, work);
    const settled = next.catch(() => undefined);
    for (const k of unique) {
      if (mode === "exclusive") {
        exclusive.set(k, settled);
        shared.delete(k); // the transaction waits for them; later writes wait for it
      } else {
        if (!shared.has(k)) shared.set(k, new Set());
        shared.get(k)!.add(settled);
      }
    }
    void settled.then(() => forget(unique, settled));
    return next;
  };
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

/** How long DynamoDB remembers a ClientRequestToken after its transaction completed. */
export const TOKEN_WINDOW_MS = 10 * 60_000;

type TokenVerdict = { run: true; done(applied: boolean): void } | { run: false; status: number; body: unknown };

/**
 * TransactWriteItems' ClientRequestToken, as the API reference describes it
 * (https://docs.aws.amazon.com/amazondynamodb/latest/APIReference/API_TransactWriteItems.html):
 * 1 to 36 characters; a repeat of an applied transaction within 10 minutes of its completion
 * succeeds without changing anything; the same token with other parameters is refused with
 * IdempotentParameterMismatchException; a repeat while the first is still running is refused with
 * TransactionInProgressException. (?) What a repeat of a cancelled transaction gets is not
 * documented: here it is evaluated again (nothing was applied, so nothing can apply twice).
 */
export function requestTokens(now: () => number = Date.now) {
  // Each token keeps the SHA-256 of its request, not the request (up to 4 MB on DynamoDB; a chat
  // transaction is one message of up to 32 KB). Applied ones sit in `applied` in the order they
  // completed, so the expired ones are at the front: dropping them reads only those (and one more).
  const running = new Map<string, string>();
  const applied = new Map<string, { request: string; until: number }>();
  const refuse = (type: string, message: string): TokenVerdict => ({ run: false, status: 400, body: { __type: `com.amazonaws.dynamodb.v20120810#${type}`, message } });
  const expired = (entry: { until: number }, at: number) => entry.until <= at;
  return (input: Record<string, unknown>): TokenVerdict => {
    const { ClientRequestToken: token, ...rest } = input;
    if (token === undefined) return { run: true, done: () => undefined };
    if (typeof token !== "string" || token.length < 1 || token.length > 36) {
      return { run: false, status: 400, body: { __type: "com.amazon.coral.validate#ValidationException", message: "1 validation error detected: Value at 'clientRequestToken' failed to satisfy constraint: Member must have length less than or equal to 36" } };
    }
    const at = now();
    for (const [key, entry] of applied) {
      if (!expired(entry, at)) break;
      applied.delete(key);
    }
    const request = createHash("sha256").update(JSON.stringify(rest)).digest("base64");
    // A clock set back can leave an expired entry behind a live one: the lookup checks its own.
    const held = applied.get(token);
    if (held && expired(held, at)) applied.delete(token);
    const known = running.get(token) ?? applied.get(token)?.request;
    if (known !== undefined && known !== request) return refuse("IdempotentParameterMismatchException", "The request uses the same client token as a previous, but non-identical request.");
    if (running.has(token)) return refuse("TransactionInProgressException", "The transaction with the given request token is already in progress.");
    if (known !== undefined) return { run: false, status: 200, body: {} };
    running.set(token, request);
    return {
      run: true,
      done(ok) {
        running.delete(token);
        if (ok) applied.set(token, { request, until: now() + TOKEN_WINDOW_MS });
      },
    };
  };
}

/** The fields of a request body the proxy reads; parsed once per request. */
type RequestBody =
  | {
      ok: true;
      value: {
        TableName?: string;
        Item?: Key;
        Key?: Key;
        TransactItems?: TransactWriteItem[];
        RequestItems?: Record<string, { PutRequest?: { Item?: Key }; DeleteRequest?: { Key?: Key } }[]>;
        ReturnConsumedCapacity?: string;
      };
    }
  | { ok: false; error: unknown };

/** The items a write names, as `table key` strings: what it must wait for. Throws on an unreadable request. */
function writeKeys(schemas: Map<string, string[]>, input: RequestBody): string[] {
  if (!input.ok) throw input.error;
  const id = (table: string, item: Key | undefined) => `${table}\u0000${JSON.stringify(keyOf(schemas, table, item ?? {}))}`;
  const { TransactItems, RequestItems, TableName = "", Item, Key: key } = input.value;
  if (TransactItems) return TransactItems.map((a) => targetOf(schemas, a)).map((t) => id(t.table, t.key));
  if (RequestItems) return Object.entries(RequestItems).flatMap(([table, writes]) => writes.map((w) => id(table, w.PutRequest?.Item ?? w.DeleteRequest?.Key)));
  return [id(TableName, Item ?? key)];
}

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
  /**
   * Fault injection: a sender that dies between taking a number and storing its message. The next
   * `count` writes that store a chat message in `table` are held unanswered, so their senders run
   * into their function timeout.
   */
  holdMessageWrites(table: string, count: number): void;
  /** Applies the held writes now, as a late writer's would land, and returns each one's answer. */
  releaseHeld(): Promise<{ status: number; type?: string }[]>;
  /**
   * DynamoDB's TTL deleting one item: only if it is still expired, queued behind the writes to it
   * like a transaction (so its stream record is the service's, local/stream-capture.ts), and not
   * metered (TTL deletes consume no write capacity). Resolves whether it deleted the item.
   */
  expire(table: string, key: Key, ttlAttribute: string, nowSeconds: number): Promise<boolean>;
  close(): Promise<void>;
}

/** Starts the proxy in front of dynalite (called in this process). `schemas` maps table name → key attribute names. */
/** Checks a request before it is run (local/iam.ts): the refusal to answer with, or undefined. */
export type RequestGuard = (req: IncomingMessage, body: Buffer, operation: string, input: Record<string, unknown>) => Promise<Refusal | undefined>;

/**
 * `capture` (local/stream-capture.ts) folds a transaction's writes, or a TTL deletion, into one
 * stream record per item that changed.
 */
export async function startTransactionProxy(call: DirectCall, schemas: Map<string, string[]>, guard?: RequestGuard, capture?: StreamCapture): Promise<TransactionProxy> {
  // Per item, as DynamoDB isolates writes: a transaction holds exactly its own items, and writes to
  // other items (a busy room's new numbers, its head's ADDs) run in parallel.
  const serialized = itemQueue();
  const keysOf = (input: RequestBody): string[] => {
    try {
      return writeKeys(schemas, input);
    } catch {
      return [""]; // an unreadable or invalid request queues with the others like it; dynalite answers it
    }
  };

  const meter: CapacityMeter = { requests: {}, readUnits: 0, writeUnits: 0 };

  /**
   * Forwards to dynalite, asking for ConsumedCapacity on every request so the meter sees all of it;
   * the figure is removed from the answer when the caller did not ask for it.
   */
  async function forward(req: IncomingMessage, original: Buffer, input: RequestBody, res: ServerResponse, operation: string): Promise<void> {
    // A body that is not JSON goes as it is: dynalite answers it as DynamoDB would.
    const asked = !input.ok || (input.value.ReturnConsumedCapacity !== undefined && input.value.ReturnConsumedCapacity !== "NONE");
    const body = asked ? original : Buffer.from(JSON.stringify({ ...input.value, ReturnConsumedCapacity: "TOTAL" }));
    meter.requests[operation] = (meter.requests[operation] ?? 0) + 1;
    const answer = await call(req.headers, body);
    const out = meteredBody(answer.body, operation, asked);
    res.writeHead(answer.status, { ...answer.headers, "content-length": String(out.length) });
    res.end(out);
  }

  /** Counts an answer's ConsumedCapacity, and removes it when the caller did not ask for it. */
  function meteredBody(out: Buffer, operation: string, asked: boolean): Buffer {
    let result = out;
    try {
      const parsed = JSON.parse(out.toString("utf8")) as { ConsumedCapacity?: { CapacityUnits?: number } | { CapacityUnits?: number }[] };
      const consumed = [parsed.ConsumedCapacity ?? []].flat().reduce((n, c) => n + (c.CapacityUnits ?? 0), 0);
      if (READS.has(operation)) meter.readUnits += consumed;
      else meter.writeUnits += consumed;
      if (!asked && parsed.ConsumedCapacity) {
        delete parsed.ConsumedCapacity;
        result = Buffer.from(JSON.stringify(parsed));
      }
    } catch {
      // not JSON: passed through as it is
    }
    return result;
  }

  function reply(res: ServerResponse, status: number, body: unknown) {
    res.writeHead(status, { "Content-Type": "application/x-amz-json-1.0", "x-amzn-RequestId": crypto.randomUUID() });
    res.end(JSON.stringify(body));
  }

  /** Runs a transaction and answers it; resolves whether it was applied. */
  async function transact(body: RequestBody, res: ServerResponse): Promise<boolean> {
    try {
      if (!body.ok) throw body.error;
      const input = body.value;
      meter.requests.TransactWriteItems = (meter.requests.TransactWriteItems ?? 0) + 1;
      meter.writeUnits += transactionWriteUnits(input.TransactItems ?? []);
      const { cancelled } = await transactWrite(call, schemas, input.TransactItems ?? []);
      if (!cancelled) {
        reply(res, 200, {});
        return true;
      }
      reply(res, 400, {
        __type: "com.amazonaws.dynamodb.v20120810#TransactionCanceledException",
        message: `Transaction cancelled, please refer cancellation reasons for specific reasons [${cancelled.map((r) => r.Code).join(", ")}]`,
        CancellationReasons: cancelled,
      });
    } catch (err) {
      const type = (err as { type?: string }).type ?? (err as Error).name ?? "InternalServerError";
      reply(res, type === "InternalServerError" ? 500 : 400, { __type: `com.amazon.coral.validate#${type}`, message: (err as Error).message });
    }
    return false;
  }

  const tokenOf = requestTokens();
  /** A transaction, unless its ClientRequestToken answers it already (requestTokens). */
  const transactOnce = async (input: RequestBody, res: ServerResponse) => {
    const verdict = input.ok ? tokenOf(input.value as Record<string, unknown>) : ({ run: true, done: () => undefined } as const);
    if (!verdict.run) return reply(res, verdict.status, verdict.body);
    verdict.done(await serialized(keysOf(input), () => transaction(input, res)));
  };

  let stalledUntil = 0;
  let downUntil = 0;
  const hold = { table: "", left: 0, held: [] as { req: IncomingMessage; body: Buffer; input: RequestBody; operation: string }[] };
  /** Whether a write stores a chat message (an item with `message`) in the held table. */
  const storesMessage = (input: RequestBody, operation: string) => {
    if (!input.ok) return false;
    const puts = operation === "PutItem" ? [{ TableName: input.value.TableName, Item: input.value.Item }] : (input.value.TransactItems ?? []).map((a) => a.Put).filter(Boolean);
    return puts.some((put) => put!.TableName === hold.table && put!.Item?.message !== undefined);
  };
  /** A transaction's items, for the stream capture; none when the request is unreadable (dynalite is not reached). */
  const transactionTargets = (input: RequestBody) => {
    try {
      return input.ok ? (input.value.TransactItems ?? []).map((a) => targetOf(schemas, a)) : [];
    } catch {
      return [];
    }
  };
  const transaction = (input: RequestBody, res: ServerResponse): Promise<boolean> =>
    capture ? capture.group(transactionTargets(input), undefined, () => transact(input, res)) : transact(input, res);
  /** Runs one request: a transaction, a write in its item's queue, or a read. */
  const handle = (req: IncomingMessage, body: Buffer, input: RequestBody, operation: string, res: ServerResponse) => {
    if (operation === "TransactWriteItems") return transactOnce(input, res);
    if (WRITES.has(operation)) return serialized(keysOf(input), () => forward(req, body, input, res, operation), "shared");
    return forward(req, body, input, res, operation);
  };
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
      const refused = guard ? await guard(req, body, operation, input.ok ? input.value : {}) : undefined;
      if (refused) {
        res.writeHead(refused.status, { ...refused.headers, "content-length": String(Buffer.byteLength(refused.body)) });
        res.end(refused.body);
        return;
      }
      if (hold.left > 0 && storesMessage(input, operation)) {
        hold.left--;
        hold.held.push({ req, body, input, operation });
        return; // unanswered: its sender waits until its function times out
      }
      void handle(req, body, input, operation, res);
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
    holdMessageWrites(table, count) {
      Object.assign(hold, { table, left: count });
    },
    expire(table, key, ttlAttribute, nowSeconds) {
      const ids = writeKeys(schemas, { ok: true, value: { TableName: table, Key: key } });
      const remove = () =>
        dynamo(call, "DeleteItem", {
          TableName: table,
          Key: key,
          ConditionExpression: "#ttl < :now",
          ExpressionAttributeNames: { "#ttl": ttlAttribute },
          ExpressionAttributeValues: { ":now": { N: String(nowSeconds) } },
        }).then(
          () => true,
          (err: DynamoError) => {
            if (err.type === "ConditionalCheckFailedException") return false; // written again, or gone, since the scan
            throw err;
          },
        );
      return serialized(ids, () => (capture ? capture.group([{ table, key }], TTL_IDENTITY, remove) : remove()));
    },
    async releaseHeld() {
      const held = hold.held.splice(0);
      hold.left = 0;
      return Promise.all(
        held.map(async ({ req, body, input, operation }) => {
          // Applied now, as a late writer's request would be; its answer goes nowhere but here.
          const answer = { status: 0, body: "" };
          const capture = {
            writeHead(status: number) {
              answer.status = status;
              return capture;
            },
            end(data?: Buffer | string) {
              answer.body = String(data ?? "");
            },
          } as unknown as ServerResponse;
          await handle(req, body, input, operation, capture);
          const type = answer.status >= 300 ? String((JSON.parse(answer.body || "{}") as { __type?: string }).__type ?? "").split("#").pop() : undefined;
          return { status: answer.status, ...(type ? { type } : {}) };
        }),
      );
    },
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}
