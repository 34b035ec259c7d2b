/**
 * Lambda event source mappings on DynamoDB streams, as Lambda's stream poller runs them: the
 * records of each mapped table's stream (captured in the DynamoDB process, stream-capture.ts)
 * are filtered, batched and handed to the function through the local Lambda runtime.
 *
 * What is emulated, per aws.lambda.EventSourceMapping (sources: "Using AWS Lambda with Amazon
 * DynamoDB", https://docs.aws.amazon.com/lambda/latest/dg/with-ddb.html; its parameters,
 * …/services-ddb-params.html; its error handling, …/services-dynamodb-errors.html):
 * - StartingPosition LATEST: only changes made after the stack started (TRIM_HORIZON reads the
 *   same here: nothing older is kept); `enabled: false` delivers nothing.
 * - filterCriteria (event-filter.ts): a record no filter matches is dropped before batching (the
 *   DynamoDB process already drops what no mapping takes, `streamReaders`, to spare the IPC).
 * - batchSize (default 100) and maximumBatchingWindowInSeconds (default 0: send as soon as there
 *   are records; otherwise wait up to that long for a full batch).
 * - Shards: each table's stream is one shard here. A small table on AWS has one partition, so one
 *   open shard, and Lambda processes a shard's records in order, one batch at a time
 *   (ParallelizationFactor 1): so locally every record of a table reaches the function in the
 *   order it was written, and a failing batch holds the records behind it, as it holds its shard
 *   on AWS. Mappings, and tables, are independent of each other and of all other work.
 * - Errors: a batch whose invocation fails (the function threw, timed out or crashed) is retried
 *   whole until it succeeds, or its records are older than maximumRecordAgeInSeconds (and never
 *   older than the stream's 24 h retention), or it has been retried maximumRetryAttempts times
 *   (-1, the default, is no limit). With bisectBatchOnFunctionError a failed batch of more than
 *   one record is split in two halves, first half first, instead of being retried; "splitting a
 *   batch does not count towards the retry quota", so the retries are counted on the batch of one
 *   record that still fails. Records given up go on, and the next batch after them.
 *   Lambda's delays between retries are not documented; here they are 100 ms, doubling, at most
 *   1 s (`retryDelayMs`).
 * - On-failure destination (destinationConfig.onFailure, an SQS queue the program declares,
 *   local/sqs.ts): a batch given up is sent there as Lambda's invocation record (`failureRecord`:
 *   the shard, first and last sequence numbers, the condition RetryAttemptsExhausted or
 *   RecordAgeExceeded; not the records themselves), with one line naming the queue. Without one,
 *   the records are dropped (Lambda discards them) with one line naming them.
 * - IAM: Lambda reads the stream, and sends to the destination, with the function's execution
 *   role, and CreateEventSourceMapping refuses a role that may not (`streamAccessRefusal`,
 *   `destinationAccessRefusal`), so the local stack refuses to start.
 *
 * Not emulated (refused at start when declared): SNS, S3 and Kafka destinations,
 * ReportBatchItemFailures, tumbling windows, ParallelizationFactor above 1, StartingPosition
 * AT_TIMESTAMP, and sources other than DynamoDB streams (SQS, Kinesis, Kafka).
 */
import { createHash, randomUUID } from "crypto";
import { idleWatch } from "./idle";
import { compilePattern, passesFilters, Pattern } from "./event-filter";
import { policyAllows, Principal } from "./iam";
import type { InvokeOutcome } from "./lambda";
import type { RecordedResource } from "./program";
import { QUEUE } from "./sqs";
import type { StreamRecord } from "./stream-capture";

export const EVENT_SOURCE_MAPPING = "aws:lambda/eventSourceMapping:EventSourceMapping";

/** One mapping, as the poller runs it. */
export interface MappingSpec {
  /** The Pulumi resource name, for messages. */
  name: string;
  functionName: string;
  functionArn: string;
  streamArn: string;
  batchSize: number;
  batchingWindowMs: number;
  bisect: boolean;
  /** -1: no limit. */
  maxRetries: number;
  /** In seconds; at most the stream's retention. */
  maxRecordAgeSeconds: number;
  filters: Pattern[];
  /** The same filters as the program wrote them (JSON), for the DynamoDB process (`streamReaders`). */
  filterPatterns: string[];
  enabled: boolean;
  /** destinationConfig.onFailure: the ARN of the queue a batch given up is recorded in. */
  onFailureArn?: string;
}

