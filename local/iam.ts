/**
 * IAM for the local stack: every function instance gets its own credentials, every request to the
 * local DynamoDB, @connections and Invoke APIs must carry a valid SigV4 signature made with them,
 * and the caller's role policy, as the program declared it, must allow the action on the resource.
 * Denials answer as each service does (status, error type, message), so a missing statement fails
 * locally the way it fails on AWS.
 *
 * The evaluator is ours, for the subset the program uses: Allow and Deny statements, Action and
 * Resource with `*` and `?` wildcards, no Condition, no NotAction or NotResource (a statement with
 * any of those refuses to load rather than being misjudged). The one maintained library found,
 * @cloud-copilot/iam-simulate, is AGPL-3.0, which this MIT project cannot take.
 *
 * Signatures are recomputed with the SDK's own canonical forms (@smithy/signature-v4: its canonical
 * headers, path, query and request), never our handlers' signer (handlers/shared/aws-http.ts), so
 * a bug in our signer fails here as it would on AWS.
 *
 * Every request is verified, at about 5 µs each: a room of 100 at 50 messages a second is 5,000
 * signed posts a second, and SignatureV4.sign per request (a clone of the request, a signing key
 * looked up through a hash of the credentials, a dozen awaits) plus a RegExp built per pattern per
 * decision took 40 % of the stack process's CPU and collapsed that room (issue 21, finding 9). So
 * what does not depend on the request is kept: each issued key's secret and token, the signing key
 * per (secret, day, region, service) as its two HMAC pad blocks, the SDK's canonical form of each
 * request target and header value, the last body's hash, and each role's decisions per (action,
 * resource); what does (the canonical request, its SHA-256, the HMAC of the string to sign) is
 * computed every time, with one-shot hashes (see HmacKey).
 *
 * The operator's credential, access key `local` with secret `local` (what tests, benchmarks and
 * tools use against the local endpoints), is allowed everything; functions never get it.
 */
import { getCanonicalHeaders, getCanonicalQuery, SignatureV4Base } from "@smithy/signature-v4";
import type { HttpRequest } from "@smithy/types";
import { createHash, createHmac, Hash, hash, Hmac, randomBytes } from "crypto";
import type { IncomingHttpHeaders } from "http";

/** A map that forgets everything when it reaches its size: the caches below hold a few hundred keys in use. */
class BoundedCache<V> extends Map<string, V> {
  constructor(private readonly limit: number) {
    super();
  }
  remember(key: string, value: V): V {
    if (this.size >= this.limit) this.clear();
    this.set(key, value);
    return value;
  }
}

const patterns = new BoundedCache<RegExp>(4096);

/** Does an IAM-style pattern (`*` any run, `?` one character) match this value? */
export function arnMatches(pattern: string, value: string): boolean {
  const compiled =
    patterns.get(pattern) ??
    patterns.remember(pattern, new RegExp(`^${pattern.split("").map((c) => (c === "*" ? ".*" : c === "?" ? "." : c.replace(/[.+^${}()|[\]\\]/g, "\\$&"))).join("")}$`));
  return compiled.test(value);
}

export interface PolicyStatement {
  Sid?: string;
  Effect?: string;
  Action?: string | string[];
  Resource?: string | string[];
  [other: string]: unknown;
}

const list = (v: string | string[] | undefined) => (v === undefined ? [] : Array.isArray(v) ? v : [v]);

/** Allowed when some statement allows the action on the resource and none denies it. */
export function policyAllows(document: { Statement?: PolicyStatement | PolicyStatement[] } | undefined, action: string, resource: string): boolean {
  const statements = Array.isArray(document?.Statement) ? document!.Statement : document?.Statement ? [document.Statement] : [];
  const matches = (s: PolicyStatement) =>
    list(s.Action).some((a) => arnMatches(a.toLowerCase(), action.toLowerCase())) && list(s.Resource).some((r) => arnMatches(r, resource));
  return !statements.some((s) => s.Effect === "Deny" && matches(s)) && statements.some((s) => s.Effect === "Allow" && matches(s));
}

