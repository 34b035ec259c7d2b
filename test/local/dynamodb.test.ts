import { DescribeTableCommand, DynamoDBClient } from "@aws-sdk/client-dynamodb";
import { TransactionCanceledException } from "@aws-sdk/client-dynamodb";
import { DeleteCommand, GetCommand, PutCommand, QueryCommand, ScanCommand, TransactWriteCommand, UpdateCommand } from "@aws-sdk/lib-dynamodb";
import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { LocalDynamoDB, startDynamoDB, tableSpec } from "../../local/dynamodb";
import { loadProgram } from "../../local/program";

describe("local DynamoDB", () => {
  let db: LocalDynamoDB;
  let table: ReturnType<typeof tableSpec>;
  let messages: ReturnType<typeof tableSpec>;
  before(async () => {
    const program = await loadProgram({ stack: "dev" });
    table = tableSpec(program.resources.find((r) => r.type === "aws:dynamodb/table:Table" && r.name === "connections")!);
    messages = tableSpec(program.resources.find((r) => r.type === "aws:dynamodb/table:Table" && r.name === "messages")!);
    db = await startDynamoDB({ tables: [table], region: "us-east-1", sweepIntervalMs: 60_000 });
  });
  after(() => db?.close());

  it("creates the program's table with its key and room index", async () => {
    const raw = new DynamoDBClient({ endpoint: db.endpoint, region: "us-east-1", credentials: { accessKeyId: "x", secretAccessKey: "x" } });
    const { Table } = await raw.send(new DescribeTableCommand({ TableName: table.name }));
    assert.deepEqual(Table?.KeySchema, [{ AttributeName: "connectionId", KeyType: "HASH" }]);
    assert.equal(Table?.GlobalSecondaryIndexes?.[0].IndexName, "byRoom");
    assert.deepEqual(Table?.GlobalSecondaryIndexes?.[0].Projection, { ProjectionType: "INCLUDE", NonKeyAttributes: ["expiresAt"] });
    assert.equal(table.ttlAttribute, "expiresAt");
  });

  it("must not lose an index entry when two keys share dynalite's 24-bit digest prefix (conn-1224 and conn-4718 do)", async () => {
    const room = `collide-${Date.now()}`;
    for (const connectionId of ["conn-1224", "conn-4718"]) await db.client.send(new PutCommand({ TableName: table.name, Item: { connectionId, room, name: "same" } }));
    const { Items } = await db.client.send(
      new QueryCommand({ TableName: table.name, IndexName: "byRoom", KeyConditionExpression: "room = :r", ExpressionAttributeValues: { ":r": room } }),
    );
    assert.deepEqual(Items?.map((i) => i.connectionId).sort(), ["conn-1224", "conn-4718"]);
    for (const connectionId of ["conn-1224", "conn-4718"]) await db.client.send(new DeleteCommand({ TableName: table.name, Key: { connectionId } }));
  });

  it("honours TTL: the sweep removes expired items and keeps live ones", async () => {
    const now = Math.floor(Date.now() / 1000);
    await db.client.send(new PutCommand({ TableName: table.name, Item: { connectionId: "old", room: "r", name: "n", expiresAt: now - 10 } }));
    await db.client.send(new PutCommand({ TableName: table.name, Item: { connectionId: "live", room: "r", name: "n", expiresAt: now + 3600 } }));
    assert.equal(await db.sweepExpired(now), 1);
    const { Items } = await db.client.send(new ScanCommand({ TableName: table.name }));
    assert.deepEqual(Items?.map((i) => i.connectionId), ["live"]);
    const byRoom = await db.client.send(
      new QueryCommand({ TableName: table.name, IndexName: "byRoom", KeyConditionExpression: "room = :r", ExpressionAttributeValues: { ":r": "r" } }),
    );
    assert.deepEqual(byRoom.Items, [{ connectionId: "live", room: "r", name: "n", expiresAt: now + 3600 }]);
  });

  it("expires items on its own timer, without being asked", async () => {
    const quick = await startDynamoDB({ tables: [table], region: "us-east-1", sweepIntervalMs: 50 });
    try {
      await quick.client.send(new PutCommand({ TableName: table.name, Item: { connectionId: "gone-soon", room: "r", expiresAt: 1 } }));
      for (let i = 0; i < 40; i++) {
        const { Item } = await quick.client.send(new GetCommand({ TableName: table.name, Key: { connectionId: "gone-soon" } }));
        if (!Item) return;
        await new Promise((r) => setTimeout(r, 50));
      }
      assert.fail("the expired item was never removed");
    } finally {
      await quick.close();
    }
  });

  it("keeps data across restarts with a data directory, and is empty without one", async () => {
    const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), "ws-chat-ddb-"));
    const started: LocalDynamoDB[] = [];
    const start = async (dir?: string) => {
      const next = await startDynamoDB({ tables: [table], region: "us-east-1", ...(dir ? { dataDir: dir } : {}) });
      started.push(next);
      return next;
    };
    const read = (d: LocalDynamoDB) => d.client.send(new GetCommand({ TableName: table.name, Key: { connectionId: "kept" } }));
    try {
      const first = await start(dataDir);
      await first.client.send(new PutCommand({ TableName: table.name, Item: { connectionId: "kept", room: "r", expiresAt: 9_999_999_999 } }));
      await first.close();
      assert.equal((await read(await start(dataDir))).Item?.room, "r");
      assert.equal((await read(await start())).Item, undefined);
    } finally {
      await Promise.all(started.map((d) => d.close().catch(() => undefined)));
      fs.rmSync(dataDir, { recursive: true, force: true });
    }
  });

  it("meters every request's capacity, and returns it only to callers that asked (ReturnConsumedCapacity)", async () => {
    const before = structuredClone(await db.readMeter());
    const put = await db.client.send(new PutCommand({ TableName: table.name, Item: { connectionId: "meter-1", room: "m" } }));
    assert.equal(put.ConsumedCapacity, undefined, "not asked: not returned");
    const get = await db.client.send(new GetCommand({ TableName: table.name, Key: { connectionId: "meter-1" }, ConsistentRead: true, ReturnConsumedCapacity: "TOTAL" }));
    assert.equal(get.ConsumedCapacity?.CapacityUnits, 1, "asked: returned");
    await db.client.send(new TransactWriteCommand({ TransactItems: [{ Put: { TableName: table.name, Item: { connectionId: "meter-2", room: "m" } } }, { Put: { TableName: table.name, Item: { connectionId: "meter-3", room: "m" } } }] }));
    const after = await db.readMeter();
    assert.deepEqual(
      [after.writeUnits - before.writeUnits, after.readUnits - before.readUnits],
      [1 + 2 * 2, 1],
      "1 WCU for the Put, 2 per item of the transaction, 1 RCU for the consistent GetItem",
    );
    assert.deepEqual(
      ["PutItem", "GetItem", "TransactWriteItems"].map((op) => (after.requests[op] ?? 0) - (before.requests[op] ?? 0)),
      [1, 1, 1],
    );
    for (const connectionId of ["meter-1", "meter-2", "meter-3"]) await db.client.send(new DeleteCommand({ TableName: table.name, Key: { connectionId } }));
  });

  describe("item sizes in UTF-8 bytes, as DynamoDB counts them (dynalite counted UTF-16 units)", () => {
    // '가' is 1 UTF-16 unit but 3 UTF-8 bytes: 10,000 of them are 30,000 bytes to DynamoDB.
    const HANGUL = "가";
    let sized: LocalDynamoDB;
    before(async () => {
      sized = await startDynamoDB({ tables: [messages], region: "us-east-1", sweepIntervalMs: 60_000 });
    });
    after(() => sized?.close());
    /** An item's size by DynamoDB's rules, for string attributes: UTF-8 bytes of each name and value. */
    const utf8Size = (item: Record<string, string>) => Object.entries(item).reduce((n, [k, v]) => n + Buffer.byteLength(k) + Buffer.byteLength(v), 0);
    const refusal = (promise: Promise<unknown>) => promise.then(() => assert.fail("accepted"), (e: Error) => e);

    it("cuts a Query page at 1 MB of UTF-8 bytes (about 35 items of 30,000 bytes), with the capacity of those bytes", async () => {
      const room = "utf8-page";
      const items = Array.from({ length: 50 }, (_, i) => ({ room, cursor: String(i).padStart(4, "0"), text: HANGUL.repeat(10_000) }));
      for (const Item of items) await sized.client.send(new PutCommand({ TableName: messages.name, Item }));
      const query = (ExclusiveStartKey?: Record<string, unknown>) =>
        sized.client.send(
          new QueryCommand({ TableName: messages.name, KeyConditionExpression: "room = :r", ExpressionAttributeValues: { ":r": room }, ExclusiveStartKey, ReturnConsumedCapacity: "TOTAL" }),
        );
      const first = await query();
      const count = first.Items?.length ?? 0;
      // 1 MB / 30,030 bytes ≈ 34.9 items; counted in UTF-16 units (10,030 each) all 50 fit in one page.
      assert.ok(count >= 34 && count <= 35, `first page had ${count} items, DynamoDB stops at about 35`);
      assert.deepEqual(first.LastEvaluatedKey, { room, cursor: items[count - 1].cursor });
      const firstBytes = items.slice(0, count).reduce((n, item) => n + utf8Size(item), 0);
      assert.equal(first.ConsumedCapacity?.CapacityUnits, Math.ceil(firstBytes / 4096) * 0.5, "eventually consistent: ½ RCU per 4 KB of UTF-8 bytes read");
      const rest = await query(first.LastEvaluatedKey);
      assert.equal(rest.LastEvaluatedKey, undefined);
      assert.deepEqual([...first.Items!, ...rest.Items!].map((i) => i.cursor), items.map((i) => i.cursor));
    });

    it("refuses an item over 400 KB in UTF-8 bytes (140,000 × '가' = 420,000 bytes), by PutItem and UpdateItem, and keeps one under it", async () => {
      const room = "utf8-limit";
      const big = await refusal(sized.client.send(new PutCommand({ TableName: messages.name, Item: { room, cursor: "big", text: HANGUL.repeat(140_000) } })));
      assert.equal(big.name, "ValidationException");
      assert.match(big.message, /Item size has exceeded the maximum allowed size/);
      const near = { room, cursor: "near", text: HANGUL.repeat(130_000) }; // 390,000 bytes: under 400 KB (409,600)
      await sized.client.send(new PutCommand({ TableName: messages.name, Item: near }));
      const put = await sized.client.send(new PutCommand({ TableName: messages.name, Item: near, ReturnConsumedCapacity: "TOTAL" }));
      assert.equal(put.ConsumedCapacity?.CapacityUnits, Math.ceil(utf8Size(near) / 1024), "1 WCU per KB of UTF-8 bytes written");
      const grown = await refusal(
        sized.client.send(new UpdateCommand({ TableName: messages.name, Key: { room, cursor: "near" }, UpdateExpression: "SET more = :m", ExpressionAttributeValues: { ":m": HANGUL.repeat(10_000) } })),
      );
      assert.equal(grown.name, "ValidationException");
      assert.match(grown.message, /Item size to update has exceeded the maximum allowed size/, "UpdateItem's wording of the same limit");
    });

    it("refuses a partition key over 2048 UTF-8 bytes (1,000 × '가' = 3,000 bytes)", async () => {
      const err = await refusal(sized.client.send(new PutCommand({ TableName: messages.name, Item: { room: HANGUL.repeat(1_000), cursor: "0" } })));
      assert.equal(err.name, "ValidationException");
      assert.match(err.message, /Size of hashkey has exceeded the maximum size limit of ?2048 bytes/);
    });
  });

  describe("TransactWriteItems (emulated in front of dynalite)", () => {
    const get = async (id: string) => (await db.client.send(new GetCommand({ TableName: table.name, Key: { connectionId: id }, ConsistentRead: true }))).Item;
    const claim = (id: string, owner: string) => ({
      Put: { TableName: table.name, Item: { connectionId: id, room: owner }, ConditionExpression: "attribute_not_exists(connectionId)" },
    });

    it("applies every action when all conditions hold", async () => {
      await db.client.send(new TransactWriteCommand({ TransactItems: [claim("tx-a", "one"), claim("tx-b", "one")] }));
      assert.equal((await get("tx-a"))?.room, "one");
      assert.equal((await get("tx-b"))?.room, "one");
    });

    it("applies none when one condition fails, and names it in CancellationReasons", async () => {
      await db.client.send(new PutCommand({ TableName: table.name, Item: { connectionId: "tx-taken", room: "first" } }));
      const err = await db.client
        .send(new TransactWriteCommand({
          TransactItems: [
            claim("tx-new", "second"),
            { Update: { TableName: table.name, Key: { connectionId: "tx-taken" }, UpdateExpression: "SET room = :r", ExpressionAttributeValues: { ":r": "changed" } } },
            claim("tx-taken", "second"),
          ],
        }))
        .catch((e: unknown) => e);
      assert.ok(err instanceof TransactionCanceledException, `got ${(err as Error)?.name}`);
      assert.deepEqual(err.CancellationReasons?.map((r) => r.Code), ["None", "None", "ConditionalCheckFailed"]);
      assert.equal(await get("tx-new"), undefined, "the first Put was rolled back");
      assert.equal((await get("tx-taken"))?.room, "first", "the Update was rolled back");
    });

    it("returns the item that failed its condition when asked (ReturnValuesOnConditionCheckFailure ALL_OLD)", async () => {
      await db.client.send(new PutCommand({ TableName: table.name, Item: { connectionId: "tx-old", room: "kept" } }));
      const err = (await db.client
        .send(new TransactWriteCommand({ TransactItems: [{ ...claim("tx-old", "other"), Put: { ...claim("tx-old", "other").Put!, ReturnValuesOnConditionCheckFailure: "ALL_OLD" } }] }))
        .catch((e: unknown) => e)) as TransactionCanceledException;
      assert.deepEqual(err.CancellationReasons?.[0].Item, { connectionId: { S: "tx-old" }, room: { S: "kept" } });
    });

    it("isolates concurrent transactions: of 20 racing claims on one item, exactly one wins", async () => {
      const results = await Promise.allSettled(
        Array.from({ length: 20 }, (_, i) => db.client.send(new TransactWriteCommand({ TransactItems: [claim("tx-race", `w${i}`), claim(`tx-race-${i}`, `w${i}`)] }))),
      );
      assert.equal(results.filter((r) => r.status === "fulfilled").length, 1);
      const winner = (await get("tx-race"))?.room;
      assert.ok((await get(`tx-race-${winner!.slice(1)}`)) !== undefined);
      const losers = results.map((r, i) => [r.status, i] as const).filter(([s]) => s === "rejected");
      for (const [, i] of losers) assert.equal(await get(`tx-race-${i}`), undefined);
    });

    it("supports ConditionCheck without changing the item", async () => {
      await db.client.send(new PutCommand({ TableName: table.name, Item: { connectionId: "tx-check", room: "kept" } }));
      const err = await db.client
        .send(new TransactWriteCommand({
          TransactItems: [
            { ConditionCheck: { TableName: table.name, Key: { connectionId: "tx-check" }, ConditionExpression: "room = :r", ExpressionAttributeValues: { ":r": "other" } } },
            claim("tx-after-check", "x"),
          ],
        }))
        .catch((e: unknown) => e);
      assert.ok(err instanceof TransactionCanceledException);
      assert.equal((await get("tx-check"))?.room, "kept");
      assert.equal(await get("tx-after-check"), undefined);
    });
  });
});