/** DynamoDB Streams keeps records 24 hours (Streams.html). */
const STREAM_RETENTION_SECONDS = 86_400;

interface MappingInputs {
  eventSourceArn?: string;
  functionName?: string;
  startingPosition?: string;
  batchSize?: number;
  maximumBatchingWindowInSeconds?: number;
  bisectBatchOnFunctionError?: boolean;
  maximumRetryAttempts?: number;
  maximumRecordAgeInSeconds?: number;
  filterCriteria?: { filters?: { pattern?: string }[] };
  enabled?: boolean;
  parallelizationFactor?: number;
  destinationConfig?: { onFailure?: { destinationArn?: string } };
  functionResponseTypes?: string[];
  tumblingWindowInSeconds?: number;
}

/** The first setting of a mapping the local stack does not emulate, as a sentence; undefined when none. */
function unsupported(inputs: MappingInputs, queueArns: string[]): string | undefined {
  const destination = inputs.destinationConfig?.onFailure?.destinationArn;
  if (destination !== undefined && !queueArns.includes(destination)) return `the on-failure destination ${destination} is not emulated (an SQS queue the program declares only)`;
  if (inputs.functionResponseTypes?.length) return `functionResponseTypes ${inputs.functionResponseTypes.join(", ")} is not emulated`;
  if (inputs.tumblingWindowInSeconds) return "tumblingWindowInSeconds is not emulated";
  if ((inputs.parallelizationFactor ?? 1) !== 1) return "a parallelizationFactor above 1 is not emulated";
  if (!["LATEST", "TRIM_HORIZON"].includes(inputs.startingPosition ?? "")) return `startingPosition ${inputs.startingPosition ?? "(none)"} is not emulated (LATEST or TRIM_HORIZON)`;
  return undefined;
}

/**
 * The program's event source mappings, checked: each reads the stream of a table the program
 * declares and invokes one of its functions, with only settings emulated here. Throws otherwise.
 */
export function mappingSpecs(resources: RecordedResource[]): MappingSpec[] {
  const tables = resources.filter((r) => r.type === "aws:dynamodb/table:Table");
  const functions = resources.filter((r) => r.type === "aws:lambda/function:Function");
  const queueArns = resources.filter((r) => r.type === QUEUE).map((r) => String(r.state.arn));
  return resources
    .filter((r) => r.type === EVENT_SOURCE_MAPPING)
    .map((r) => {
      const inputs = r.inputs as MappingInputs;
      const where = `event source mapping ${r.name}`;
      const table = tables.find((t) => t.state.streamArn && t.state.streamArn === inputs.eventSourceArn);
      if (!table) throw new Error(`${where}: ${inputs.eventSourceArn ?? "no eventSourceArn"} is not the stream of a table the program declares (only DynamoDB streams are emulated)`);
      const fn = functions.find((f) => [f.state.name, f.state.arn].includes(inputs.functionName));
      if (!fn) throw new Error(`${where}: functionName ${inputs.functionName} is not a function the program declares`);
      const refused = unsupported(inputs, queueArns);
      if (refused) throw new Error(`${where}: ${refused}`);
      const maxAge = inputs.maximumRecordAgeInSeconds ?? -1;
      const filterPatterns = (inputs.filterCriteria?.filters ?? []).map((f) => String(f.pattern ?? ""));
      return {
        name: r.name,
        functionName: String(fn.state.name),
        functionArn: String(fn.state.arn),
        streamArn: String(inputs.eventSourceArn),
        batchSize: inputs.batchSize ?? 100,
        batchingWindowMs: (inputs.maximumBatchingWindowInSeconds ?? 0) * 1000,
        bisect: inputs.bisectBatchOnFunctionError ?? false,
        maxRetries: inputs.maximumRetryAttempts ?? -1,
        maxRecordAgeSeconds: maxAge < 0 ? STREAM_RETENTION_SECONDS : Math.min(maxAge, STREAM_RETENTION_SECONDS),
        filters: filterPatterns.map((pattern, i) => compilePattern(pattern, `${where}, filter ${i + 1}`)),
        filterPatterns,
        enabled: inputs.enabled ?? true,
        ...(inputs.destinationConfig?.onFailure?.destinationArn ? { onFailureArn: inputs.destinationConfig.onFailure.destinationArn } : {}),
      };
    });
}