/** Refuses a statement the evaluator would misjudge. */
export function checkSupported(statement: PolicyStatement, where: string): void {
  const unsupported = Object.keys(statement).filter((k) => !["Sid", "Effect", "Action", "Resource"].includes(k));
  if (unsupported.length > 0) throw new Error(`${where}: the local IAM evaluator does not support ${unsupported.join(", ")} in a policy statement`);
}

/** A function's identity: its role and the statements of the role's inline policies. */
export interface Principal {
  functionName: string;
  roleName: string;
  statements: PolicyStatement[];
}

export interface IamConfig {
  /** Derives every instance's secret and session token: nothing needs sharing between processes. */
  secret: string;
  account: string;
  region: string;
  principals: Principal[];
}

export interface Credentials {
  accessKeyId: string;
  secretAccessKey: string;
  sessionToken: string;
}

export const OPERATOR_KEY = "local";
const KEY_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

export function newIamConfig(account: string, region: string, principals: Principal[]): IamConfig {
  return { secret: randomBytes(32).toString("base64url"), account, region, principals };
}

const derive = (config: IamConfig, purpose: string, accessKeyId: string) => createHmac("sha256", config.secret).update(`${purpose}:${accessKeyId}`).digest("base64");

/** Fresh credentials for one instance of a function: `ASIA` + the principal's index + random. */
export function issueCredentials(config: IamConfig, functionName: string): Credentials {
  const index = config.principals.findIndex((p) => p.functionName === functionName);
  if (index < 0) throw new Error(`no principal for ${functionName}`);
  const random = Array.from(randomBytes(14), (b) => KEY_ALPHABET[b % 32]).join("");
  const accessKeyId = `ASIA${KEY_ALPHABET[Math.floor(index / 32)]}${KEY_ALPHABET[index % 32]}${random}`.slice(0, 20);
  return { accessKeyId, secretAccessKey: derive(config, "secret", accessKeyId).slice(0, 40), sessionToken: derive(config, "token", accessKeyId) };
}

function principalOf(config: IamConfig, accessKeyId: string): Principal | undefined {
  if (!/^ASIA[A-Z2-7]{16}$/.test(accessKeyId)) return undefined;
  const index = KEY_ALPHABET.indexOf(accessKeyId[4]) * 32 + KEY_ALPHABET.indexOf(accessKeyId[5]);
  return config.principals[index];
}

/**
 * An access key's secret and session token, as issueCredentials derived them (two HMACs), per
 * config; with the key's last signing key per service, so a request finds it without a lookup.
 */
interface Issued {
  secret: string;
  sessionToken: string;
  signers: Map<string, { day: string; region: string; hmac: HmacKey }>;
}
const issued = new WeakMap<IamConfig, BoundedCache<Issued>>();
function secretsOf(config: IamConfig, accessKeyId: string): Issued {
  let cache = issued.get(config);
  if (!cache) issued.set(config, (cache = new BoundedCache(1024)));
  return cache.get(accessKeyId) ?? cache.remember(accessKeyId, { secret: derive(config, "secret", accessKeyId).slice(0, 40), sessionToken: derive(config, "token", accessKeyId), signers: new Map() });
}

/** The node:crypto Checksum the SDK's signer (@smithy/signature-v4) takes. */
export class Sha256 {
  private hash: Hash | Hmac;
  constructor(secret?: string | Uint8Array) {
    this.hash = secret ? createHmac("sha256", secret) : createHash("sha256");
  }
  update(data: string | Uint8Array) {
    this.hash.update(data);
  }
  async digest() {
    return new Uint8Array(this.hash.digest());
  }
  reset() {}
}

export type AuthFailure = "MissingAuthenticationToken" | "UnrecognizedClient" | "InvalidSignature" | "SignatureExpired";

export interface SignedRequest {
  method: string;
  /** The raw request target: path and query, as sent. */
  url: string;
  headers: IncomingHttpHeaders;
  body: Buffer;
  service: "dynamodb" | "execute-api" | "lambda";
}

export type Authentication = { ok: true; principal: Principal | "operator" } | { ok: false; failure: AuthFailure; message: string };

