import { DescribeTableCommand, DynamoDBClient } from "@aws-sdk/client-dynamodb";
import { PutCommand, QueryCommand, ScanCommand } from "@aws-sdk/lib-dynamodb";
import assert from "node:assert/strict";
import { LocalDynamoDB, startDynamoDB, tableSpec } from "../../local/dynamodb";
import { loadProgram } from "../../local/program";

describe("local DynamoDB", () => {
  let db: LocalDynamoDB;
  let table: ReturnType<typeof tableSpec>;
  before(async () => {
    const program = await loadProgram({ stack: "dev" });
    table = tableSpec(program.resources.find((r) => r.type === "aws:dynamodb/table:Table")!);
    db = await startDynamoDB({ tables: [table], region: "us-east-1", sweepIntervalMs: 60_000 });
  });
  after(() => db?.close());

  it("creates the program's table with its key and room index", async () => {
    const raw = new DynamoDBClient({ endpoint: db.endpoint, region: "us-east-1", credentials: { accessKeyId: "x", secretAccessKey: "x" } });
    const { Table } = await raw.send(new DescribeTableCommand({ TableName: table.name }));
    assert.deepEqual(Table?.KeySchema, [{ AttributeName: "connectionId", KeyType: "HASH" }]);
    assert.equal(Table?.GlobalSecondaryIndexes?.[0].IndexName, "byRoom");
    assert.deepEqual(Table?.GlobalSecondaryIndexes?.[0].Projection, { ProjectionType: "KEYS_ONLY" });
    assert.equal(table.ttlAttribute, "expiresAt");
  });

  it("honours TTL: the sweep removes expired items and keeps live ones", async () => {
    const now = Math.floor(Date.now() / 1000);
    await db.client.send(new PutCommand({ TableName: table.name, Item: { connectionId: "old", room: "r", expiresAt: now - 10 } }));
    await db.client.send(new PutCommand({ TableName: table.name, Item: { connectionId: "live", room: "r", expiresAt: now + 3600 } }));
    assert.equal(await db.sweepExpired(now), 1);
    const { Items } = await db.client.send(new ScanCommand({ TableName: table.name }));
    assert.deepEqual(Items?.map((i) => i.connectionId), ["live"]);
    const byRoom = await db.client.send(
      new QueryCommand({ TableName: table.name, IndexName: "byRoom", KeyConditionExpression: "room = :r", ExpressionAttributeValues: { ":r": "r" } }),
    );
    assert.deepEqual(byRoom.Items, [{ connectionId: "live", room: "r" }]);
  });
});
