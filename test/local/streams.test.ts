/**
 * DynamoDB Streams and Lambda event source mappings in the local stack (local/stream-capture.ts,
 * local/event-filter.ts, local/streams.ts): the records as DynamoDB Streams writes them, the
 * filter syntax, the poller's batches, order, retries and bisection, the IAM refusal, and the
 * whole path through the embedded DynamoDB and real function instances. Every wait is on an
 * event (a record, an invocation, a log line), never a sleep.
 */
import { TransactWriteItem, TransactWriteItemsCommand } from "@aws-sdk/client-dynamodb";
import { BatchWriteCommand, DeleteCommand, PutCommand, UpdateCommand } from "@aws-sdk/lib-dynamodb";
import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as path from "node:path";
import { LocalDynamoDB, startDynamoDB, TableSpec, tableSpec } from "../../local/dynamodb";
import { compilePattern, passesFilters } from "../../local/event-filter";
import type { Principal } from "../../local/iam";
import { createLambdaRuntime, InvokeOutcome, LambdaRuntime } from "../../local/lambda";
import { PROJECT_DIR, RecordedResource } from "../../local/program";
import { Item, sameItem, StreamRecord, streamRecord, TTL_IDENTITY } from "../../local/stream-capture";
import { startLocalStack, StartupError } from "../../local/stack";
import { createLocalQueues, LocalQueues, QueueSpec } from "../../local/sqs";
import { destinationAccessRefusal, FailureRecord, MappingSpec, mappingSpecs, shardIdOf, startStreamDelivery, StreamDelivery, streamAccessRefusal } from "../../local/streams";
import { Client } from "../e2e/clients";

const REGION = "us-east-1";
const STREAM_ARN = "arn:aws:dynamodb:us-east-1:123456789012:table/connections-test/stream/2025-06-01T10:20:30.123";
/** The lead's filters (index.ts): joins and leaves of connections that have a room. */
const PRESENCE_FILTERS = [
  JSON.stringify({ eventName: ["INSERT"], dynamodb: { NewImage: { room: { S: [{ exists: true }] } } } }),
  JSON.stringify({ eventName: ["REMOVE"], dynamodb: { OldImage: { room: { S: [{ exists: true }] } } } }),
];

/** A connections table like the program's, with its stream on. */
function connectionsResource(viewType = "NEW_AND_OLD_IMAGES"): RecordedResource {
  const inputs = {
    hashKey: "connectionId",
    attributes: [
      { name: "connectionId", type: "S" },
      { name: "room", type: "S" },
    ],
    globalSecondaryIndexes: [{ name: "byRoom", keySchemas: [{ attributeName: "room", keyType: "HASH" }], projectionType: "KEYS_ONLY" }],
    ttl: { attributeName: "expiresAt", enabled: true },
    streamEnabled: true,
    streamViewType: viewType,
  };
  return { type: "aws:dynamodb/table:Table", name: "connections", id: "connections-id", inputs, state: { ...inputs, name: "connections-test", streamArn: STREAM_ARN }, secretInputs: [] };
}

const FAILURE_QUEUE: QueueSpec = { name: "presence-failures", arn: "arn:aws:sqs:us-east-1:123456789012:presence-failures", url: "https://sqs.us-east-1.amazonaws.com/123456789012/presence-failures", retentionSeconds: 1_209_600 };

const mapping = (overrides: Partial<MappingSpec> = {}): MappingSpec => ({
  name: "presence",
  functionName: "presence-fn",
  functionArn: "arn:aws:lambda:us-east-1:123456789012:function:presence-fn",
  streamArn: STREAM_ARN,
  batchSize: 100,
  batchingWindowMs: 0,
  bisect: false,
  maxRetries: -1,
  maxRecordAgeSeconds: 86_400,
  filters: [],
  filterPatterns: [],
  enabled: true,
  ...overrides,
});

/** A record of the test stream, for the poller alone. */
function record(id: string, eventName: StreamRecord["eventName"] = "INSERT", image: Item = { connectionId: { S: id }, room: { S: "r" } }, sequence = 1): StreamRecord {
  const table = { name: "connections-test", keyNames: ["connectionId"], stream: { arn: STREAM_ARN, viewType: "NEW_AND_OLD_IMAGES" as const } };
  const size = (item: Item) => JSON.stringify(item).length;
  const made = eventName === "REMOVE" ? streamRecord(table, REGION, String(sequence), size, image) : streamRecord(table, REGION, String(sequence), size, eventName === "MODIFY" ? { ...image, old: { S: "x" } } : undefined, image);
  return made!;
}

/** Resolves with the first value `check` returns that is not undefined, re-checking on every `nudge()`. */
function waiter() {
  const wakers = new Set<() => void>();
  return {
    nudge: () => wakers.forEach((w) => w()),
    async until<T>(check: () => T | undefined, what: string, timeoutMs = 15_000): Promise<T> {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        const value = check();
        if (value !== undefined) return value;
        if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
        await new Promise<void>((resolve) => {
          const timer = setTimeout(wake, Math.max(0, deadline - Date.now()));
          function wake() {
            clearTimeout(timer);
            wakers.delete(wake);
            resolve();
          }
          wakers.add(wake);
        });
      }
    },
  };
}

