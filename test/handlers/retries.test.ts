/**
 * Writes whose answer is lost after DynamoDB applied them (docs/retries.md), and room queries that
 * skip expired records, against the embedded DynamoDB with the program's own tables. The
 * handlers' client (handlers/shared/dynamodb.ts) reaches it through a proxy that forwards a
 * chosen request, waits until DynamoDB has answered (the write is applied), and then resets the
 * client's connection instead of answering: the client sees a network error and retries. A write
 * whose connection is refused never left, and is sent again even when it must apply at most once.
 */
import { GetCommand, QueryCommand, TransactWriteCommand, UpdateCommand } from "@aws-sdk/lib-dynamodb";
import { createServer, request as httpRequest, Server } from "http";
import { createServer as createTcpServer, type AddressInfo } from "net";
import assert from "node:assert/strict";
import { createConnectionsStore, placeKey, READ_PER_LIVE } from "../../handlers/shared/connections";
import { DocumentClient, LeanDocumentClient } from "../../handlers/shared/dynamodb";
import { createMessageStore, cursorOf, isTombstone, StoredMessage } from "../../handlers/shared/messages";
import { LocalDynamoDB, startDynamoDB, tableSpec } from "../../local/dynamodb";
import { loadProgram } from "../../local/program";
import { withEnv } from "./fixtures";

interface Seen {
  operation: string;
  body: Record<string, unknown>;
  lost: boolean;
}