const AUTH_HEADER = /^AWS4-HMAC-SHA256 Credential=([^/]+)\/(\d{8})\/([^/]+)\/([^/]+)\/aws4_request, ?SignedHeaders=([a-z0-9;-]+), ?Signature=([0-9a-f]{64})$/;
/** AWS refuses a request signed more than 5 minutes from its own clock (15 for some services; 5 is the stricter). */
const MAX_SKEW_MS = 5 * 60_000;
export const SIGNATURE_MISMATCH =
  "The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method. Consult the service documentation for details.";

/** A target URL parsing leaves as it is: a path of these characters, not starting with `//`, no query, no segment starting with a dot. */
const PLAIN_TARGET = /^\/(?!\/)[A-Za-z0-9_~=@%.\/-]*$/;
const DOT_SEGMENT = /\/(?:\.|%2e)/i;

/**
 * The SDK's canonical path and query of a request target (path and query as sent):
 * SignatureV4Base's getCanonicalPath (dot segments resolved, each segment URI-encoded again), read
 * off the canonical request it makes for that path alone, and getCanonicalQuery. Kept per target:
 * the functions post to the same few hundred connections again and again.
 */
class CanonicalTargets extends SignatureV4Base {
  private readonly targets = new BoundedCache<{ path: string; query: string }>(4096);
  constructor() {
    super({ service: "unused", region: "unused", credentials: { accessKeyId: "unused", secretAccessKey: "unused" }, sha256: Sha256 as never, applyChecksum: false });
  }
  of(target: string): { path: string; query: string } {
    return this.targets.get(target) ?? this.targets.remember(target, this.read(target));
  }
  private read(target: string): { path: string; query: string } {
    const url = PLAIN_TARGET.test(target) && !DOT_SEGMENT.test(target) ? undefined : new URL(target, "http://local");
    const query: Record<string, string | string[]> = {};
    if (url?.search) for (const [key, value] of url.searchParams) query[key] = key in query ? list(query[key] as string | string[]).concat(value) : value;
    const path = url?.pathname ?? target;
    return {
      path: this.createCanonicalRequest({ method: "", path, query: {}, headers: {} } as unknown as HttpRequest, {}, "").split("\n")[1],
      query: url?.search ? getCanonicalQuery({ query } as unknown as HttpRequest) : "",
    };
  }
}
const canonicalTargets = new CanonicalTargets();

/** The SDK's canonical form of a header value (getCanonicalHeaders: line breaks and runs of blanks made one space, ends trimmed), kept per value. */
const canonicalValues = new BoundedCache<string>(4096);
function canonicalValue(value: string): string {
  return canonicalValues.get(value) ?? canonicalValues.remember(value, getCanonicalHeaders({ headers: { value } } as unknown as HttpRequest).value);
}

/**
 * HMAC-SHA256 with one key, as RFC 2104 defines it, H((K ^ opad) || H((K ^ ipad) || m)), with the
 * key's two padded blocks made once: each message then costs two one-shot crypto.hash calls into
 * buffers kept here, about 1 µs, against about 2.3 µs for a createHmac object per message (Node 20,
 * a 150-byte string to sign). hex() is synchronous, so one pair of buffers serves every call.
 */
export class HmacKey {
  private inner: Buffer;
  private readonly outer = Buffer.alloc(64 + 32);
  constructor(key: Buffer) {
    const block = Buffer.alloc(64);
    (key.length > 64 ? hash("sha256", key, "buffer") : key).copy(block);
    this.inner = Buffer.alloc(64 + 512);
    for (let i = 0; i < 64; i++) {
      this.inner[i] = block[i] ^ 0x36;
      this.outer[i] = block[i] ^ 0x5c;
    }
  }
  /** The HMAC of a string's UTF-8 bytes (as Hmac.update takes a string), in lower-case hex. */
  hex(message: string): string {
    // A UTF-16 code unit is at most 3 bytes of UTF-8, so the message always fits whole.
    if (64 + message.length * 3 > this.inner.length) this.inner = Buffer.concat([this.inner.subarray(0, 64), Buffer.alloc(message.length * 3)]);
    const length = this.inner.write(message, 64, "utf8");
    this.outer.write(hash("sha256", this.inner.subarray(0, 64 + length), "binary"), 64, "binary"); // "binary" is latin1: one char per byte
    return hash("sha256", this.outer, "hex");
  }
}

