/**
 * A lean, signed AWS request: Signature Version 4 over `node:crypto`, sent on a keep-alive agent.
 * Used for the two calls made per recipient or per chunk (PostToConnection, Lambda Invoke),
 * where the SDK client's middleware stack cost about 0.5 ms of CPU per call (issue 5's profile);
 * this costs a few hundredths of that. Everything else goes through the SDK.
 *
 * Credentials come from the variables Lambda sets from the execution role (AWS_ACCESS_KEY_ID,
 * AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN), read per request because they rotate with the
 * instance. Source: https://docs.aws.amazon.com/lambda/latest/dg/configuration-envvars.html
 * (reserved environment variables). The signature follows
 * https://docs.aws.amazon.com/IAM/latest/UserGuide/create-signed-request.html, and a test checks it
 * byte for byte against the SDK's own signer (@smithy/signature-v4).
 *
 * Failures are translated here, as the SDK would: the error's `name` is the `x-amzn-ErrorType`
 * (GoneException, TooManyRequestsException, …), `$metadata.httpStatusCode` the status; a request
 * that got no answer (reset, timeout) has no status.
 */
import { createHash, createHmac } from "crypto";
import * as http from "http";
import * as https from "https";

export interface Credentials {
  accessKeyId: string;
  secretAccessKey: string;
  sessionToken?: string;
}

export interface SignInput {
  method: string;
  url: URL;
  headers: Record<string, string>;
  body: string;
  service: string;
  region: string;
  credentials: Credentials;
  now?: Date;
}

export interface AwsResponse {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: string;
}

/** `body`: the answer's text, for callers that read more of an error than its type (DynamoDB's `__type`). */
export type AwsHttpError = Error & { $metadata: { httpStatusCode?: number }; body?: string };

const sha256 = (data: string) => createHash("sha256").update(data, "utf8").digest("hex");
const hmac = (key: Buffer | string, data: string) => createHmac("sha256", key).update(data, "utf8").digest();

/** RFC 3986 encoding, as SigV4 wants it (encodeURIComponent leaves !'()* alone). */
/**
 * RFC 3986 encoding, as SigV4 wants it. Not named `escape`: Pulumi's closure serializer takes that
 * name for the global `escape()` and does not capture a module function of that name, so the
 * deployed code signed with the wrong encoder (`@` left as is) and every @connections call would
 * have failed on AWS with 403 InvalidSignatureException; the local stack's signature check found it.
 */
