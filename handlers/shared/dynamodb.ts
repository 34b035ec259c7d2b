/**
 * A lean DynamoDB document client: it sends the same lib-dynamodb commands (GetCommand,
 * PutCommand, …) as signed JSON requests over handlers/shared/aws-http.ts, without the SDK
 * client's middleware stack. Measured in issue 10's profile of sendmessage at load, the SDK client
 * was 39% of the function's CPU (four calls per message); an UpdateItem cost about 0.9–1.5 ms of
 * CPU through it and about 0.7 ms through this, emulator included. The commands are still
 * lib-dynamodb's, so the code and its tests (aws-sdk-client-mock stubs `send`) read as before.
 *
 * What it does as the SDK does (and the SDK's behaviour it relies on, from its source and docs):
 * - marshalling with @aws-sdk/util-dynamodb, the library lib-dynamodb itself uses;
 * - the DynamoDB JSON protocol: POST /, `X-Amz-Target: DynamoDB_20120810.<Operation>`,
 *   `Content-Type: application/x-amz-json-1.0`, SigV4 for service `dynamodb`
 *   (https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/Programming.LowLevelAPI.html);
 * - errors named by the answer's `__type` (after the `#`), with `$metadata.httpStatusCode`, and
 *   `CancellationReasons` (items unmarshalled) on TransactionCanceledException;
 * - retries as the SDK's standard strategy: 3 attempts in all, for throttling, 5xx and answers
 *   that never came, exponential backoff with full jitter from 100 ms; except that a write marked
 *   `atMostOnce` is not sent again after a failure that may have applied it (docs/retries.md): it
 *   is resent only after throttling, or when the request never left whole (`notSent`, http1.ts: a
 *   refused connection, one that failed before the request was written);
 * - a ClientRequestToken on every TransactWriteItems that has none, made once per call and sent
 *   with each of its attempts, as the SDK fills the member it models as an idempotency token
 *   (@aws-sdk/core's JSON codec, `isIdempotencyToken`): DynamoDB then applies a retried
 *   transaction once ("multiple identical calls have the same effect as one single call", for 10
 *   minutes; the same token with other parameters is refused with IdempotentParameterMismatch;
 *   https://docs.aws.amazon.com/amazondynamodb/latest/APIReference/API_TransactWriteItems.html).
 *   A TransactionInProgressException (the first attempt is still running) is retried, as AWS
 *   recommends for it;
 * - a request timeout (the SDK has none by default): an answer not started within
 *   REQUEST_TIMEOUT_MS fails the attempt, so a stalled connection cannot eat a handler's budget.
 */
import { marshall, unmarshall } from "@aws-sdk/util-dynamodb";
import { randomUUID } from "crypto";
import {
  DeleteCommand,
  DynamoDBDocumentClient,
  GetCommand,
  PutCommand,
  QueryCommand,
  QueryCommandInput,
  ScanCommand,
  TransactWriteCommand,
  UpdateCommand,
} from "@aws-sdk/lib-dynamodb";
import { AwsHttpError, createAwsClient, serviceEndpoint } from "./aws-http";
import { chatError, ChatError } from "./errors";

export const REQUEST_TIMEOUT_MS = 3_000;
const ATTEMPTS = 3;
const BACKOFF_BASE_MS = 100;
// An array, not a Set: Pulumi serializes a captured Set as an object whose `has` throws (seen on 3.270).
const THROTTLING = ["ThrottlingException", "ProvisionedThroughputExceededException", "RequestLimitExceeded", "LimitExceededException"];

/** What the handlers need of a document client: `send`, with lib-dynamodb's typing. */
export type DocumentClient = Pick<DynamoDBDocumentClient, "send">;

export const isConditionFailure = (err: unknown) => (err as Error)?.name === "ConditionalCheckFailedException";
export const isCancellation = (err: unknown) => (err as Error)?.name === "TransactionCanceledException";

/** A DynamoDB failure as the stores report it: the `store_unavailable` ChatError, naming the call and table. */
export function storeUnavailable(tableName: string, operation: string, err: unknown): ChatError {
  return chatError("store_unavailable", `DynamoDB ${operation} on ${tableName} failed: ${(err as Error).name}: ${(err as Error).message}`, 500, err);
}