/** Signing keys per (secret, day, region, service): four HMACs each (SigV4's derivation), not per request. */
const signingKeys = new BoundedCache<{ key: Buffer; hmac: HmacKey }>(256);
function signerOf(secret: string, day: string, region: string, service: string): { key: Buffer; hmac: HmacKey } {
  const id = `${secret}\n${day}/${region}/${service}`;
  const cached = signingKeys.get(id);
  if (cached) return cached;
  const mac = (key: string | Buffer, data: string) => createHmac("sha256", key).update(data).digest();
  const key = mac(mac(mac(mac(`AWS4${secret}`, day), region), service), "aws4_request");
  return signingKeys.remember(id, { key, hmac: new HmacKey(key) });
}
export function signingKey(secret: string, day: string, region: string, service: string): Buffer {
  return signerOf(secret, day, region, service).key;
}

/** The body's SHA-256 in hex; the last body is remembered, since a fan-out posts one body to every member. */
const lastBody = { body: Buffer.alloc(0), hash: hash("sha256", "", "hex") };
function payloadHash(body: Buffer): string {
  if (!body.equals(lastBody.body)) Object.assign(lastBody, { body: Buffer.from(body), hash: hash("sha256", body, "hex") });
  return lastBody.hash;
}

/**
 * Per SignedHeaders value (a handful of distinct ones): the canonical request's header names in
 * order, which are the signed names without the generated ones sign() drops (authorization, date)
 * and with the two it sets (x-amz-date, x-amz-security-token); and whether the payload hash is
 * signed as a header.
 */
const signables = new BoundedCache<{ sorted: string[]; list: string; signsBodyHash: boolean }>(256);
function signableOf(signedHeaders: string) {
  const names = new Set(signedHeaders.split(";"));
  const sorted = [...new Set([...names, "x-amz-date", "x-amz-security-token"])].filter((n) => n !== "authorization" && n !== "date").sort();
  return signables.remember(signedHeaders, { sorted, list: sorted.join(";"), signsBodyHash: names.has("x-amz-content-sha256") });
}
/** X-Amz-Date read as a time, and that time as SignatureV4.sign formats it (formatDate): the last second's, kept. */
const clock = { amzDate: "", signedAt: NaN, longDate: "" };
function readDate(amzDate: string): { signedAt: number; longDate: string } {
  if (amzDate !== clock.amzDate) {
    const signedAt = Date.parse(amzDate.replace(/^(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})(\d{2})Z$/, "$1-$2-$3T$4:$5:$6Z"));
    const longDate = Number.isFinite(signedAt) ? new Date(signedAt).toISOString().replace(/\.\d{3}Z$/, "Z").replace(/[-:]/g, "") : "";
    Object.assign(clock, { amzDate, signedAt, longDate });
  }
  return clock;
}

/**
 * The signature SignatureV4.sign would give this request, signed at `signedAt` with these
 * credentials, over exactly its SignedHeaders: as sign() does, the generated headers (authorization,
 * x-amz-date, date) are dropped and x-amz-date and the session token set; the payload hash is
 * x-amz-content-sha256 when signed, else the body's.
 */
function expectedSignature(request: SignedRequest, signedHeaders: string, longDate: string, region: string, secrets: Issued): string {
  const { sorted, list: headerList, signsBodyHash } = signables.get(signedHeaders) ?? signableOf(signedHeaders);
  let headerLines = "";
  for (const name of sorted) {
    const value = name === "x-amz-date" ? longDate : name === "x-amz-security-token" ? secrets.sessionToken : String(request.headers[name] ?? "");
    headerLines += `${name}:${canonicalValue(value)}\n`;
  }
  const bodyHash = signsBodyHash ? String(request.headers["x-amz-content-sha256"] ?? "") : payloadHash(request.body);
  const target = canonicalTargets.of(request.url);
  // As SignatureV4Base.createCanonicalRequest lays it out (AWS's CanonicalRequest).
  const canonical = `${request.method}\n${target.path}\n${target.query}\n${headerLines}\n${headerList}\n${bodyHash}`;
  const day = longDate.slice(0, 8);
  const toSign = `AWS4-HMAC-SHA256\n${longDate}\n${day}/${region}/${request.service}/aws4_request\n${hash("sha256", canonical, "hex")}`;
  let signer = secrets.signers.get(request.service);
  if (signer?.day !== day || signer.region !== region) {
    secrets.signers.set(request.service, (signer = { day, region, hmac: signerOf(secrets.secret, day, region, request.service).hmac }));
  }
  return signer.hmac.hex(toSign);
}

