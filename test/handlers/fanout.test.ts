import { DeleteCommand, GetCommand } from "@aws-sdk/lib-dynamodb";
import assert from "node:assert/strict";
import { fanoutHandlerFactory } from "../../handlers/fanout";
import { FanoutEvent, MAX_CHUNK_PAYLOAD_BYTES, spread } from "../../handlers/shared/fanout";
import { GONE, withFakeAws } from "./fake-aws";
import { connId, lambdaContext, withEnv, withLogs, stubDocumentClient } from "./fixtures";

const event = (ids: string[]): FanoutEvent => ({ kind: "chat.fanout", room: "general", cursor: "0000000000000007", data: '{"type":"message","message":"hi"}', connectionIds: ids });

describe("fanout (one chunk of a large room)", () => {
  const ddbStub = stubDocumentClient();
  const aws = withFakeAws();
  withEnv({ CONNECTIONS_TABLE: "connections-test", ROOM_INDEX: "byRoom", FANOUT_CONCURRENCY: "3" });
  const logs = withLogs();
  beforeEach(() => ddbStub().on(DeleteCommand).resolves({}));

  it("posts the frame to every id in the chunk, once each", async () => {
    const ids = Array.from({ length: 7 }, (_, i) => connId(i + 1));
    const result = await fanoutHandlerFactory()(event(ids), lambdaContext);
    assert.deepEqual(aws().posts().map((p) => p.to).sort(), [...ids].sort());
    assert.ok(aws().posts().every((p) => p.data === event(ids).data));
    assert.deepEqual(result, { room: "general", cursor: "0000000000000007", recipients: 7, delivered: 7, stale: 0, failed: 0 });
  });

  it("removes exactly the records of members that answered 410", async () => {
    aws().reply((call) => (call.connectionId === connId(2) ? GONE : undefined));
    ddbStub().on(GetCommand).resolves({ Item: { connectionId: connId(2), room: "general", name: "bo", connectedAt: 0, expiresAt: 9_999_999_999 } });
    await fanoutHandlerFactory()(event([connId(1), connId(2), connId(3)]), lambdaContext);
    assert.deepEqual(ddbStub().commandCalls(DeleteCommand).map((c) => c.args[0].input.Key), [{ connectionId: connId(2) }]);
  });

  for (const [name, bad] of [
    ["null", null],
    ["an API Gateway event", { requestContext: { routeKey: "sendmessage" }, body: "{}" }],
    ["ids that are not strings", { ...event([]), connectionIds: [1, 2] }],
    ["a missing frame", { ...event([connId(1)]), data: undefined }],
  ] as [string, unknown][]) {
    it(`refuses ${name} without throwing (a throw would be retried) and posts nothing`, async () => {
      const result = await fanoutHandlerFactory()(bad, lambdaContext);
      assert.ok("refused" in result && /not a fan-out event/.test(result.refused));
      assert.deepEqual(aws().posts(), []);
      assert.ok(logs().some((l) => l.msg === "fan-out event refused"));
    });
  }
});

describe("spread: cutting a room into chunks", () => {
  const noop = async (ids: string[]) => ({ recipients: ids.length, delivered: ids.length, stale: 0, failed: 0 });
  async function* pages(ids: string[], size: number) {
    for (let i = 0; i < ids.length; i += size) yield ids.slice(i, i + size);
  }

  it("keeps every hand-off under the 256 KB asynchronous payload limit, whatever the chunk size setting", async () => {
    const ids = Array.from({ length: 6_000 }, (_, i) => `${String(i).padStart(6, "0")}${"x".repeat(122)}`); // 128-character ids
    const events: FanoutEvent[] = [];
    const local: string[][] = [];
    const data = JSON.stringify({ type: "message", message: "é".repeat(30_000) });
    const stats = await spread({
      pages: pages(ids, 1_000), exclude: "none", room: "general", cursor: "0000000000000001", data, chunkSize: 10_000,
      deliver: async (chunk) => (local.push(chunk), noop(chunk)),
      dispatch: async (e) => void events.push(e),
    });
    for (const e of events) assert.ok(Buffer.byteLength(JSON.stringify(e)) <= MAX_CHUNK_PAYLOAD_BYTES, `${Buffer.byteLength(JSON.stringify(e))} bytes`);
    const all = [...local.flat(), ...events.flatMap((e) => e.connectionIds)];
    assert.equal(all.length, 6_000);
    assert.equal(new Set(all).size, 6_000, "every recipient in exactly one chunk");
    assert.equal(stats.handedRecipients + stats.recipients, 6_000);
  });

  it("finishes what started, then throws, when reading the room fails part-way", async () => {
    const delivered: string[] = [];
    await assert.rejects(
      spread({
        pages: (async function* () {
          yield ["a", "b", "c"];
          throw new Error("Query failed");
        })(),
        exclude: "a", room: "r", cursor: "0000000000000001", data: "{}", chunkSize: 10,
        deliver: async (chunk) => (delivered.push(...chunk), noop(chunk)),
        dispatch: async () => undefined,
      }),
      /Query failed/,
    );
    assert.deepEqual(delivered, ["b", "c"]);
  });
});
