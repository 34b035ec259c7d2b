/**
 * A lean, signed AWS request: Signature Version 4 over `node:crypto`, sent on a keep-alive agent.
 * Used for the calls made per recipient or per chunk (PostToConnection, Lambda Invoke) and the
 * functions' DynamoDB calls, where the SDK client's middleware stack cost about 0.5 ms of CPU per
 * call (issue 5's profile). Requests travel on http1.ts's keep-alive pools, not node:http, whose
 * per-request CPU was most of a fan-out's cost (issue 10; the figures are in http1.ts).
 *
 * Credentials come from the variables Lambda sets from the execution role (AWS_ACCESS_KEY_ID,
 * AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN), read at most once a second, not once per client: they
 * change with the instance, and a client may outlive a test's change of them. Source: https://docs.aws.amazon.com/lambda/latest/dg/configuration-envvars.html
 * (reserved environment variables). The signature follows
 * https://docs.aws.amazon.com/IAM/latest/UserGuide/create-signed-request.html, and a test checks it
 * byte for byte against the SDK's own signer (@smithy/signature-v4).
 *
 * Failures are translated here, as the SDK would: the error's `name` is the `x-amzn-ErrorType`
 * (GoneException, TooManyRequestsException, …), `$metadata.httpStatusCode` the status; a request
 * that got no answer (reset, timeout) has no status.
 */
import { createHmac, hash } from "crypto";
import { createHttp1Client, Http1Error, Http1Response } from "./http1";

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

export type AwsResponse = Http1Response;

/**
 * `body`: the answer's text, for callers that read more of an error than its type (DynamoDB's
 * `__type`); `notSent`: no answer, and the request never left whole (http1.ts), so it cannot have been acted on.
 */
export type AwsHttpError = Error & { $metadata: { httpStatusCode?: number }; body?: string; notSent?: boolean };

export type Signer = (input: SignInput) => Record<string, string>;

/**
 * A signer with its own caches: derived signing keys by secret and scope (a day, a region, a
 * service: four HMACs each), and the last body's hash (a fan-out posts one body to every member, so
 * it is hashed once, not per post). Plain objects, not Maps: the closure serializer does not keep a
 * captured Map's or Set's contents working.
 *
 * Written for the per-request path of serialized code: every global this closure uses is bound
 * once below. The closure serializer puts each function inside a `with` block, where any name not
 * declared in the function itself is looked up dynamically: about 0.25 µs per lookup on Node 22,
 * 8 times a local's cost (a closure using three globals, 2 million calls: 112 ns plain, 929 ns
 * under `with`), and this signer used about 40 per request. Names declared here are resolved
 * statically, as in any module.
 */