/** Whether two strings are equal, in a time that depends only on their length. */
function sameString(a: string, b: string): boolean {
  if (a.length !== b.length) return false;
  let difference = 0;
  for (let i = 0; i < a.length; i++) difference |= a.charCodeAt(i) ^ b.charCodeAt(i);
  return difference === 0;
}

/** Verifies a request's SigV4 signature, recomputed with the credentials its access key was issued with. */
export async function authenticate(config: IamConfig, request: SignedRequest, now = Date.now()): Promise<Authentication> {
  return authenticateNow(config, request, now);
}

/** authenticate, synchronously: nothing in it waits. */
function authenticateNow(config: IamConfig, request: SignedRequest, now = Date.now()): Authentication {
  const header = String(request.headers.authorization ?? "");
  if (!header) return { ok: false, failure: "MissingAuthenticationToken", message: "Missing Authentication Token" };
  const parts = AUTH_HEADER.exec(header);
  if (!parts) return { ok: false, failure: "InvalidSignature", message: `Authorization header requires 'Credential', 'SignedHeaders' and 'Signature' parameters.` };
  const [, accessKeyId, , region, service, signedHeaders, signature] = parts;
  if (accessKeyId === OPERATOR_KEY) return { ok: true, principal: "operator" };
  const principal = principalOf(config, accessKeyId);
  const secrets = principal && secretsOf(config, accessKeyId);
  if (!principal || !secrets || request.headers["x-amz-security-token"] !== secrets.sessionToken) {
    return { ok: false, failure: "UnrecognizedClient", message: "The security token included in the request is invalid." };
  }
  const amzDate = String(request.headers["x-amz-date"] ?? "");
  const { signedAt, longDate } = readDate(amzDate);
  if (!Number.isFinite(signedAt)) return { ok: false, failure: "InvalidSignature", message: SIGNATURE_MISMATCH };
  if (Math.abs(now - signedAt) > MAX_SKEW_MS) {
    return { ok: false, failure: "SignatureExpired", message: `Signature expired: ${amzDate} is now earlier than ${new Date(now - MAX_SKEW_MS).toISOString().replace(/[-:]|\.\d{3}/g, "")}` };
  }
  if (region !== config.region || service !== request.service) return { ok: false, failure: "InvalidSignature", message: SIGNATURE_MISMATCH };
  const expected = expectedSignature(request, signedHeaders, longDate, region, secrets);
  const matches = sameString(expected, signature); // both 64 lower-case hex digits (AUTH_HEADER's and hex()'s)
  return matches ? { ok: true, principal } : { ok: false, failure: "InvalidSignature", message: SIGNATURE_MISMATCH };
}

/** The ARN AWS names a Lambda function's caller by: its role, with the function's name as the session. */
export function callerArn(config: IamConfig, principal: Principal): string {
  return `arn:aws:sts::${config.account}:assumed-role/${principal.roleName}/${principal.functionName}`;
}

/**
 * A role's decisions per (action, resource), kept by its statements array: principalsOf freezes
 * it, so a policy changes only by a new array, which starts with no decisions.
 */
const decisions = new WeakMap<readonly PolicyStatement[], Map<string, BoundedCache<boolean>>>();
function allowed(principal: Principal, action: string, resource: string): boolean {
  let byAction = decisions.get(principal.statements);
  if (!byAction) decisions.set(principal.statements, (byAction = new Map()));
  let cache = byAction.get(action);
  if (!cache) byAction.set(action, (cache = new BoundedCache(4096)));
  return cache.get(resource) ?? cache.remember(resource, policyAllows({ Statement: principal.statements }, action, resource));
}