/** Runs DynamoDB calls on one table, translating any failure where the call is made (storeUnavailable). */
export function tableCalls(tableName: string) {
  return async <T>(operation: string, run: () => Promise<T>): Promise<T> => {
    try {
      return await run();
    } catch (err) {
      throw storeUnavailable(tableName, operation, err);
    }
  };
}

/**
 * A Query's pages in order, following LastEvaluatedKey until there is none or the caller stops
 * reading (DynamoDB cuts a page at 1 MB, or at Limit); `limit()` is each request's Limit, asked
 * just before it is sent, so a caller can pass what is left of its budget. Failures are translated
 * as every store call's are (`tableCalls`).
 */
export async function* queryPages(doc: DocumentClient, input: QueryCommandInput & { TableName: string }, limit: () => number | undefined = () => undefined) {
  const call = tableCalls(input.TableName);
  let startKey: Record<string, unknown> | undefined;
  do {
    const page = await call("Query", () => doc.send(new QueryCommand({ ...input, ExclusiveStartKey: startKey, Limit: limit() })));
    yield page;
    startKey = page.LastEvaluatedKey;
  } while (startKey);
}

type Doc = Record<string, unknown>;
type Wire = Record<string, unknown>;

/**
 * The operation a command stands for. The classes are referred to inside the function, not kept in
 * a module-level table: Pulumi's closure serializer then captures lib-dynamodb as a module (a
 * `require` of the runtime's copy) rather than trying to serialize the classes themselves.
 */
function operationOf(command: object): string | undefined {
  if (command instanceof GetCommand) return "GetItem";
  if (command instanceof PutCommand) return "PutItem";
  if (command instanceof UpdateCommand) return "UpdateItem";
  if (command instanceof DeleteCommand) return "DeleteItem";
  if (command instanceof QueryCommand) return "Query";
  if (command instanceof ScanCommand) return "Scan";
  if (command instanceof TransactWriteCommand) return "TransactWriteItems";
  return undefined;
}

const MAP_FIELDS = ["Key", "Item", "ExpressionAttributeValues", "ExclusiveStartKey"] as const;
const toWire = (value: unknown) => marshall(value as Doc, { removeUndefinedValues: true });
const fromWire = (value: unknown) => unmarshall(value as Parameters<typeof unmarshall>[0]);

/** A request's document-shaped fields in DynamoDB's typed JSON. */
function marshallInput(input: Doc): Wire {
  const out: Wire = {};
  for (const [key, value] of Object.entries(input)) {
    if (value === undefined) continue;
    if ((MAP_FIELDS as readonly string[]).includes(key)) out[key] = toWire(value);
    else if (key === "TransactItems") out[key] = (value as Doc[]).map((item) => Object.fromEntries(Object.entries(item).map(([action, body]) => [action, marshallInput(body as Doc)])));
    else out[key] = value;
  }
  return out;
}

function unmarshallOutput(output: Wire, status: number): Doc {
  const out: Doc = { ...output, $metadata: { httpStatusCode: status } };
  for (const key of ["Item", "Attributes", "LastEvaluatedKey"]) if (output[key]) out[key] = fromWire(output[key]);
  if (Array.isArray(output.Items)) out.Items = output.Items.map(fromWire);
  return out;
}

/** The SDK's shape of a DynamoDB error answer. */
function translate(err: AwsHttpError): Error {
  if (err.$metadata.httpStatusCode === undefined || !err.body) return err;
  let parsed: { __type?: string; message?: string; Message?: string; CancellationReasons?: { Item?: Wire }[] };
  try {
    parsed = JSON.parse(err.body);
  } catch {
    return err;
  }
  const name = parsed.__type?.split("#").pop() ?? err.name;
  const translated = Object.assign(new Error(parsed.message ?? parsed.Message ?? name), { name, $metadata: err.$metadata, $fault: err.$metadata.httpStatusCode! >= 500 ? "server" : "client" });
  if (parsed.CancellationReasons) {
    Object.assign(translated, { CancellationReasons: parsed.CancellationReasons.map((r) => (r.Item ? { ...r, Item: fromWire(r.Item) } : r)) });
  }
  return translated;
}