/** A proxy to `upstream` (on `port`, or any free one) that loses the answers of the next `count` requests `matches` picks. */
async function lossyProxy(upstream: string, port = 0) {
  const seen: Seen[] = [];
  const rule = { matches: (_: Seen) => false, count: 0 };
  const server: Server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("end", () => {
      const raw = Buffer.concat(chunks);
      const entry: Seen = { operation: String(req.headers["x-amz-target"]).split(".")[1], body: JSON.parse(raw.toString("utf8")), lost: false };
      entry.lost = rule.count > 0 && rule.matches(entry);
      if (entry.lost) rule.count--;
      seen.push(entry);
      const forward = httpRequest(`${upstream}/`, { method: "POST", headers: req.headers }, (answer) => {
        const parts: Buffer[] = [];
        answer.on("data", (c: Buffer) => parts.push(c));
        answer.on("end", () => {
          // Applied, answered by DynamoDB: the answer is lost on the way back.
          if (entry.lost) {
            req.socket.destroy();
            return;
          }
          res.writeHead(answer.statusCode ?? 500, answer.headers);
          res.end(Buffer.concat(parts));
        });
      });
      forward.end(raw);
    });
  });
  await new Promise<void>((resolve) => server.listen(port, "127.0.0.1", () => resolve()));
  return {
    endpoint: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    seen,
    loseNext(count: number, matches: (s: Seen) => boolean) {
      Object.assign(rule, { count, matches });
      seen.length = 0;
    },
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

/** A port nothing listens on (one the system just gave and took back). */
async function closedPort(): Promise<number> {
  const probe = createTcpServer().listen(0, "127.0.0.1");
  await new Promise((resolve) => probe.once("listening", resolve));
  const { port } = probe.address() as AddressInfo;
  await new Promise((resolve) => probe.close(resolve));
  return port;
}

const tableOf = (s: Seen) => String(s.body.TableName ?? "");

describe("retries that cannot change the outcome (a write's answer lost after it applied)", function () {
  this.timeout(30_000);
  withEnv({ AWS_ACCESS_KEY_ID: "local", AWS_SECRET_ACCESS_KEY: "local", AWS_REGION: "us-east-1" });
  let db: LocalDynamoDB;
  let proxy: Awaited<ReturnType<typeof lossyProxy>>;
  let lean: DocumentClient;
  let tables: Record<string, string>;
  let n = 0;
  const unique = (prefix: string) => `${prefix}-${++n}-${Date.now()}`;
  const limit = { messages: 5, windowSeconds: 10 };

  before(async () => {
    const program = await loadProgram({ stack: "dev" });
    const tableResources = program.resources.filter((r) => r.type === "aws:dynamodb/table:Table");
    tables = Object.fromEntries(tableResources.map((r) => [r.name, r.state.name as string]));
    db = await startDynamoDB({ tables: tableResources.map(tableSpec), region: "us-east-1", sweepIntervalMs: 600_000 });
    proxy = await lossyProxy(db.endpoint);
    lean = new LeanDocumentClient({ AWS_REGION: "us-east-1", AWS_ENDPOINT_URL_DYNAMODB: proxy.endpoint }) as unknown as DocumentClient;
  });
  after(async () => {
    await proxy?.close();
    await db?.close();
  });

  const connections = () => createConnectionsStore(lean, { tableName: tables.connections, roomIndexName: "byRoom" });
  const messages = (holeGraceMs = 60_000) => createMessageStore(lean, tables.messages, 1, { holeGraceMs });
  const item = async (table: string, key: Record<string, unknown>) => (await db.client.send(new GetCommand({ TableName: table, Key: key, ConsistentRead: true }))).Item;
  const register = (connectionId: string, extra: Record<string, unknown> = {}) =>
    connections().put({ connectionId, room: "r", name: "ann", connectedAt: 0, expiresAt: 9_999_999_999, ...extra });

  it("charges a budget once when the spend's answer is lost: read back as applied, admitted, not sent again", async () => {
    const id = unique("budget");
    await register(id);
    const t0 = 1_700_000_000_000;
    await connections().admit(id, t0, limit); // the window starts: 1 unit
    proxy.loseNext(1, (s) => s.operation === "UpdateItem" && tableOf(s) === tables.connections);
    const admission = await connections().admit(id, t0, limit, 2);
    assert.equal(admission.allowed, true);
    assert.equal((await item(tables.connections, { connectionId: id }))?.rlCount, 3, "1 + 2 units: the spend charged once, not twice");
    assert.deepEqual(proxy.seen.map((s) => s.operation), ["UpdateItem", "GetItem"], "the spend is not sent again; the record is read back");
  });

  it("charges a history page once when the charge's answer is lost: the charge fails rather than doubling", async () => {
    const id = unique("charge");
    await register(id);
    const t0 = 1_700_000_000_000;
    await connections().admit(id, t0, limit);
    proxy.loseNext(1, (s) => s.operation === "UpdateItem");
    await assert.rejects(connections().charge(id, t0, limit, 3), /store_unavailable|UpdateItem/);
    assert.equal((await item(tables.connections, { connectionId: id }))?.rlCount, 4, "1 admitted + 3 charged, once");
  });

  /**
   * A client whose first connection is refused: nothing listens on its port until that refusal has
   * come back (seen where the client hands requests to its transport), and then a proxy to DynamoDB
   * opens there for the retry.
   */
  async function refusedOnce() {
    const port = await closedPort();
    const client = new LeanDocumentClient({ AWS_REGION: "us-east-1", AWS_ENDPOINT_URL_DYNAMODB: `http://127.0.0.1:${port}` });
    const failures: string[] = [];
    const state: { proxy?: Awaited<ReturnType<typeof lossyProxy>> } = {};
    const transport = client["request"];
    Object.assign(client, {
      request: async (...args: Parameters<typeof transport>) => {
        try {
          return await transport(...args);
        } catch (err) {
          failures.push((err as Error).name);
          state.proxy ??= await lossyProxy(db.endpoint, port);
          throw err;
        }
      },
    });
    const store = createConnectionsStore(client as unknown as DocumentClient, { tableName: tables.connections, roomIndexName: "byRoom" });
    return { store, failures, seen: () => state.proxy?.seen.map((s) => s.operation), close: () => state.proxy?.close() };
  }

  it("sends a spend and a charge again when the connection was refused (nothing left), and charges each once", async () => {
    const id = unique("refused");
    await register(id);
    const t0 = 1_700_000_000_000;
    await connections().admit(id, t0, limit); // the window starts: 1 unit
    const spend = await refusedOnce();
    try {
      assert.equal((await spend.store.admit(id, t0, limit, 2)).allowed, true, "admitted, not unavailable");
      assert.deepEqual([spend.failures, spend.seen()], [["ECONNREFUSED"], ["UpdateItem"]], "refused once, then sent once: no read-back needed");
    } finally {
      await spend.close();
    }
    const charge = await refusedOnce();
    try {
      await charge.store.charge(id, t0, limit, 3);
      assert.deepEqual([charge.failures, charge.seen()], [["ECONNREFUSED"], ["UpdateItem"]]);
    } finally {
      await charge.close();
    }
    assert.equal((await item(tables.connections, { connectionId: id }))?.rlCount, 6, "1 + 2 admitted + 3 charged, each once");
  });

  it("applies a transaction once: its retry carries the same ClientRequestToken and DynamoDB answers it as done", async () => {
    const room = unique("tx");
    proxy.loseNext(1, (s) => s.operation === "TransactWriteItems");
    const appended = await messages().append({ room, id: "m-1", from: { name: "ann" }, message: "once", ts: Date.now(), clientId: "c-1" });
    assert.deepEqual([appended.cursor, appended.duplicate], [cursorOf(1), false]);
    const sent = proxy.seen.filter((s) => s.operation === "TransactWriteItems");
    assert.equal(sent.length, 2, "the lost attempt and its retry");
    assert.match(String(sent[0].body.ClientRequestToken), /^[0-9a-f-]{36}$/);
    assert.equal(sent[1].body.ClientRequestToken, sent[0].body.ClientRequestToken, "the same token in both attempts");
    assert.equal(proxy.seen.filter((s) => s.operation === "GetItem").length, 0, "answered as applied: no cancellation to sort out");
    const page = await messages().history(room, undefined, 10);
    assert.deepEqual(page.events.map((e) => [e.cursor, (e as StoredMessage).message]), [[cursorOf(1), "once"]]);
  });

  it("refuses a token reused with other items (IdempotentParameterMismatch), as DynamoDB does", async () => {
    const room = unique("mismatch");
    const put = (cursor: string) => ({ Put: { TableName: tables.messages, Item: { room, cursor } } });
    const token = "4f3c2b1a-0000-4000-8000-000000000001";
    await lean.send(new TransactWriteCommand({ TransactItems: [put("a")], ClientRequestToken: token }));
    await lean.send(new TransactWriteCommand({ TransactItems: [put("a")], ClientRequestToken: token }));
    await assert.rejects(lean.send(new TransactWriteCommand({ TransactItems: [put("b")], ClientRequestToken: token })), { name: "IdempotentParameterMismatchException" });
    assert.equal(await item(tables.messages, { room, cursor: "b" }), undefined);
  });

  it("settles a number burned by a retried counter step as any hole: a tombstone after the grace", async () => {
    const room = unique("burn");
    const grace = 60_000;
    proxy.loseNext(1, (s) => s.operation === "UpdateItem" && tableOf(s) === tables.messages);
    const appended = await messages(grace).append({ room, id: "m-1", from: { name: "ann" }, message: "after a lost answer", ts: Date.now() });
    assert.equal(appended.cursor, cursorOf(2), "the lost step took 1; the retry took 2");
    const held = await messages(grace).history(room, cursorOf(0), 10);
    assert.deepEqual([held.events.length, held.more], [0, true], "within the grace, history waits at the hole");
    // As if the number had been taken longer ago than the grace.
    await db.client.send(new UpdateCommand({ TableName: tables.messages, Key: { room, cursor: cursorOf(2) }, UpdateExpression: "SET numberedAt = numberedAt - :ms", ExpressionAttributeValues: { ":ms": 2 * grace } }));
    const page = await messages(grace).history(room, cursorOf(0), 10);
    assert.deepEqual(page.events.map((e) => [e.cursor, isTombstone(e) ? "tombstone" : (e as StoredMessage).message]), [
      [cursorOf(1), "tombstone"],
      [cursorOf(2), "after a lost answer"],
    ]);
  });

  it("takes one place, not two, when the place's answer is lost", async () => {
    const name = unique("placer");
    proxy.loseNext(1, (s) => s.operation === "PutItem");
    const place = await connections().takePlace(name, "conn-a", 9_999_999_999, Date.now(), 3);
    assert.ok(place);
    const held = [];
    for (let i = 0; i < 3; i++) if ((await item(tables.connections, { connectionId: placeKey(name, i) }))?.holder === "conn-a") held.push(i);
    assert.equal(held.length, 1);
  });

  it("frees a record's place when the delete's answer is lost", async () => {
    const id = unique("leaver");
    const place = placeKey(id, 0);
    await db.client.send(new UpdateCommand({ TableName: tables.connections, Key: { connectionId: place }, UpdateExpression: "SET holder = :h, expiresAt = :e", ExpressionAttributeValues: { ":h": id, ":e": 9_999_999_999 } }));
    await register(id, { place });
    proxy.loseNext(1, (s) => s.operation === "DeleteItem");
    await connections().remove(id);
    assert.deepEqual([await item(tables.connections, { connectionId: id }), await item(tables.connections, { connectionId: place })], [undefined, undefined]);
  });

  it("records a typing signal once and lets it through when the answer is lost", async () => {
    const id = unique("typist");
    await register(id);
    proxy.loseNext(1, (s) => s.operation === "UpdateItem");
    assert.equal((await connections().allowTyping(id, Date.now(), 3_000))?.connectionId, id);
  });
});

describe("room queries skip expired records (TTL deletes them only within days)", function () {
  this.timeout(30_000);
  let db: LocalDynamoDB;
  let tables: Record<string, string>;

  before(async () => {
    const program = await loadProgram({ stack: "dev" });
    const tableResources = program.resources.filter((r) => r.type === "aws:dynamodb/table:Table");
    tables = Object.fromEntries(tableResources.map((r) => [r.name, r.state.name as string]));
    db = await startDynamoDB({ tables: tableResources.map(tableSpec), region: "us-east-1", sweepIntervalMs: 600_000 });
  });
  after(() => db?.close());

  it("must neither list nor count a record whose expiresAt has passed but which TTL has not deleted", async () => {
    const store = createConnectionsStore(db.client, { tableName: tables.connections, roomIndexName: "byRoom" });
    const room = `expired-${Date.now()}`;
    const now = Math.floor(Date.now() / 1000);
    await store.put({ connectionId: "live-1", room, name: "ann", connectedAt: 0, expiresAt: now + 3_600 });
    await store.put({ connectionId: "gone-1", room, name: "bo", connectedAt: 0, expiresAt: now - 60 });
    await store.put({ connectionId: "live-2", room, name: "cy", connectedAt: 0, expiresAt: now + 3_600 });
    assert.deepEqual(await store.roomNames(room, undefined, 10), { members: [{ name: "ann", connections: 1 }, { name: "cy", connections: 1 }], next: null });
    assert.equal(await store.roomCount(room), 2);
    assert.equal(await store.roomCount(room, 2), 2);
    const pages = [];
    for await (const page of store.roomMembers(room)) pages.push(...page);
    assert.deepEqual(pages.sort(), ["live-1", "live-2"]);
    // A page of a given size is refilled past the expired record (typing reads one page of limit + 1).
    const first = await store.roomMembers(room, 2).next();
    assert.deepEqual(first.done ? [] : first.value.sort(), ["live-1", "live-2"]);
  });

  it("reads a bounded number of records in a room full of expired ones: caps count records read (ScannedCount), not records kept", async () => {
    const reads: { limit?: number; scanned: number }[] = [];
    // The embedded DynamoDB's own answers, each Query's Limit and ScannedCount noted.
    const counting: DocumentClient = {
      send: (async (command: { input: { Limit?: number } }) => {
        const out = (await db.client.send(command as never)) as { ScannedCount?: number };
        if (command instanceof QueryCommand) reads.push({ limit: command.input.Limit, scanned: out.ScannedCount ?? 0 });
        return out;
      }) as DocumentClient["send"],
    };
    const store = createConnectionsStore(counting, { tableName: tables.connections, roomIndexName: "byRoom" });
    const room = `graveyard-${Date.now()}`;
    const now = Math.floor(Date.now() / 1000);
    // 300 records whose $disconnect never came, then (by name) 30 live ones.
    for (let i = 0; i < 300; i++) await store.put({ connectionId: `gone-${i}`, room, name: `a-${String(i).padStart(3, "0")}`, connectedAt: 0, expiresAt: now - 60 });
    for (let i = 0; i < 30; i++) await store.put({ connectionId: `live-${i}`, room, name: `z-${String(i).padStart(3, "0")}`, connectedAt: 0, expiresAt: now + 3_600 });
    const scanned = () => reads.splice(0).reduce((sum, r) => sum + r.scanned, 0);

    assert.equal(await store.roomCount(room), 30, "uncapped: every live record");
    assert.equal(scanned(), 330);
    assert.equal(await store.roomCount(room, 11), 0, "capped: the first records read were all expired");
    assert.equal(scanned(), READ_PER_LIVE * 11, "at most READ_PER_LIVE x the cap read, not the whole room");
    const first = await store.roomMembers(room, 11).next();
    assert.deepEqual([first.done ? [] : first.value, scanned()], [[], READ_PER_LIVE * 11], "one page of 11: at most 22 records read for it");
    // A cap beyond the room reads it whole, and counts every live record.
    assert.equal(await store.roomCount(room, 400), 30);
    assert.equal(scanned(), 330);
  });
});