export function createSigner(): Signer {
  const { Object, encodeURIComponent, Date, Math } = globalThis;
  const createHmacOf = createHmac;
  // One-shot hashing, no Hash object per call (Node 20.12+; engines and the Lambda runtime are newer).
  const hashOnce = hash;
  const sha256 = (data: string) => hashOnce("sha256", data, "hex");
  const hmac = (key: Buffer | string, data: string) => createHmacOf("sha256", key).update(data, "utf8").digest();
  // RFC 3986 encoding, as SigV4 wants it (encodeURIComponent leaves !'()* alone). Every service but
  // S3 signs the path encoded twice: each segment as sent (already encoded once) is encoded again.
  const uriEscape = (text: string) => encodeURIComponent(text).replace(/[!'()*]/g, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`);
  const canonicalPath = (pathname: string) => pathname.split("/").map(uriEscape).join("/");
  const canonicalQuery = (params: URLSearchParams) =>
    [...params.entries()]
      .map(([k, v]) => [uriEscape(k), uriEscape(v)])
      .sort(([a, av], [b, bv]) => (a < b ? -1 : a > b ? 1 : av < bv ? -1 : av > bv ? 1 : 0))
      .map(([k, v]) => `${k}=${v}`)
      .join("&");
  const keys: { entries: Record<string, Buffer>; size: number } = { entries: {}, size: 0 };
  const signingKey = (secret: string, date: string, region: string, service: string): Buffer => {
    const id = `${secret}\n${date}/${region}/${service}`;
    const cached = keys.entries[id];
    if (cached) return cached;
    if (keys.size >= 8) Object.assign(keys, { entries: {}, size: 0 }); // a new day, or rotated credentials
    const key = hmac(hmac(hmac(hmac(`AWS4${secret}`, date), region), service), "aws4_request");
    keys.entries[id] = key;
    keys.size++;
    return key;
  };
  const lastBody = { text: "", hash: sha256("") };
  const bodyHash = (body: string) => {
    if (body !== lastBody.text) Object.assign(lastBody, { text: body, hash: sha256(body) });
    return lastBody.hash;
  };
  // The x-amz-date of the current second, formatted once per second (a fan-out signs hundreds a second).
  const clock = { second: NaN, amzDate: "" };
  const amzDateOf = (ms: number) => {
    const second = Math.floor(ms / 1000);
    if (second !== clock.second) {
      const iso = new Date(second * 1000).toISOString(); // 2026-12-02T01:02:03.000Z
      clock.amzDate = `${iso.slice(0, 4)}${iso.slice(5, 7)}${iso.slice(8, 13)}${iso.slice(14, 16)}${iso.slice(17, 19)}Z`;
      clock.second = second;
    }
    return clock.amzDate;
  };

  return (input) => {
    const amzDate = amzDateOf(input.now ? input.now.getTime() : Date.now());
    const date = amzDate.slice(0, 8);
    const headers: Record<string, string> = { ...input.headers, host: input.url.host, "x-amz-date": amzDate };
    if (input.credentials.sessionToken) headers["x-amz-security-token"] = input.credentials.sessionToken;
    const lower: Record<string, string> = {};
    for (const name of Object.keys(headers)) lower[name.toLowerCase()] = headers[name];
    const names = Object.keys(lower).sort();
    const signedHeaders = names.join(";");
    let canonicalHeaders = "";
    for (const name of names) canonicalHeaders += `${name}:${lower[name].trim().replace(/\s+/g, " ")}\n`;
    const query = input.url.search ? canonicalQuery(input.url.searchParams) : "";
    const canonical = `${input.method}\n${canonicalPath(input.url.pathname)}\n${query}\n${canonicalHeaders}\n${signedHeaders}\n${bodyHash(input.body)}`;
    const scope = `${date}/${input.region}/${input.service}/aws4_request`;
    const toSign = `AWS4-HMAC-SHA256\n${amzDate}\n${scope}\n${sha256(canonical)}`;
    const signature = hmac(signingKey(input.credentials.secretAccessKey, date, input.region, input.service), toSign).toString("hex");
    headers.authorization = `AWS4-HMAC-SHA256 Credential=${input.credentials.accessKeyId}/${scope}, SignedHeaders=${signedHeaders}, Signature=${signature}`;
    return headers;
  };
}

/** Returns the headers to send: the given ones plus host, x-amz-date, the token and Authorization. */
export function signRequest(input: SignInput): Record<string, string> {
  return createSigner()(input);
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

/**
 * The error for a failed request: `name` is the x-amzn-ErrorType (any suffix after ":", a URL,
 * dropped), else NetworkError or HttpNNNError; `message` is the JSON body's message when there is one.
 */
function failure(status: number | undefined, type: string | undefined, message: string, body?: string): AwsHttpError {
  let text = message;
  if (!text && body !== undefined) {
    text = body;
    try {
      const parsed = JSON.parse(body) as { message?: string; Message?: string };
      text = parsed.message ?? parsed.Message ?? body;
    } catch {
      // not JSON: keep the text
    }
  }
  const err = new Error(text || `HTTP ${status}`) as AwsHttpError;
  err.name = type?.split(":")[0] || (status === undefined ? "NetworkError" : `Http${status}Error`);
  err.$metadata = { httpStatusCode: status };
  if (body !== undefined) err.body = body;
  return err;
}

/**
 * A request function with its own keep-alive pools (http1.ts) and signer; non-2xx answers reject
 * with a translated error. Globals are bound once, as in createSigner (serialized code).
 */
export function createAwsClient(options: AwsClientOptions): AwsRequest {
  const { Buffer, String, Date, Object } = globalThis;
  const timeoutMs = options.timeoutMs ?? 5_000;
  const client = createHttp1Client({ maxSockets: options.maxSockets, timeoutMs });
  const sign = createSigner();
  // Read from the environment at most once a second: three process.env reads per request were
  // 2.4 % of a fan-out's CPU, and the variables change only with the instance (see above).
  const fromEnv = { readAt: -Infinity, value: undefined as Credentials | undefined };
  const envCredentials = () => {
    const now = Date.now();
    if (now - fromEnv.readAt >= 1_000) Object.assign(fromEnv, { readAt: now, value: credentialsFromEnv() });
    return fromEnv.value!;
  };
  const credentials = options.credentials ?? envCredentials;
  const failed = failure;
  const { service, region } = options;

  return async (method, url, body = "", extraHeaders = {}) => {
    const headers = sign({ method, url, body, headers: { ...extraHeaders, "content-length": String(Buffer.byteLength(body)) }, service, region, credentials: credentials() });
    let answer: Http1Response;
    try {
      answer = await client.request(url, method, headers, body);
    } catch (err) {
      const { code, notSent } = err as Http1Error;
      const unanswered = failed(undefined, code ?? "NetworkError", (err as Error).message);
      if (notSent) unanswered.notSent = true;
      throw unanswered;
    }
    if (answer.status >= 200 && answer.status < 300) return answer;
    throw failed(answer.status, answer.headers["x-amzn-errortype"], "", answer.body);
  };
}