/**
 * Who reads each stream, for the DynamoDB process (local/dynamodb.ts, `streamReaders`): per stream
 * ARN, each enabled mapping's filters, so that records no mapping takes never leave that process.
 */
export function streamReaders(mappings: MappingSpec[]): Record<string, string[][]> {
  const readers: Record<string, string[][]> = {};
  for (const m of mappings.filter((m) => m.enabled)) (readers[m.streamArn] ??= []).push(m.filterPatterns);
  return readers;
}

/** What Lambda's poller does with the stream, with the function's execution role. */
export const STREAM_READ_ACTIONS = ["dynamodb:GetRecords", "dynamodb:GetShardIterator", "dynamodb:DescribeStream", "dynamodb:ListStreams"];

/**
 * CreateEventSourceMapping's refusal when the function's role may not read the stream, in AWS's
 * words (InvalidParameterValueException; quoted in aws-samples/lambda-refarch-webapp issue 7:
 * "Cannot access stream arn:aws:dynamodb:…:table/VoteApp/stream/2016-08-03T08:24:05.612. Please
 * ensure the role can perform the GetRecords, GetShardIterator, DescribeStream, and ListStreams
 * Actions on your stream in IAM."). Undefined when the role allows all four on the stream ARN.
 */
export function streamAccessRefusal(mapping: MappingSpec, principals: Principal[]): string | undefined {
  const principal = principals.find((p) => p.functionName === mapping.functionName);
  const document = { Statement: principal?.statements ?? [] };
  if (STREAM_READ_ACTIONS.every((action) => policyAllows(document, action, mapping.streamArn))) return undefined;
  return (
    `InvalidParameterValueException: Cannot access stream ${mapping.streamArn}. Please ensure the role can perform the ` +
    `GetRecords, GetShardIterator, DescribeStream, and ListStreams Actions on your stream in IAM.`
  );
}

/**
 * CreateEventSourceMapping's refusal when the function's role may not send to the on-failure queue,
 * as AWS words it (InvalidParameterValueException). The text is as users report it; AWS's pages
 * name the permission (with-ddb.html, "Execution role permissions": sqs:SendMessage) but not the
 * message. Undefined when the mapping has no destination or the role may send to it.
 */
export function destinationAccessRefusal(mapping: MappingSpec, principals: Principal[]): string | undefined {
  if (!mapping.onFailureArn) return undefined;
  const principal = principals.find((p) => p.functionName === mapping.functionName);
  if (policyAllows({ Statement: principal?.statements ?? [] }, "sqs:SendMessage", mapping.onFailureArn)) return undefined;
  return "InvalidParameterValueException: The function execution role does not have permissions to call SendMessage on SQS";
}

// --- Failure records ----------------------------------------------------------------------------

/** Why a batch was given up, in Lambda's words. */
export type FailureCondition = "RetryAttemptsExhausted" | "RecordAgeExceeded";

/**
 * What Lambda sends the on-failure destination for a DynamoDB stream batch, field for field as
 * AWS's example invocation record (https://docs.aws.amazon.com/lambda/latest/dg/services-dynamodb-errors.html).
 */
export interface FailureRecord {
  requestContext: { requestId: string; functionArn: string; condition: FailureCondition; approximateInvokeCount: number };
  /** The last invocation's answer; absent when the batch was never invoked (records too old at once: our assumption, AWS's page shows only a failed invocation). */
  responseContext?: { statusCode: number; executedVersion: string; functionError: string };
  version: "1.0";
  timestamp: string;
  DDBStreamBatchInfo: {
    shardId: string;
    startSequenceNumber: string;
    endSequenceNumber: string;
    approximateArrivalOfFirstRecord: string;
    approximateArrivalOfLastRecord: string;
    batchSize: number;
    streamArn: string;
  };
}

/** The one shard of a stream here, named as DynamoDB names shards (`shardId-` 20 digits `-` 8 hex), stable per stream. */
export function shardIdOf(streamArn: string): string {
  const hash = createHash("sha256").update(streamArn).digest("hex");
  return `shardId-${BigInt(`0x${hash.slice(0, 15)}`).toString().padStart(20, "0").slice(-20)}-${hash.slice(56, 64)}`;
}

/** Epoch seconds as in the record's arrival times: ISO 8601 to the second. */
const isoSeconds = (seconds: number) => new Date(seconds * 1000).toISOString().replace(/\.\d{3}Z$/, "Z");