describe("local DynamoDB Streams and event source mappings", function () {
  this.timeout(30_000);

  describe("event filtering (the subset implemented)", () => {
    const filters = PRESENCE_FILTERS.map((p, i) => compilePattern(p, `filter ${i + 1}`));

    it("passes a join and a leave of a connection with a room, and nothing else", () => {
      assert.equal(passesFilters(filters, record("a", "INSERT")), true);
      assert.equal(passesFilters(filters, record("a", "REMOVE")), true);
      assert.equal(passesFilters(filters, record("a", "MODIFY")), false, "a MODIFY matches neither filter");
      assert.equal(passesFilters(filters, record("p", "INSERT", { connectionId: { S: "place#carol#0" }, holder: { S: "a" } })), false, "an item without a room");
      assert.equal(passesFilters(filters, record("n", "INSERT", { connectionId: { S: "n" }, room: { N: "1" } })), false, "room of another type");
      assert.equal(passesFilters([], record("a", "MODIFY")), true, "no filters: everything");
    });

    it("matches {exists: true} only on a leaf, and {exists: false} on an absent field and its absent parents", () => {
      const leaf = compilePattern(JSON.stringify({ dynamodb: { NewImage: { room: [{ exists: true }] } } }), "t");
      assert.equal(passesFilters([leaf], record("a")), false, "room is an object ({S: …}), not a leaf");
      const absent = compilePattern(JSON.stringify({ dynamodb: { NewImage: { room: { S: [{ exists: false }] } } } }), "t");
      assert.equal(passesFilters([absent], record("a", "REMOVE")), true, "a REMOVE has no NewImage at all");
      assert.equal(passesFilters([absent], record("a", "INSERT")), false);
      const values = compilePattern(JSON.stringify({ eventName: ["MODIFY", "REMOVE"] }), "t");
      assert.deepEqual(["INSERT", "MODIFY", "REMOVE"].map((e) => passesFilters([values], record("a", e as StreamRecord["eventName"]))), [false, true, true]);
    });

    for (const [form, pattern] of [
      ["prefix", { eventName: [{ prefix: "IN" }] }],
      ["anything-but", { eventName: [{ "anything-but": ["MODIFY"] }] }],
      ["numeric", { dynamodb: { SizeBytes: [{ numeric: [">", 0] }] } }],
      ["$or", { $or: [{ eventName: ["INSERT"] }] }],
    ] as const) {
      it(`refuses ${form}, which it does not implement, naming the mapping and the field`, () => {
        assert.throws(() => compilePattern(JSON.stringify(pattern), "event source mapping presence, filter 1"), (err: Error) => {
          assert.match(err.message, /^event source mapping presence, filter 1: /);
          assert.match(err.message, form === "$or" ? /does not implement \$or/ : /implements exact values and \{"exists": true\|false\} only/);
          return true;
        });
      });
    }

    it("refuses a pattern that is not JSON, or whose leaf is not an array", () => {
      assert.throws(() => compilePattern("{eventName: INSERT}", "m"), /m: the filter pattern is not JSON/);
      assert.throws(() => compilePattern(JSON.stringify({ eventName: "INSERT" }), "m"), /m: eventName must be an array of values or an object/);
    });
  });

  describe("stream records (as DynamoDB Streams writes them)", () => {
    const table = { name: "blog", keyNames: ["id"], stream: { arn: STREAM_ARN, viewType: "NEW_AND_OLD_IMAGES" as const } };
    // dynalite's size function: the DynamoDB size of the items (UTF-8 bytes of names and values).
    const size = (item: Item) => Object.entries(item).reduce((n, [k, v]) => n + Buffer.byteLength(k) + Buffer.byteLength(String(v.S ?? v.N)), 0);

    it("sizes a record as AWS's example does: Keys plus the images it carries (27 bytes for the documented MODIFY)", () => {
      const modify = streamRecord(table, REGION, "1", size, { id: { S: "1" }, key: { S: "value" } }, { id: { S: "1" }, key: { S: "updated" } })!;
      assert.equal(modify.eventName, "MODIFY");
      assert.equal(modify.dynamodb.SizeBytes, 27);
      const insert = streamRecord(table, REGION, "2", size, undefined, { id: { S: "2" }, key: { S: "original" } })!;
      assert.equal(insert.dynamodb.SizeBytes, 17);
      assert.equal(insert.dynamodb.OldImage, undefined);
    });

    it("carries only what the StreamViewType asks for", () => {
      const before = { id: { S: "1" }, a: { S: "x" } };
      const after = { id: { S: "1" }, a: { S: "y" } };
      const of = (viewType: "KEYS_ONLY" | "NEW_IMAGE" | "OLD_IMAGE") => streamRecord({ ...table, stream: { ...table.stream, viewType } }, REGION, "1", size, before, after)!.dynamodb;
      assert.deepEqual([of("KEYS_ONLY").NewImage, of("KEYS_ONLY").OldImage, of("KEYS_ONLY").Keys], [undefined, undefined, { id: { S: "1" } }]);
      assert.deepEqual([of("NEW_IMAGE").NewImage, of("NEW_IMAGE").OldImage], [after, undefined]);
      assert.deepEqual([of("OLD_IMAGE").NewImage, of("OLD_IMAGE").OldImage], [undefined, before]);
    });

    it("makes no record of a write that changed nothing: maps by name, sets in any order, lists in order", () => {
      const item: Item = { id: { S: "1" }, tags: { SS: ["a", "b"] }, m: { M: { x: { N: "1" }, y: { L: [{ S: "p" }, { S: "q" }] } } } };
      assert.equal(sameItem(item, { m: { M: { y: { L: [{ S: "p" }, { S: "q" }] }, x: { N: "1" } } }, tags: { SS: ["b", "a"] }, id: { S: "1" } }), true);
      assert.equal(sameItem(item, { ...item, m: { M: { x: { N: "1" }, y: { L: [{ S: "q" }, { S: "p" }] } } } }), false);
      assert.equal(sameItem(item, { ...item, tags: { S: "a" } }), false);
      assert.equal(sameItem(undefined, undefined), true);
      assert.equal(streamRecord(table, REGION, "1", size, item, structuredClone(item)), undefined);
    });

    it("has the fields of Lambda's DynamoDB event record", () => {
      const r = record("a");
      assert.match(r.eventID!, /^[0-9a-f]{32}$/);
      assert.deepEqual([r.eventVersion, r.eventSource, r.awsRegion, r.eventSourceARN], ["1.1", "aws:dynamodb", REGION, STREAM_ARN]);
      assert.ok(Number.isInteger(r.dynamodb!.ApproximateCreationDateTime) && Math.abs(r.dynamodb!.ApproximateCreationDateTime! - Date.now() / 1000) < 5, "epoch seconds");
    });
  });

  describe("mappings and IAM, checked at start", () => {
    const functionResource: RecordedResource = {
      type: "aws:lambda/function:Function",
      name: "ws-chat-presence",
      id: "ws-chat-presence-id",
      inputs: {},
      state: { name: "ws-chat-presence-1a2b", arn: "arn:aws:lambda:us-east-1:123456789012:function:ws-chat-presence-1a2b" },
      secretInputs: [],
    };
    const mappingResource = (inputs: Record<string, unknown>): RecordedResource => ({
      type: "aws:lambda/eventSourceMapping:EventSourceMapping",
      name: "presence",
      id: "presence-id",
      inputs: { eventSourceArn: STREAM_ARN, functionName: functionResource.state.arn, startingPosition: "LATEST", ...inputs },
      state: {},
      secretInputs: [],
    });
    const queueResource: RecordedResource = { type: "aws:sqs/queue:Queue", name: "presence-failures", id: "q-id", inputs: { messageRetentionSeconds: 1_209_600 }, state: { name: FAILURE_QUEUE.name, arn: FAILURE_QUEUE.arn, url: FAILURE_QUEUE.url }, secretInputs: [] };
    const specs = (inputs: Record<string, unknown> = {}) => mappingSpecs([connectionsResource(), functionResource, queueResource, mappingResource(inputs)]);
    const onFailure = (destinationArn: string) => ({ destinationConfig: { onFailure: { destinationArn } } });

    it("reads the lead's mapping: the function by ARN, its batch, retry and filter settings", () => {
      const [spec] = specs({ batchSize: 100, maximumBatchingWindowInSeconds: 0, bisectBatchOnFunctionError: true, maximumRetryAttempts: 10, maximumRecordAgeInSeconds: 3600, filterCriteria: { filters: PRESENCE_FILTERS.map((pattern) => ({ pattern })) }, ...onFailure(FAILURE_QUEUE.arn) });
      assert.deepEqual(
        { ...spec, filters: spec.filters.length },
        { name: "presence", functionName: "ws-chat-presence-1a2b", functionArn: functionResource.state.arn, streamArn: STREAM_ARN, batchSize: 100, batchingWindowMs: 0, bisect: true, maxRetries: 10, maxRecordAgeSeconds: 3600, filters: 2, filterPatterns: PRESENCE_FILTERS, enabled: true, onFailureArn: FAILURE_QUEUE.arn },
      );
      const [defaults] = specs();
      assert.equal(defaults.onFailureArn, undefined, "no destination: given-up records are dropped");
      assert.deepEqual([defaults.batchSize, defaults.bisect, defaults.maxRetries, defaults.maxRecordAgeSeconds], [100, false, -1, 86_400], "Lambda's defaults; records live 24 h");
    });

    for (const [what, inputs, message] of [
      ["an SNS on-failure destination", { destinationConfig: { onFailure: { destinationArn: "arn:aws:sns:us-east-1:123456789012:t" } } }, /the on-failure destination arn:aws:sns:us-east-1:123456789012:t is not emulated \(an SQS queue the program declares only\)/],
      ["a queue the program does not declare", { destinationConfig: { onFailure: { destinationArn: "arn:aws:sqs:us-east-1:123456789012:elsewhere" } } }, /the on-failure destination arn:aws:sqs:us-east-1:123456789012:elsewhere is not emulated/],
      ["partial batch responses", { functionResponseTypes: ["ReportBatchItemFailures"] }, /functionResponseTypes ReportBatchItemFailures is not emulated/],
      ["AT_TIMESTAMP", { startingPosition: "AT_TIMESTAMP" }, /startingPosition AT_TIMESTAMP is not emulated/],
      ["an SQS queue", { eventSourceArn: "arn:aws:sqs:us-east-1:123456789012:q" }, /is not the stream of a table the program declares \(only DynamoDB streams are emulated\)/],
      ["a filter form not implemented", { filterCriteria: { filters: [{ pattern: JSON.stringify({ eventName: [{ prefix: "I" }] }) }] } }, /^event source mapping presence, filter 1: eventName uses \{"prefix":"I"\}/],
    ] as const) {
      it(`refuses ${what}, naming the mapping`, () => {
        assert.throws(() => specs(inputs), (err: Error) => {
          assert.match(err.message, /^event source mapping presence/);
          assert.match(err.message, message);
          return true;
        });
      });
    }

    it("refuses a role that may not read the stream, in CreateEventSourceMapping's words, and accepts one that may", () => {
      const [spec] = specs();
      const read = { Sid: "ReadConnectionStream", Effect: "Allow", Action: ["dynamodb:DescribeStream", "dynamodb:GetRecords", "dynamodb:GetShardIterator", "dynamodb:ListStreams"], Resource: [STREAM_ARN] };
      const principal = (statements: Principal["statements"]): Principal[] => [{ functionName: spec.functionName, roleName: "ws-chat-presence-role", statements }];
      assert.equal(streamAccessRefusal(spec, principal([read])), undefined);
      const expected = `InvalidParameterValueException: Cannot access stream ${STREAM_ARN}. Please ensure the role can perform the GetRecords, GetShardIterator, DescribeStream, and ListStreams Actions on your stream in IAM.`;
      assert.equal(streamAccessRefusal(spec, principal([])), expected);
      assert.equal(streamAccessRefusal(spec, principal([{ ...read, Action: read.Action.filter((a) => a !== "dynamodb:ListStreams") }])), expected, "all four actions are needed");
      assert.equal(streamAccessRefusal(spec, principal([{ ...read, Resource: ["arn:aws:dynamodb:us-east-1:123456789012:table/connections-test"] }])), expected, "the table's ARN is not the stream's");
    });

    it("refuses a role that may not send to the on-failure queue, in CreateEventSourceMapping's words, and accepts one that may send to that queue", () => {
      const [spec] = specs(onFailure(FAILURE_QUEUE.arn));
      const principal = (statements: Principal["statements"]): Principal[] => [{ functionName: spec.functionName, roleName: "ws-chat-presence-role", statements }];
      const send = { Sid: "RecordFailedBatches", Effect: "Allow", Action: ["sqs:SendMessage"], Resource: [FAILURE_QUEUE.arn] };
      const refusal = "InvalidParameterValueException: The function execution role does not have permissions to call SendMessage on SQS";
      assert.equal(destinationAccessRefusal(spec, principal([send])), undefined);
      assert.equal(destinationAccessRefusal(spec, principal([])), refusal);
      assert.equal(destinationAccessRefusal(spec, principal([{ ...send, Resource: ["arn:aws:sqs:us-east-1:123456789012:other"] }])), refusal, "another queue");
      assert.equal(destinationAccessRefusal(spec, principal([{ ...send, Action: ["sqs:ReceiveMessage"] }])), refusal, "another action");
      assert.equal(destinationAccessRefusal(specs()[0], principal([])), undefined, "no destination: nothing to send");
    });
  });

  describe("the poller (a fake function)", () => {
    let push: (records: StreamRecord[]) => void;
    let delivery: StreamDelivery | undefined;
    let calls: string[][];
    let lines: string[];
    const events = waiter();
    let queues: LocalQueues;
    const start = (spec: MappingSpec, fails: (ids: string[]) => boolean = () => false) => {
      calls = [];
      lines = [];
      queues = createLocalQueues([FAILURE_QUEUE]);
      queues.onMessage(() => events.nudge());
      delivery = startStreamDelivery({
        mappings: [spec],
        async invoke(_name, event) {
          const ids = event.Records.map((r) => r.dynamodb.Keys.connectionId.S!);
          calls.push(ids);
          events.nudge();
          const failed = fails(ids);
          return { durationMs: 1, coldStart: false, ...(failed ? { error: { errorType: "Error", errorMessage: "boom" } } : { result: null }) } satisfies InvokeOutcome;
        },
        subscribe(listener) {
          push = listener;
          return () => (push = () => assert.fail("records pushed after the stop"));
        },
        log: (line) => {
          lines.push(line);
          events.nudge();
        },
        sendFailureRecord: (arn, failure) => (queues.send(arn, JSON.stringify(failure)), queues.find(arn)!.name),
        retryDelayMs: () => 0,
      });
    };
    afterEach(async () => {
      await delivery?.close(0);
      await delivery?.settled();
      delivery = undefined;
    });
    const ids = (n: number, from = 0) => Array.from({ length: n }, (_, i) => `c${from + i}`);

    it("sends batches of at most batchSize, in the order written, one at a time, dropping what no filter passes", async () => {
      start(mapping({ batchSize: 3, filters: PRESENCE_FILTERS.map((p) => compilePattern(p, "t")) }));
      push([...ids(4).map((id) => record(id)), record("m", "MODIFY")]);
      push(ids(3, 4).map((id) => record(id, "REMOVE")));
      await delivery!.idle(10_000);
      assert.deepEqual(calls.flat(), ids(7), "every INSERT and REMOVE, in order, no MODIFY");
      assert.ok(calls.every((c) => c.length <= 3));
      assert.equal(delivery!.pending(), 0);
    });

    it("with a batching window, waits for a full batch", async () => {
      start(mapping({ batchSize: 4, batchingWindowMs: 60_000 }));
      for (const id of ids(8)) push([record(id)]);
      await events.until(() => (calls.length === 2 ? true : undefined), "two batches");
      assert.deepEqual(calls, [ids(4), ids(4, 4)]);
    });

    it("bisects a failing batch, retries the failing record maximumRetryAttempts times, then drops it with a line naming it, and goes on in order", async () => {
      start(mapping({ batchSize: 8, bisect: true, maxRetries: 2 }), (batch) => batch.includes("c5"));
      push(ids(8).map((id) => record(id)));
      push(ids(1, 8).map((id) => record(id)));
      await events.until(() => (calls.flat().includes("c8") ? true : undefined), "the record after the dropped one");
      // [0..7] fails → [0..3] ok, [4..7] fails → [4,5] fails → [4] ok, [5] fails, retried twice, dropped → [6,7] ok → [8].
      assert.deepEqual(calls, [ids(8), ids(4), ids(4, 4), ["c4", "c5"], ["c4"], ["c5"], ["c5"], ["c5"], ["c6", "c7"], ["c8"]]);
      const dropped = lines.filter((l) => l.includes("dropped"));
      assert.equal(dropped.length, 1);
      assert.match(dropped[0], /^\[presence-fn\] dropped 1 stream record\(s\) after 3 attempt\(s\) \(maximumRetryAttempts 2; last error Error: boom\): INSERT \{"connectionId":\{"S":"c5"\}\} \(SequenceNumber 1, eventID [0-9a-f]{32}\)$/);
    });

    it("without bisection, retries the whole batch and then drops it whole", async () => {
      start(mapping({ batchSize: 2, maxRetries: 1 }), (batch) => batch.includes("c1"));
      push(ids(3).map((id) => record(id)));
      await events.until(() => (calls.flat().includes("c2") ? true : undefined), "the next batch");
      assert.deepEqual(calls, [["c0", "c1"], ["c0", "c1"], ["c2"]]);
      assert.match(lines.find((l) => l.includes("dropped"))!, /dropped 2 stream record\(s\) after 2 attempt\(s\)/);
    });

    describe("with an on-failure destination", () => {
      const withQueue = (overrides: Partial<MappingSpec> = {}) => mapping({ onFailureArn: FAILURE_QUEUE.arn, ...overrides });
      const recorded = () => queues.messages(FAILURE_QUEUE.name).map((m) => JSON.parse(m.body) as FailureRecord);

      it("sends a batch given up after its retries to the queue as Lambda's failure record (its shard and sequence numbers), with one line naming the queue, and goes on", async () => {
        start(withQueue({ batchSize: 8, bisect: true, maxRetries: 2 }), (batch) => batch.includes("c5"));
        const written = ids(8).map((id, i) => record(id, "INSERT", undefined, 100 + i));
        push(written);
        push([record("c8", "INSERT", undefined, 108)]);
        await events.until(() => (calls.flat().includes("c8") ? true : undefined), "the record after the given-up one");
        const [failure, ...more] = recorded();
        assert.deepEqual(more, [], "one failure record");
        const poison = written[5];
        assert.match(failure.requestContext.requestId, /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
        assert.deepEqual({ ...failure.requestContext, requestId: undefined }, { requestId: undefined, functionArn: "arn:aws:lambda:us-east-1:123456789012:function:presence-fn", condition: "RetryAttemptsExhausted", approximateInvokeCount: 3 });
        assert.deepEqual(failure.responseContext, { statusCode: 200, executedVersion: "$LATEST", functionError: "Unhandled" });
        assert.equal(failure.version, "1.0");
        assert.ok(Math.abs(Date.parse(failure.timestamp) - Date.now()) < 10_000, failure.timestamp);
        const arrival = new Date(poison.dynamodb.ApproximateCreationDateTime * 1000).toISOString().replace(/\.000Z$/, "Z");
        assert.deepEqual(failure.DDBStreamBatchInfo, {
          shardId: shardIdOf(STREAM_ARN),
          startSequenceNumber: "105",
          endSequenceNumber: "105",
          approximateArrivalOfFirstRecord: arrival,
          approximateArrivalOfLastRecord: arrival,
          batchSize: 1,
          streamArn: STREAM_ARN,
        });
        assert.match(shardIdOf(STREAM_ARN), /^shardId-\d{20}-[0-9a-f]{8}$/);
        const given = lines.filter((l) => l.includes("given up"));
        assert.equal(given.length, 1);
        assert.match(given[0], /^\[presence-fn\] presence batch given up after 3 attempt\(s\) \(maximumRetryAttempts 2; last error Error: boom\) → presence-failures \(RetryAttemptsExhausted, 1 record\(s\)\): INSERT \{"connectionId":\{"S":"c5"\}\}/);
        assert.deepEqual(lines.filter((l) => l.includes("dropped")), [], "nothing dropped unrecorded");
      });

      it("records a whole batch given up without bisection: its first and last sequence numbers and size", async () => {
        start(withQueue({ batchSize: 3, maxRetries: 1 }), (batch) => batch.includes("c1"));
        push(ids(4).map((id, i) => record(id, "INSERT", undefined, 200 + i)));
        await events.until(() => (calls.flat().includes("c3") ? true : undefined), "the next batch");
        assert.deepEqual(calls, [ids(3), ids(3), ["c3"]]);
        const [failure] = recorded();
        assert.deepEqual([failure.DDBStreamBatchInfo.startSequenceNumber, failure.DDBStreamBatchInfo.endSequenceNumber, failure.DDBStreamBatchInfo.batchSize, failure.requestContext.approximateInvokeCount], ["200", "202", 3, 2]);
      });

      it("must not record a batch that succeeds on a retry", async () => {
        let failures = 2;
        start(withQueue({ maxRetries: 5 }), () => failures-- > 0);
        push([record("flaky", "INSERT", undefined, 300), record("next", "INSERT", undefined, 301)]);
        await delivery!.idle(10_000);
        assert.deepEqual(calls, [["flaky", "next"], ["flaky", "next"], ["flaky", "next"]]);
        assert.deepEqual(queues.messages(FAILURE_QUEUE.name), []);
        assert.deepEqual(lines.filter((l) => /given up|dropped/.test(l)), []);
      });

      it("records records older than maximumRecordAgeInSeconds as RecordAgeExceeded, without invoking the function for them", async () => {
        start(withQueue({ maxRecordAgeSeconds: 60 }));
        const old = record("old", "INSERT", undefined, 400);
        old.dynamodb.ApproximateCreationDateTime -= 120;
        push([old, record("new", "INSERT", undefined, 401)]);
        await delivery!.idle(10_000);
        assert.deepEqual(calls, [["new"]]);
        const [failure] = recorded();
        assert.deepEqual([failure.requestContext.condition, failure.requestContext.approximateInvokeCount, failure.responseContext, failure.DDBStreamBatchInfo.startSequenceNumber], ["RecordAgeExceeded", 0, undefined, "400"]);
      });

      it("must not start without the queues to send to", () => {
        assert.throws(() => startStreamDelivery({ mappings: [withQueue()], invoke: async () => ({ durationMs: 1, coldStart: false, result: null }), subscribe: () => () => undefined, log: () => undefined }), /event source mapping presence: it has an on-failure destination, but no queues were given to send to/);
      });
    });

    it("drops records older than maximumRecordAgeInSeconds instead of sending them", async () => {
      start(mapping({ maxRecordAgeSeconds: 60 }));
      const old = record("old");
      old.dynamodb.ApproximateCreationDateTime -= 120;
      push([old, record("new")]);
      await delivery!.idle(10_000);
      assert.deepEqual(calls, [["new"]]);
      assert.match(lines[0], /dropped 1 stream record\(s\) older than maximumRecordAgeInSeconds \(60 s\)/);
    });

    it("stops on close: a retry waiting is abandoned, nothing is sent after, and the records left are counted", async () => {
      start(mapping({ batchSize: 1 }), () => true);
      push([record("a"), record("b")]);
      await events.until(() => (calls.length >= 2 ? true : undefined), "a retry");
      await delivery!.close(0);
      const sent = calls.length;
      await delivery!.settled();
      assert.equal(calls.length, sent, "no invocation after the stop");
      assert.match(lines.at(-1)!, /^Stream delivery stopped with 2 record\(s\) not delivered\.$/);
    });
  });

  describe("through the embedded DynamoDB and real function instances", () => {
    let db: LocalDynamoDB;
    let spec: TableSpec;
    let plain: TableSpec;
    let records: StreamRecord[];
    const events = waiter();
    before(async () => {
      spec = tableSpec(connectionsResource());
      plain = { ...spec, name: "plain", create: { ...spec.create, TableName: "plain" }, stream: undefined };
      db = await startDynamoDB({ tables: [spec, plain], region: REGION, sweepIntervalMs: 3_600_000 });
      db.onStream((batch) => {
        // As the stack receives them: through the DynamoDB process's IPC channel, as JSON (dynalite's
        // own objects may have no prototype).
        records.push(...(JSON.parse(JSON.stringify(batch)) as StreamRecord[]));
        events.nudge();
      });
    });
    beforeEach(() => (records = []));
    after(() => db?.close());
    const put = (Item: Record<string, unknown>, extra: Record<string, unknown> = {}) => db.client.send(new PutCommand({ TableName: spec.name, Item, ...extra }));
    /** Writes one more INSERT and waits for it: returns (and forgets) every record that came before it. */
    async function settle(): Promise<StreamRecord[]> {
      const marker = `marker-${Math.random()}`;
      await put({ connectionId: marker });
      const at = await events.until(() => {
        const i = records.findIndex((r) => r.dynamodb.Keys.connectionId.S === marker);
        return i < 0 ? undefined : i;
      }, "the marker");
      return records.splice(0, at + 1).slice(0, at);
    }

    it("records INSERT, MODIFY and REMOVE with the old and new images, and nothing for writes that change nothing", async () => {
      await put({ connectionId: "a", room: "r1" });
      await put({ connectionId: "a", room: "r1" }); // the same item again
      await db.client.send(new UpdateCommand({ TableName: spec.name, Key: { connectionId: "a" }, UpdateExpression: "SET room = :r", ExpressionAttributeValues: { ":r": "r2" } }));
      await db.client.send(new UpdateCommand({ TableName: spec.name, Key: { connectionId: "a" }, UpdateExpression: "SET room = :r", ExpressionAttributeValues: { ":r": "r2" } }));
      await put({ connectionId: "a", room: "x" }, { ConditionExpression: "attribute_not_exists(connectionId)" }).catch(() => undefined); // refused
      await db.client.send(new DeleteCommand({ TableName: spec.name, Key: { connectionId: "a" } }));
      await db.client.send(new DeleteCommand({ TableName: spec.name, Key: { connectionId: "a" } })); // already gone
      const got = await settle();
      assert.deepEqual(
        got.map((r) => [r.eventName, r.dynamodb.OldImage?.room?.S, r.dynamodb.NewImage?.room?.S]),
        [
          ["INSERT", undefined, "r1"],
          ["MODIFY", "r1", "r2"],
          ["REMOVE", "r2", undefined],
        ],
      );
      assert.deepEqual(got[1].dynamodb.Keys, { connectionId: { S: "a" } });
      assert.equal(got[0].eventSourceARN, STREAM_ARN);
      const sequences = got.map((r) => BigInt(r.dynamodb.SequenceNumber));
      assert.ok(sequences.every((s, i) => i === 0 || s > sequences[i - 1]), "sequence numbers increase");
      assert.ok(got.every((r) => r.dynamodb.SequenceNumber.length >= 21));
    });

    it("records each write of a BatchWriteItem", async () => {
      await put({ connectionId: "gone", room: "r" });
      await settle();
      await db.client.send(new BatchWriteCommand({ RequestItems: { [spec.name]: [{ PutRequest: { Item: { connectionId: "b1", room: "r" } } }, { PutRequest: { Item: { connectionId: "b2", room: "r" } } }, { DeleteRequest: { Key: { connectionId: "gone" } } }] } }));
      const got = await settle();
      assert.deepEqual(got.map((r) => `${r.eventName} ${r.dynamodb.Keys.connectionId.S}`).sort(), ["INSERT b1", "INSERT b2", "REMOVE gone"]);
    });

    it("records a transaction's changes once each, and nothing for a cancelled one (whose writes were undone)", async () => {
      await put({ connectionId: "t-held", room: "first" });
      await put({ connectionId: "t-other", room: "first" });
      await settle();
      const claim = (id: string): TransactWriteItem => ({ Put: { TableName: spec.name, Item: { connectionId: { S: id }, room: { S: "tx" } }, ConditionExpression: "attribute_not_exists(connectionId)" } });
      const update: TransactWriteItem = { Update: { TableName: spec.name, Key: { connectionId: { S: "t-other" } }, UpdateExpression: "SET room = :r", ExpressionAttributeValues: { ":r": { S: "moved" } } } };
      const check: TransactWriteItem = { ConditionCheck: { TableName: spec.name, Key: { connectionId: { S: "t-held" } }, ConditionExpression: "attribute_exists(connectionId)" } };
      await assert.rejects(db.client.send(new TransactWriteItemsCommand({ TransactItems: [claim("t-new"), update, claim("t-held")] })), /TransactionCanceledException/);
      assert.deepEqual(await settle(), [], "cancelled: its Put and Update were applied and undone, and no record shows them");
      await db.client.send(new TransactWriteItemsCommand({ TransactItems: [claim("t-new"), update, check] }));
      const got = await settle();
      assert.deepEqual(got.map((r) => [r.eventName, r.dynamodb.Keys.connectionId.S, r.dynamodb.OldImage?.room?.S, r.dynamodb.NewImage?.room?.S]), [
        ["INSERT", "t-new", undefined, "tx"],
        ["MODIFY", "t-other", "first", "moved"],
      ], "the ConditionCheck (which rewrites the item as it is) makes none");
    });

    it("records the TTL sweep's deletions as REMOVEs by the DynamoDB service, and keeps an item refreshed in time", async () => {
      const now = Math.floor(Date.now() / 1000);
      await put({ connectionId: "expired", room: "r", expiresAt: now - 10 });
      await put({ connectionId: "fresh", room: "r", expiresAt: now + 3600 });
      await settle();
      assert.equal(await db.sweepExpired(now), 1);
      await db.client.send(new DeleteCommand({ TableName: spec.name, Key: { connectionId: "fresh" } }));
      const got = await settle();
      assert.deepEqual(got.map((r) => [r.eventName, r.dynamodb.Keys.connectionId.S, r.userIdentity]), [
        ["REMOVE", "expired", TTL_IDENTITY],
        ["REMOVE", "fresh", undefined],
      ]);
      assert.deepEqual(got[0].userIdentity, { type: "Service", principalId: "dynamodb.amazonaws.com" });
    });

    it("keeps each item's records in the order of its writes, under 40 concurrent updates", async () => {
      await put({ connectionId: "counter", room: "r", n: 0 });
      await Promise.all(Array.from({ length: 40 }, () => db.client.send(new UpdateCommand({ TableName: spec.name, Key: { connectionId: "counter" }, UpdateExpression: "ADD n :one", ExpressionAttributeValues: { ":one": 1 } }))));
      const got = (await settle()).filter((r) => r.eventName === "MODIFY");
      assert.deepEqual(got.map((r) => Number(r.dynamodb.NewImage!.n.N)), Array.from({ length: 40 }, (_, i) => i + 1));
      assert.ok(got.every((r) => Number(r.dynamodb.OldImage!.n.N) === Number(r.dynamodb.NewImage!.n.N) - 1));
    });

    it("records nothing for a table without a stream", async () => {
      await db.client.send(new PutCommand({ TableName: plain.name, Item: { connectionId: "x", room: "r" } }));
      await db.client.send(new DeleteCommand({ TableName: plain.name, Key: { connectionId: "x" } }));
      assert.deepEqual(await settle(), [], "nothing before the next record of the stream table");
    });

    it("with the stack's readers given, drops in the DynamoDB process what no reader's filters take, and captures no stream nobody reads", async () => {
      const unread = { ...spec, name: "unread", create: { ...spec.create, TableName: "unread" }, stream: { arn: STREAM_ARN.replace("connections-test", "unread"), viewType: "NEW_AND_OLD_IMAGES" as const } };
      const filtered = await startDynamoDB({ tables: [spec, unread], region: REGION, sweepIntervalMs: 3_600_000, streamReaders: { [STREAM_ARN]: [PRESENCE_FILTERS] } });
      try {
        const seen: StreamRecord[] = [];
        const arrived = waiter();
        filtered.onStream((batch) => (seen.push(...batch), arrived.nudge()));
        const putIn = (TableName: string, Item: Record<string, unknown>) => filtered.client.send(new PutCommand({ TableName, Item }));
        await putIn(spec.name, { connectionId: "a", room: "r" });
        await filtered.client.send(new UpdateCommand({ TableName: spec.name, Key: { connectionId: "a" }, UpdateExpression: "SET rlCount = :n", ExpressionAttributeValues: { ":n": 1 } }));
        await putIn(spec.name, { connectionId: "place#a#0", holder: "a" });
        await putIn("unread", { connectionId: "u", room: "r" });
        await putIn(spec.name, { connectionId: "last", room: "r" });
        await arrived.until(() => (seen.some((r) => r.dynamodb.Keys.connectionId.S === "last") ? true : undefined), "the last join");
        assert.deepEqual(seen.map((r) => `${r.eventName} ${r.dynamodb.Keys.connectionId.S}`), ["INSERT a", "INSERT last"]);
        assert.deepEqual(seen.map((r) => BigInt(r.dynamodb.SequenceNumber) - BigInt(seen[0].dynamodb.SequenceNumber)), [0n, 3n], "the dropped records still took their sequence numbers");
      } finally {
        await filtered.close();
      }
    });

    describe("delivered to a function", () => {
      let dir: string;
      let runtime: LambdaRuntime;
      let delivery: StreamDelivery;
      let outcomes: InvokeOutcome[];
      let lines: string[];
      const HANDLER = `
exports.handler = async (event) => {
  for (const r of event.Records) if (r.dynamodb.NewImage && r.dynamodb.NewImage.fail) throw new Error("cannot take " + r.dynamodb.Keys.connectionId.S);
  return event;
};`;
      before(() => {
        fs.mkdirSync(path.join(PROJECT_DIR, ".local"), { recursive: true });
        dir = fs.mkdtempSync(path.join(PROJECT_DIR, ".local", "streams-test-"));
        fs.writeFileSync(path.join(dir, "__index.js"), HANDLER);
        outcomes = [];
        lines = [];
        runtime = createLambdaRuntime({
          functions: [{ name: "presence-fn", arn: "arn:aws:lambda:us-east-1:123456789012:function:presence-fn", archiveDir: dir, handler: "__index.handler", environment: {}, timeoutSeconds: 5, memoryMb: 128 }],
          baseEnv: {},
          write: (line) => lines.push(line),
        });
        delivery = startStreamDelivery({
          mappings: [mapping({ bisect: true, maxRetries: 2, filters: PRESENCE_FILTERS.map((p) => compilePattern(p, "t")) })],
          invoke: async (name, event) => {
            const outcome = await runtime.invoke(name, event);
            outcomes.push(outcome);
            events.nudge();
            return outcome;
          },
          subscribe: (listener) => db.onStream(listener),
          log: (line) => {
            lines.push(line);
            events.nudge();
          },
          retryDelayMs: () => 10,
        });
      });
      after(async () => {
        // The stack's order: stop delivery, then the instances.
        await delivery?.close(2_000);
        await runtime?.close();
        await delivery?.settled();
        fs.rmSync(dir, { recursive: true, force: true });
        assert.deepEqual(lines.filter((l) => /Runtime\.|Stream delivery stopped|stream delivery failed/.test(l)), [], "a clean stop logs no error");
      });
      const delivered = () => outcomes.filter((o) => !o.error).flatMap((o) => (o.result as { Records: StreamRecord[] }).Records);

      it("hands the function Lambda's event: the joins and leaves that pass the filters, in order, a TTL leave marked as the service's", async () => {
        const now = Math.floor(Date.now() / 1000);
        await put({ connectionId: "alice", room: "lobby", expiresAt: now + 3600 });
        await put({ connectionId: "place#alice#0", holder: "alice" }); // no room: filtered out
        await db.client.send(new UpdateCommand({ TableName: spec.name, Key: { connectionId: "alice" }, UpdateExpression: "SET rlCount = :n", ExpressionAttributeValues: { ":n": 1 } })); // MODIFY: filtered out
        await put({ connectionId: "bob", room: "lobby", expiresAt: now - 1 });
        await db.client.send(new DeleteCommand({ TableName: spec.name, Key: { connectionId: "alice" } }));
        assert.equal(await db.sweepExpired(now), 1);
        const got = await events.until(() => (delivered().length >= 4 ? delivered() : undefined), "four records at the function");
        assert.deepEqual(got.map((r) => `${r.eventName} ${r.dynamodb.Keys.connectionId.S}`), ["INSERT alice", "INSERT bob", "REMOVE alice", "REMOVE bob"]);
        assert.equal(got[2].dynamodb.OldImage!.rlCount.N, "1", "the old image as it was last written");
        assert.deepEqual(got[3].userIdentity, TTL_IDENTITY);
        assert.equal(got[2].userIdentity, undefined);
        assert.ok(lines.some((l) => /^\[presence-fn\] REPORT RequestId: /.test(l)), "invoked through the runtime, with its REPORT line");
      });

      it("retries a failing record, then drops it with a logged line naming it, and delivers the ones after it", async () => {
        outcomes.length = 0;
        await put({ connectionId: "poison", room: "lobby", fail: true });
        await put({ connectionId: "after", room: "lobby" });
        await events.until(() => (delivered().some((r) => r.dynamodb.Keys.connectionId.S === "after") ? true : undefined), "the record after the poison");
        const failures = outcomes.filter((o) => o.error);
        assert.ok(failures.length >= 3, `the first attempt and 2 retries of the poison record failed (${failures.length})`);
        assert.ok(failures.every((o) => o.error!.errorMessage === "cannot take poison"));
        assert.equal(lines.filter((l) => /^\[presence-fn\] dropped 1 stream record\(s\) after 3 attempt\(s\) \(maximumRetryAttempts 2; last error Error: cannot take poison\): INSERT \{"connectionId":\{"S":"poison"\}\}/.test(l)).length, 1);
        assert.deepEqual(delivered().map((r) => r.dynamodb.Keys.connectionId.S), ["after"]);
      });
    });
  });

  describe("in the local stack, with the program's presence mapping", function () {
    this.timeout(120_000);
    const dropRead = [{ function: "presence", dropSid: "ReadConnectionStream" }];

    it("refuses to start when the function's role may not read the stream, in CreateEventSourceMapping's words", async () => {
      await assert.rejects(startLocalStack({ stack: "dev", port: 0, log: () => undefined, policyEdits: dropRead }), (err: Error) => {
        assert.ok(err instanceof StartupError, String(err));
        assert.match(
          err.message,
          /^event source mapping presence \(function ws-chat-presence-\w+\): InvalidParameterValueException: Cannot access stream arn:aws:dynamodb:us-east-1:123456789012:table\/connections-\w+\/stream\/\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\. Please ensure the role can perform the GetRecords, GetShardIterator, DescribeStream, and ListStreams Actions on your stream in IAM\.$/,
        );
        return true;
      });
    });

    it("without IAM (--no-iam) starts all the same, invokes the function for a join, and stops delivery before the instances with no error", async () => {
      const lines: string[] = [];
      const events = waiter();
      const stack = await startLocalStack({ stack: "dev", port: 0, iam: false, policyEdits: dropRead, outputsFile: path.join(PROJECT_DIR, ".local", `streams-test-${process.pid}.json`), log: (line) => (lines.push(line), events.nudge()) });
      let client: Client | undefined;
      try {
        const [presence] = mappingSpecs(stack.program.resources);
        client = await Client.open(stack.outputs.url, { name: "streamer", room: "streams" });
        await events.until(() => lines.find((l) => l.startsWith(`[${presence.functionName}] REPORT RequestId: `)), "the presence function's invocation");
        assert.equal(stack.lambdas.invocationCounts()[presence.functionName] >= 1, true);
      } finally {
        await client?.close();
        await stack.stop();
      }
      assert.deepEqual(lines.filter((l) => /stream delivery|Stream delivery stopped|warning:/.test(l)), [], "the stop delivered what was queued and logged no error");
    });

    it("refuses to start when presence's role may not send to its failure queue, in CreateEventSourceMapping's words", async () => {
      await assert.rejects(startLocalStack({ stack: "dev", port: 0, log: () => undefined, policyEdits: [{ function: "presence", dropSid: "RecordFailedBatches" }] }), (err: Error) => {
        assert.ok(err instanceof StartupError, String(err));
        assert.match(err.message, /^event source mapping presence \(function ws-chat-presence-\w+\): InvalidParameterValueException: The function execution role does not have permissions to call SendMessage on SQS$/);
        return true;
      });
    });

    it("sends a join that presence cannot store, after its retries, to the failure queue with its place in the stream", async () => {
      const lines: string[] = [];
      const events = waiter();
      // Presence may not append to history: every attempt at the join fails (AccessDenied).
      const stack = await startLocalStack({ stack: "dev", port: 0, policyEdits: [{ function: "presence", dropSid: "AppendHistory" }], outputsFile: path.join(PROJECT_DIR, ".local", `streams-test-${process.pid}.json`), log: (line) => (lines.push(line), events.nudge()) });
      let client: Client | undefined;
      try {
        stack.queues.onMessage(() => events.nudge());
        const [presence] = mappingSpecs(stack.program.resources);
        const queue = stack.queues.specs.find((q) => q.arn === presence.onFailureArn)!;
        assert.equal(queue.name, "ws-chat-dev-presence-failures");
        client = await Client.open(stack.outputs.url, { name: "lost", room: "failures" });
        const [message] = await events.until(() => (stack.queues.messages(queue.name).length > 0 ? stack.queues.messages(queue.name) : undefined), "the failure record", 60_000);
        const failure = JSON.parse(message.body) as FailureRecord;
        assert.deepEqual([failure.requestContext.condition, failure.requestContext.approximateInvokeCount, failure.DDBStreamBatchInfo.batchSize], ["RetryAttemptsExhausted", 11, 1]);
        assert.equal(failure.requestContext.functionArn, presence.functionArn);
        assert.equal(failure.DDBStreamBatchInfo.streamArn, presence.streamArn);
        assert.match(failure.DDBStreamBatchInfo.startSequenceNumber, /^\d{21,}$/);
        assert.match(lines.find((l) => l.includes("given up"))!, new RegExp(`^\\[${presence.functionName}\\] presence batch given up after 11 attempt\\(s\\) \\(maximumRetryAttempts 10; .*\\) → ws-chat-dev-presence-failures \\(RetryAttemptsExhausted, 1 record\\(s\\)\\): INSERT`));
      } finally {
        await client?.close();
        await stack.stop();
      }
    });
  });
});