/** The first of these (action, resource) pairs the principal may not perform, as AWS words the denial; undefined when all are allowed. */
export function denial(config: IamConfig, principal: Principal | "operator", requests: [action: string, resource: string][]): string | undefined {
  if (principal === "operator") return undefined;
  for (const [action, resource] of requests) {
    if (!allowed(principal, action, resource)) {
      // IAM's wording for an implicit deny (IAM user guide, "Troubleshoot access denied error messages").
      return `User: ${callerArn(config, principal)} is not authorized to perform: ${action} on resource: ${resource} because no identity-based policy allows the ${action} action`;
    }
  }
  return undefined;
}

/** What a DynamoDB request asks IAM for: each contained action of a transaction or batch, on its table (or index). */
export function dynamodbActions(config: IamConfig, operation: string, input: Record<string, unknown>): [string, string][] {
  const table = (name: unknown) => `arn:aws:dynamodb:${config.region}:${config.account}:table/${String(name)}`;
  const items = (input.TransactItems ?? []) as Record<string, { TableName?: string } | undefined>[];
  switch (operation) {
    case "TransactWriteItems": {
      // IAM authorizes a transaction action by action (DynamoDB developer guide, "Using IAM with DynamoDB transactions").
      const actionOf: Record<string, string> = { Put: "PutItem", Update: "UpdateItem", Delete: "DeleteItem", ConditionCheck: "ConditionCheckItem" };
      return items.flatMap((item) => Object.entries(item).map(([kind, spec]): [string, string] => [`dynamodb:${actionOf[kind] ?? kind}`, table(spec?.TableName)]));
    }
    case "TransactGetItems":
      return items.map((item): [string, string] => ["dynamodb:GetItem", table(item.Get?.TableName)]);
    case "BatchWriteItem":
    case "BatchGetItem":
      return Object.keys((input.RequestItems ?? {}) as object).map((name): [string, string] => [`dynamodb:${operation}`, table(name)]);
    case "ListTables":
      return [["dynamodb:ListTables", "*"]];
    default:
      return [[`dynamodb:${operation}`, input.IndexName ? `${table(input.TableName)}/index/${String(input.IndexName)}` : table(input.TableName)]];
  }
}

/** The HTTP answer a service gives a refused request. */
export interface Refusal {
  status: number;
  headers: Record<string, string>;
  body: string;
}

const TYPE_OF: Record<AuthFailure, string> = {
  MissingAuthenticationToken: "MissingAuthenticationTokenException",
  UnrecognizedClient: "UnrecognizedClientException",
  InvalidSignature: "InvalidSignatureException",
  SignatureExpired: "InvalidSignatureException",
};

/**
 * As each service words it: DynamoDB (JSON 1.0) answers 400 with `__type`; API Gateway's
 * @connections and Lambda answer 403 with `x-amzn-ErrorType`. (?) The exact casing of the message
 * key per service is unconfirmed; the SDK reads `message` and `Message` alike.
 */
export function refusal(service: SignedRequest["service"], type: AuthFailure | "AccessDenied", message: string): Refusal {
  const errorType = type === "AccessDenied" ? "AccessDeniedException" : TYPE_OF[type];
  const requestId = randomBytes(16).toString("hex");
  if (service === "dynamodb") {
    return {
      status: 400,
      headers: { "Content-Type": "application/x-amz-json-1.0", "x-amzn-RequestId": requestId },
      body: JSON.stringify({ __type: `com.amazon.coral.service#${errorType}`, [type === "AccessDenied" ? "Message" : "message"]: message }),
    };
  }
  const body = service === "lambda" && type === "AccessDenied" ? { Type: "User", Message: message } : { message };
  return { status: 403, headers: { "Content-Type": "application/json", "x-amzn-ErrorType": errorType, "x-amzn-RequestId": requestId }, body: JSON.stringify(body) };
}

/** Authenticates, then authorizes every (action, resource): the refusal to send, or undefined to go on. */
export async function guard(config: IamConfig, request: SignedRequest, actions: (principal: Principal | "operator") => [string, string][]): Promise<Refusal | undefined> {
  const auth = authenticateNow(config, request);
  if (!auth.ok) return refusal(request.service, auth.failure, auth.message);
  const denied = denial(config, auth.principal, actions(auth.principal));
  return denied ? refusal(request.service, "AccessDenied", denied) : undefined;
}