export function failureRecord(mapping: MappingSpec, records: StreamRecord[], condition: FailureCondition, invocations: number, invoked: boolean): FailureRecord {
  const first = records[0];
  const last = records[records.length - 1];
  return {
    requestContext: { requestId: randomUUID(), functionArn: mapping.functionArn, condition, approximateInvokeCount: invocations },
    // A function error (thrown, timed out, crashed): Lambda answered 200 with X-Amz-Function-Error "Unhandled".
    ...(invoked ? { responseContext: { statusCode: 200, executedVersion: "$LATEST", functionError: "Unhandled" } } : {}),
    version: "1.0",
    timestamp: new Date().toISOString(),
    DDBStreamBatchInfo: {
      shardId: shardIdOf(mapping.streamArn),
      startSequenceNumber: first.dynamodb.SequenceNumber,
      endSequenceNumber: last.dynamodb.SequenceNumber,
      approximateArrivalOfFirstRecord: isoSeconds(first.dynamodb.ApproximateCreationDateTime),
      approximateArrivalOfLastRecord: isoSeconds(last.dynamodb.ApproximateCreationDateTime),
      batchSize: records.length,
      streamArn: mapping.streamArn,
    },
  };
}

// --- Delivery -----------------------------------------------------------------------------------

export interface StreamDeliveryOptions {
  mappings: MappingSpec[];
  /** Runs the function (local/lambda.ts's `invoke`). */
  invoke(functionName: string, event: { Records: StreamRecord[] }): Promise<InvokeOutcome>;
  /** Subscribes to every stream record (local/dynamodb.ts's `onStream`); returns the unsubscribe. */
  subscribe(listener: (records: StreamRecord[]) => void): () => void;
  log(line: string): void;
  /** Sends a failure record to the mapping's on-failure queue (local/sqs.ts's `send`); returns the queue's name. */
  sendFailureRecord?(queueArn: string, record: FailureRecord): string;
  /** Delay before retry k (1-based) of a failed batch; default 100 ms doubling, at most 1 s. */
  retryDelayMs?: (retry: number) => number;
}

export interface StreamDelivery {
  /** Records waiting or being delivered, over every mapping. */
  pending(): number;
  /** Resolves once nothing is waiting or being delivered, or false after `timeoutMs`. */
  idle(timeoutMs: number): Promise<boolean>;
  /**
   * The stop: waits up to `drainMs` for what is queued, then starts no more invocations (one
   * still running ends when the Lambda runtime stops). Records left are counted in one line.
   */
  close(drainMs: number): Promise<void>;
  /** Resolves once every mapping's loop has ended (after close, and the runtime's stop). */
  settled(): Promise<void>;
}

/** A stream's records as its mapping will send them: the ids a log line names a dropped record by. */
const describe = (records: StreamRecord[]) =>
  records.map((r) => `${r.eventName} ${JSON.stringify(r.dynamodb.Keys)} (SequenceNumber ${r.dynamodb.SequenceNumber}, eventID ${r.eventID})`).join("; ");

/** What every shard shares: the stop, and the pause that the stop cuts short. */
interface DeliveryContext {
  options: StreamDeliveryOptions;
  closed(): boolean;
  /** Waits `ms`, or less if the stop comes first. */
  pause(ms: number): Promise<void>;
  retryDelay(retry: number): number;
  /** A shard has nothing left to do. */
  drained(): void;
}

