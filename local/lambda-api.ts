/**
 * Lambda's Invoke API (`POST /2015-03-31/functions/{FunctionName}/invocations`) on the local
 * stack's port, for functions that invoke others (sendmessage hands large fan-outs to `fanout`).
 * Functions reach it through AWS_ENDPOINT_URL_LAMBDA, the SDKs' standard per-service endpoint
 * variable. Answers follow the API reference: 202 for InvocationType Event (queued), 200 with the
 * result for RequestResponse (X-Amz-Function-Error when the function failed), 204 for DryRun;
 * errors carry `x-amzn-ErrorType`. Signatures are not checked (SigV4 is accepted as sent).
 * Source: https://docs.aws.amazon.com/lambda/latest/api/API_Invoke.html
 */
import { randomUUID } from "crypto";
import type { IncomingMessage, ServerResponse } from "http";
import { guard, IamConfig } from "./iam";
import type { LambdaRuntime } from "./lambda";

/** Payload limits: 6 MB synchronous, 1 MB asynchronous (API_Invoke). */
export const MAX_SYNC_PAYLOAD_BYTES = 6 * 1024 * 1024;
export const MAX_ASYNC_PAYLOAD_BYTES = 1024 * 1024;

const PATH = /^\/2015-03-31\/functions\/([^/]+)\/invocations$/;
/** Name, ARN or partial ARN, with an optional qualifier (API_Invoke's FunctionName pattern). */
const FUNCTION_NAME = /^(?:arn:aws[a-zA-Z-]*:lambda:[a-z0-9-]+:)?(?:\d{12}:)?(?:function:)?([a-zA-Z0-9_.-]+)(?::(?:\$LATEST|[a-zA-Z0-9_-]+))?$/;

export interface LambdaApiOptions {
  runtime: LambdaRuntime;
  /** Physical names of the functions the program declared. */
  functionNames: string[];
  log?: (line: string) => void;
  /** Verify signatures and authorize `lambda:InvokeFunction` on the function's ARN (local/iam.ts). */
  iam?: IamConfig;
}

function answer(res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}) {
  res.writeHead(status, { "Content-Type": "application/json", "x-amzn-RequestId": randomUUID(), ...headers });
  res.end(body === undefined ? undefined : JSON.stringify(body));
}

function error(res: ServerResponse, status: number, type: string, message: string) {
  answer(res, status, { Type: "User", message }, { "x-amzn-ErrorType": type });
}

/** Returns true when the request was for the Invoke API (and is being answered). */
export function handleLambdaApiRequest(options: LambdaApiOptions, req: IncomingMessage, res: ServerResponse): boolean {
  const match = PATH.exec(new URL(req.url ?? "/", "http://local").pathname);
  if (!match) return false;
  const chunks: Buffer[] = [];
  let size = 0;
  req.on("data", (chunk: Buffer) => {
    size += chunk.length;
    if (size <= MAX_SYNC_PAYLOAD_BYTES) chunks.push(chunk); // a larger body is refused as 413 whatever its signature
  });
  req.on("end", () => void invoke(options, req, res, decodeURIComponent(match[1]), Buffer.concat(chunks), size));
  return true;
}

async function invoke(options: LambdaApiOptions, req: IncomingMessage, res: ServerResponse, requested: string, body: Buffer, size: number) {
  const name = FUNCTION_NAME.exec(requested)?.[1];
  if (options.iam && size <= MAX_SYNC_PAYLOAD_BYTES) {
    const config = options.iam;
    const arn = `arn:aws:lambda:${config.region}:${config.account}:function:${name ?? requested}`;
    const refused = await guard(config, { method: req.method ?? "POST", url: req.url ?? "/", headers: req.headers, body, service: "lambda" }, () => [["lambda:InvokeFunction", arn]]);
    if (refused) {
      options.log?.(`[lambda-api] Invoke ${requested} refused: ${refused.body}`);
      res.writeHead(refused.status, refused.headers);
      return res.end(refused.body);
    }
  }
  if (req.method !== "POST") return error(res, 405, "MethodNotAllowedException", `${req.method} is not allowed on invocations`);
  if (!name || !options.functionNames.includes(name)) return error(res, 404, "ResourceNotFoundException", `Function not found: ${requested}`);
  const type = String(req.headers["x-amz-invocation-type"] ?? "RequestResponse");
  if (!["RequestResponse", "Event", "DryRun"].includes(type)) return error(res, 400, "InvalidParameterValueException", `InvocationType must be RequestResponse, Event or DryRun; got ${type}`);
  const limit = type === "Event" ? MAX_ASYNC_PAYLOAD_BYTES : MAX_SYNC_PAYLOAD_BYTES;
  if (size > limit) return error(res, 413, "RequestTooLargeException", `Request must be smaller than ${limit} bytes for the ${type} invocation type`);
  let event: unknown;
  try {
    event = body.length ? JSON.parse(body.toString("utf8")) : {};
  } catch {
    return error(res, 400, "InvalidRequestContentException", "Could not parse request body into json");
  }
  if (type === "DryRun") return answer(res, 204, undefined);
  if (type === "Event") {
    options.runtime.invokeAsync(name, event);
    return answer(res, 202, undefined);
  }
  const outcome = await options.runtime.invoke(name, event);
  if (outcome.error) return answer(res, 200, outcome.error, { "X-Amz-Function-Error": "Unhandled", "X-Amz-Executed-Version": "$LATEST" });
  answer(res, 200, outcome.result ?? null, { "X-Amz-Executed-Version": "$LATEST" });
}