function uriEscape(text: string): string {
  return encodeURIComponent(text).replace(/[!'()*]/g, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`);
}

/**
 * Every service but S3 signs the path encoded twice: each segment of the path as sent (already
 * encoded once) is encoded again.
 */
function canonicalPath(pathname: string): string {
  return pathname.split("/").map(uriEscape).join("/");
}

function canonicalQuery(params: URLSearchParams): string {
  return [...params.entries()]
    .map(([k, v]) => [uriEscape(k), uriEscape(v)])
    .sort(([a, av], [b, bv]) => (a < b ? -1 : a > b ? 1 : av < bv ? -1 : av > bv ? 1 : 0))
    .map(([k, v]) => `${k}=${v}`)
    .join("&");
}

/**
 * Derived signing keys by secret and scope (a day, a region, a service). One entry per service a
 * function calls (sendmessage signs for execute-api and dynamodb alternately: a single cached key
 * was derived again, four HMACs, on nearly every request). A plain object, not a Map: Pulumi's
 * closure serializer does not keep a captured Map's or Set's contents working.
 */
const signingKeys: { entries: Record<string, Buffer>; size: number } = { entries: {}, size: 0 };

function signingKey(secret: string, date: string, region: string, service: string): Buffer {
  const id = `${secret}\n${date}/${region}/${service}`;
  const cached = signingKeys.entries[id];
  if (cached) return cached;
  if (signingKeys.size >= 8) Object.assign(signingKeys, { entries: {}, size: 0 }); // a new day, or rotated credentials
  const key = hmac(hmac(hmac(hmac(`AWS4${secret}`, date), region), service), "aws4_request");
  signingKeys.entries[id] = key;
  signingKeys.size++;
  return key;
}

/** The last body hashed: a fan-out posts one body to every member, so it is hashed once, not per post. */
const lastBody = { text: "", hash: sha256("") };

function bodyHash(body: string): string {
  if (body !== lastBody.text) Object.assign(lastBody, { text: body, hash: sha256(body) });
  return lastBody.hash;
}

/** Returns the headers to send: the given ones plus host, x-amz-date, the token and Authorization. */
export function signRequest(input: SignInput): Record<string, string> {
  const amzDate = (input.now ?? new Date()).toISOString().replace(/[:-]|\.\d{3}/g, "");
  const date = amzDate.slice(0, 8);
  const headers: Record<string, string> = { ...input.headers, host: input.url.host, "x-amz-date": amzDate };
  if (input.credentials.sessionToken) headers["x-amz-security-token"] = input.credentials.sessionToken;
  const names = Object.keys(headers)
    .map((name) => name.toLowerCase())
    .sort();
  const lower = Object.fromEntries(Object.entries(headers).map(([k, v]) => [k.toLowerCase(), v]));
  const signedHeaders = names.join(";");
  const canonical = [
    input.method,
    canonicalPath(input.url.pathname),
    canonicalQuery(input.url.searchParams),
    names.map((name) => `${name}:${lower[name].trim().replace(/\s+/g, " ")}\n`).join(""),
    signedHeaders,
    bodyHash(input.body),
  ].join("\n");
  const scope = `${date}/${input.region}/${input.service}/aws4_request`;
  const toSign = ["AWS4-HMAC-SHA256", amzDate, scope, sha256(canonical)].join("\n");
  const signature = hmac(signingKey(input.credentials.secretAccessKey, date, input.region, input.service), toSign).toString("hex");
  return {
    ...headers,
    authorization: `AWS4-HMAC-SHA256 Credential=${input.credentials.accessKeyId}/${scope}, SignedHeaders=${signedHeaders}, Signature=${signature}`,
  };
}

export function credentialsFromEnv(env: NodeJS.ProcessEnv = process.env): Credentials {
  const accessKeyId = env.AWS_ACCESS_KEY_ID;
  const secretAccessKey = env.AWS_SECRET_ACCESS_KEY;
  if (!accessKeyId || !secretAccessKey) throw new Error("AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY are not set (Lambda sets them from the execution role)");
  return { accessKeyId, secretAccessKey, ...(env.AWS_SESSION_TOKEN ? { sessionToken: env.AWS_SESSION_TOKEN } : {}) };
}

/**
 * A service's endpoint as every AWS SDK resolves it: AWS_ENDPOINT_URL_<SERVICE> (the service id in
 * upper case, spaces as underscores), then AWS_ENDPOINT_URL, then the public regional endpoint.
 * Lambda sets neither, so on AWS this is always the regional endpoint.
 * Source: https://docs.aws.amazon.com/sdkref/latest/guide/feature-ss-endpoints.html
 */
export function serviceEndpoint(service: string, region: string, env: NodeJS.ProcessEnv = process.env): string {
  const configured = env[`AWS_ENDPOINT_URL_${service.toUpperCase().replace(/[ -]/g, "_")}`] ?? env.AWS_ENDPOINT_URL;
  return (configured ?? `https://${service}.${region}.amazonaws.com`).replace(/\/+$/, "");
}

export interface AwsClientOptions {
  service: string;
  region: string;
  /** Bounds the keep-alive pool; set it to the caller's concurrency so no request waits for a socket. */
  maxSockets: number;
  /** No answer within this time: the request is abandoned (a failure without a status). */
  timeoutMs?: number;
  credentials?: () => Credentials;
}

export type AwsRequest = (method: string, url: URL, body?: string, headers?: Record<string, string>) => Promise<AwsResponse>;

function failure(status: number | undefined, type: string | undefined, message: string, body?: string): AwsHttpError {
  const err = new Error(message) as AwsHttpError;
  err.name = type ?? (status === undefined ? "NetworkError" : `Http${status}Error`);
  err.$metadata = { httpStatusCode: status };
  if (body !== undefined) err.body = body;
  return err;
}

/** A request function with its own keep-alive pools; non-2xx answers reject with a translated error. */
export function createAwsClient(options: AwsClientOptions): AwsRequest {
  const agents = {
    "https:": new https.Agent({ keepAlive: true, maxSockets: options.maxSockets }),
    "http:": new http.Agent({ keepAlive: true, maxSockets: options.maxSockets }),
  };
  const timeoutMs = options.timeoutMs ?? 5_000;
  const credentials = options.credentials ?? (() => credentialsFromEnv());

  return (method, url, body = "", extraHeaders = {}) => {
    const headers = signRequest({
      method,
      url,
      body,
      headers: { ...extraHeaders, "content-length": String(Buffer.byteLength(body)) },
      service: options.service,
      region: options.region,
      credentials: credentials(),
    });
    const send = url.protocol === "https:" ? https.request : http.request;
    return new Promise<AwsResponse>((resolve, reject) => {
      const req = send(url, { method, headers, agent: agents[url.protocol as "https:" | "http:"], timeout: timeoutMs }, (res) => {
        const chunks: Buffer[] = [];
        res.on("data", (chunk: Buffer) => chunks.push(chunk));
        res.on("error", (err) => reject(failure(undefined, undefined, `response failed: ${err.message}`)));
        res.on("end", () => {
          const text = Buffer.concat(chunks).toString("utf8");
          const status = res.statusCode ?? 0;
          if (status >= 200 && status < 300) return resolve({ status, headers: res.headers, body: text });
          // x-amzn-ErrorType may carry a suffix after ":" (a URL); the name is before it.
          const type = String(res.headers["x-amzn-errortype"] ?? "").split(":")[0] || undefined;
          let message = text;
          try {
            const parsed = JSON.parse(text) as { message?: string; Message?: string };
            message = parsed.message ?? parsed.Message ?? text;
          } catch {
            // not JSON: keep the text
          }
          reject(failure(status, type, message || `HTTP ${status}`, text));
        });
      });
      req.on("timeout", () => req.destroy(failure(undefined, "TimeoutError", `no answer from ${url.host} in ${timeoutMs} ms`)));
      req.on("error", (err) => reject((err as AwsHttpError).$metadata ? err : failure(undefined, (err as NodeJS.ErrnoException).code ?? "NetworkError", err.message)));
      req.end(body);
    });
  };
}