/** One mapping's shard: its queue, delivered one batch at a time, in order. */
function createShard(mapping: MappingSpec, context: DeliveryContext) {
  const { options } = context;
  const queue: StreamRecord[] = [];
  let inFlight = 0;
  let running: Promise<void> | undefined;
  let full: (() => void) | undefined;

  /** Records given up: sent as a failure record to the on-failure queue if the mapping has one, else dropped; one line either way. */
  function giveUp(records: StreamRecord[], condition: FailureCondition, invocations: number, why: string) {
    if (!mapping.onFailureArn) {
      options.log(`[${mapping.functionName}] dropped ${records.length} stream record(s) ${why}: ${describe(records)}`);
      return;
    }
    const queue = options.sendFailureRecord!(mapping.onFailureArn, failureRecord(mapping, records, condition, invocations, invocations > 0));
    options.log(`[${mapping.functionName}] ${mapping.name} batch given up ${why} → ${queue} (${condition}, ${records.length} record(s)): ${describe(records)}`);
  }

  /** One batch, retried or bisected as the mapping says; resolves when it is delivered or given up. */
  async function deliver(batch: StreamRecord[], retries: number): Promise<void> {
    const oldest = Math.floor(Date.now() / 1000) - mapping.maxRecordAgeSeconds;
    const expired = batch.filter((r) => r.dynamodb.ApproximateCreationDateTime < oldest);
    if (expired.length) giveUp(expired, "RecordAgeExceeded", retries, `older than maximumRecordAgeInSeconds (${mapping.maxRecordAgeSeconds} s)`);
    const records = batch.filter((r) => !expired.includes(r));
    if (records.length === 0 || context.closed()) return;
    const outcome = await options.invoke(mapping.functionName, { Records: records });
    if (!outcome.error || outcome.cancelled || context.closed()) return;
    if (mapping.bisect && records.length > 1) {
      const half = Math.ceil(records.length / 2);
      await deliver(records.slice(0, half), retries);
      return deliver(records.slice(half), retries);
    }
    if (mapping.maxRetries >= 0 && retries >= mapping.maxRetries) {
      const why = `after ${retries + 1} attempt(s) (maximumRetryAttempts ${mapping.maxRetries}; last error ${outcome.error.errorType}: ${outcome.error.errorMessage})`;
      giveUp(records, "RetryAttemptsExhausted", retries + 1, why);
      return;
    }
    await context.pause(context.retryDelay(retries + 1));
    return deliver(records, retries + 1);
  }

  async function run(): Promise<void> {
    while (queue.length > 0 && !context.closed()) {
      if (mapping.batchingWindowMs > 0 && queue.length < mapping.batchSize) {
        await Promise.race([context.pause(mapping.batchingWindowMs), new Promise<void>((resolve) => (full = resolve))]);
        full = undefined;
      }
      const batch = queue.splice(0, mapping.batchSize);
      inFlight = batch.length;
      await deliver(batch, 0);
      inFlight = 0;
    }
  }

  function kick() {
    if (running || queue.length === 0 || context.closed()) return;
    running = run()
      .catch((err: Error) => options.log(`[${mapping.functionName}] stream delivery failed: ${err.message}`))
      .finally(() => {
        running = undefined;
        kick();
        if (!running) context.drained();
      });
  }

  return {
    pending: () => queue.length + inFlight,
    /** Takes the records of this mapping's stream that pass its filters (the others are dropped, as Lambda does). */
    push(records: StreamRecord[]) {
      for (const r of records) if (r.eventSourceARN === mapping.streamArn && passesFilters(mapping.filters, r)) queue.push(r);
      if (queue.length >= mapping.batchSize) full?.();
      kick();
    },
    settled: () => running ?? Promise.resolve(),
  };
}

export function startStreamDelivery(options: StreamDeliveryOptions): StreamDelivery {
  const unsent = options.mappings.find((m) => m.onFailureArn && !options.sendFailureRecord);
  if (unsent) throw new Error(`event source mapping ${unsent.name}: it has an on-failure destination, but no queues were given to send to`);
  let closed = false;
  const wakers = new Set<() => void>();
  const idleness = idleWatch();
  const context: DeliveryContext = {
    options,
    closed: () => closed,
    pause: (ms) =>
      new Promise<void>((resolve) => {
        const done = () => {
          clearTimeout(timer);
          wakers.delete(done);
          resolve();
        };
        const timer = setTimeout(done, ms);
        wakers.add(done);
      }),
    retryDelay: options.retryDelayMs ?? ((retry: number) => Math.min(1000, 100 * 2 ** (retry - 1))),
    drained: () => {
      if (pending() === 0) idleness.idle();
    },
  };
  const shards = options.mappings.filter((m) => m.enabled).map((m) => createShard(m, context));
  const pending = () => shards.reduce((n, s) => n + s.pending(), 0);
  const unsubscribe = options.subscribe((records) => {
    if (!closed) for (const s of shards) s.push(records);
  });

  function idle(timeoutMs: number): Promise<boolean> {
    return idleness.wait(pending() === 0, timeoutMs);
  }

  return {
    pending,
    idle,
    async close(drainMs) {
      if (closed) return;
      await idle(drainMs);
      closed = true;
      unsubscribe();
      for (const wake of [...wakers]) wake();
      const left = pending();
      if (left > 0) options.log(`Stream delivery stopped with ${left} record(s) not delivered.`);
    },
    settled: async () => void (await Promise.all(shards.map((s) => s.settled()))),
  };
}