type Failure = Error & { $metadata?: { httpStatusCode?: number }; $fault?: "client" | "server"; notSent?: boolean };

/**
 * A failure after which the write may have been applied: no answer came (a timeout or a reset
 * connection, after the request was written), or a 5xx ("the request may or may not have
 * succeeded": InternalServerError in
 * https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/Programming.Errors.html).
 * Throttling is answered before anything is applied; a request that never left whole
 * (`notSent`, http1.ts) cannot have been.
 */
export const isAmbiguous = (err: unknown) => {
  const failure = err as Failure | undefined;
  const status = failure?.$metadata?.httpStatusCode;
  // An error DynamoDB answered carries its status (the SDK's exceptions built without one say `$fault: "client"`).
  const unanswered = status === undefined && failure?.$fault !== "client" && failure?.notSent !== true;
  return (unanswered || (status !== undefined && status >= 500)) && !THROTTLING.includes(failure?.name ?? "");
};

/** Nothing was applied (throttled, or never sent whole), so any write may go again; an ambiguous failure only if the write may apply twice. */
const retryable = (err: Failure, once: boolean) => {
  if (THROTTLING.includes(err.name) || err.name === "TransactionInProgressException" || err.notSent === true) return true;
  return isAmbiguous(err) && !once;
};

/**
 * Marks a write that must reach DynamoDB at most once: after a failure that may have applied it
 * (isAmbiguous) it is not sent again, and the caller decides (a budget spend reads back whether
 * it landed: connections.ts). Throttled attempts, and attempts that never left whole (a refused
 * connection), are still retried: nothing was applied.
 */
export function atMostOnce<C extends object>(command: C): C {
  return Object.assign(command, { atMostOnce: true });
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * A document client for the region and endpoint Lambda's environment gives (an endpoint variable
 * honoured as the SDK honours it: aws-http.ts's serviceEndpoint). A class with `send` on its prototype, as SDK clients have, so tests stub it the same way.
 */
export class LeanDocumentClient {
  private readonly request: ReturnType<typeof createAwsClient>;
  private readonly url: URL;

  constructor(env: NodeJS.ProcessEnv = process.env, maxSockets = 50) {
    const region = env.AWS_REGION ?? env.AWS_DEFAULT_REGION ?? "us-east-1";
    this.request = createAwsClient({ service: "dynamodb", region, maxSockets, timeoutMs: REQUEST_TIMEOUT_MS });
    this.url = new URL(`${serviceEndpoint("dynamodb", region, env)}/`);
  }

  async send(command: { input: object }): Promise<Doc> {
    const operation = operationOf(command);
    if (!operation) throw new Error(`the lean DynamoDB client does not send ${command.constructor.name}`);
    const input = command.input as Doc;
    // One token per call, the same in every attempt: a retry of an applied transaction is then a repeat DynamoDB recognises.
    const token = operation === "TransactWriteItems" && input.ClientRequestToken === undefined ? { ClientRequestToken: randomUUID() } : {};
    const body = JSON.stringify(marshallInput({ ...input, ...token }));
    const headers = { "content-type": "application/x-amz-json-1.0", "x-amz-target": `DynamoDB_20120810.${operation}` };
    const once = (command as { atMostOnce?: boolean }).atMostOnce === true;
    for (let attempt = 1; ; attempt++) {
      try {
        const answer = await this.request("POST", this.url, body, headers);
        return unmarshallOutput(answer.body ? (JSON.parse(answer.body) as Wire) : {}, answer.status);
      } catch (err) {
        const translated = translate(err as AwsHttpError);
        if (attempt >= ATTEMPTS || !retryable(translated, once)) throw translated;
        await sleep(Math.random() * BACKOFF_BASE_MS * 2 ** (attempt - 1));
      }
    }
  }
}

/** The lean client, typed as the document client the stores take. */
export function createLeanDocumentClient(env: NodeJS.ProcessEnv = process.env): DocumentClient {
  return new LeanDocumentClient(env) as unknown as DocumentClient;
}
