/**
 * The local stack: everything the Pulumi program declared, brought up on this machine. The
 * program is evaluated under mocks with the API's endpoint pointing here; then its tables go into
 * the embedded DynamoDB, its functions' archives into the Lambda runtime, and its routes into the
 * WebSocket gateway and management API, all on one port. Nothing about the chat is hard-coded:
 * a route or function added to index.ts is served here too.
 */
import { randomBytes } from "crypto";
import * as fs from "fs";
import { createServer, IncomingMessage, RequestListener, Server, ServerResponse } from "http";
import type { AddressInfo, Server as NetServer } from "net";
import * as path from "path";
import type { Duplex } from "stream";
import { SETTINGS_SCHEMA } from "../stacks/settings";
import { LocalDynamoDB, tableSpec } from "./dynamodb";
import { startDynamoDBProcess } from "./dynamodb-process";
import { answerPlainRequest, createGateway, Gateway, refuseUpgrade, RouteTarget } from "./gateway";
import { createLambdaRuntime, DEFAULT_ASYNC_CONFIG, FunctionSpec, LambdaRuntime } from "./lambda";
import { handleLambdaApiRequest } from "./lambda-api";
import { arnMatches, IamConfig, issueCredentials, newIamConfig } from "./iam";
import { PolicyEdit, principalsOf } from "./principals";
import { alive } from "./processes";
import { handleManagementRequest, leanManagementRoute, ManagementFaults, ManagementOptions } from "./management";
import { LeanRouter, routeLeanConnections } from "./lean-http";
import type { CapacityMeter } from "./transactions";
import { FAKE_ACCOUNT_ID, loadProgram, LoadedProgram, PROJECT_DIR, readProjectFile, RecordedResource } from "./program";
import { createLocalQueues, LocalQueues, queueSpecs } from "./sqs";
import { destinationAccessRefusal, mappingSpecs, startStreamDelivery, streamAccessRefusal, StreamDelivery, streamReaders } from "./streams";
import { servePage } from "./web";

export interface LocalStackOptions {
  stack: string;
  /** 0 picks a free port. */
  port: number;
  host?: string;
  dataDir?: string;
  idleTimeoutMs?: number;
  maxDurationMs?: number;
  loseAbnormalDisconnects?: boolean;
  managementLatencyMs?: number;
  managementFaults?: ManagementFaults;
  maxInstances?: number;
  /** An idle function instance is ended after this long (local/lambda.ts, DEFAULT_INSTANCE_IDLE_MS). */
  instanceIdleMs?: number;
  /**
   * Where the outputs JSON goes, removed when this stack stops; default .local/<stack>/outputs.json,
   * which describes the newest live stack of that name (publishOutputs).
   */
  outputsFile?: string;
  /** `<namespace>:<key>` → value; keys the program does not read are refused (checkConfigOverrides). */
  configOverrides?: Record<string, string>;
  /** Key that signs chat tokens; default $CHAT_TOKEN_KEY, else one kept in .local/<stack>/token-key. */
  tokenKey?: string;
  /** SigV4 and IAM enforcement on the local DynamoDB, @connections and Invoke APIs (default on). */
  iam?: boolean;
  /** Statements to drop from roles before enforcing them (tests of a missing permission). */
  policyEdits?: PolicyEdit[];
  /** Start-up progress, every log line of the stack, and the stop's steps. */
  log?: (line: string) => void;
  /** Aborting it ends a start still under way at its next step (it rejects, having cleaned up). */
  signal?: AbortSignal;
  /**
   * The port is held elsewhere (by local/cli.ts's launcher, which answers 503 on it meanwhile):
   * `port` is its number, and once the stack is ready this gives the listening socket to serve on.
   */
  takeOverPort?: () => Promise<NetServer>;
}

export interface StackOutputs {
  url: string;
  connectionsUrl: string;
  tableName: string;
  stage: string;
  region: string;
  [name: string]: unknown;
}

export interface LocalStack {
  port: number;
  /** The key the stack's authorizer checks tokens with (used only when the stack has auth on). */
  tokenKey: string;
  tokenKeyFile: string;
  /** Where the token key came from, for people: "$CHAT_TOKEN_KEY", "the key in <file>", … */
  tokenKeyFrom: string;
  /** Whether $connect is behind an authorizer. */
  authEnabled: boolean;
  /** The chat page, served by this stack. */
  pageUrl: string;
  outputs: StackOutputs;
  /** Per output that stands in for an AWS resource the local stack does not serve: what it is (localOutputs). */
  outputNotes: Record<string, string>;
  outputsFile: string;
  program: LoadedProgram;
  /** The enforced identities and the secret their credentials derive from; absent with `iam: false`. */
  iam?: IamConfig;
  dynamodb: LocalDynamoDB;
  lambdas: LambdaRuntime;
  /** The event source mappings' delivery of DynamoDB stream records (local/streams.ts). */
  streams: StreamDelivery;
  /** The program's SQS queues, in process (local/sqs.ts): the presence mapping's failure records. */
  queues: LocalQueues;
  gateway: Gateway;
  /** Stops everything (see shutdown); calling it again returns the same stop. */
  stop(): Promise<void>;
}

export class StartupError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "StartupError";
  }
}

/** Serves on a socket that is already listening (handed over by another process). */
function listenOn(server: Server, socket: NetServer): Promise<void> {
  return new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(socket, () => resolve());
  });
}

function listen(server: Server, port: number, host: string): Promise<number> {
  return new Promise((resolve, reject) => {
    server.once("error", (err: NodeJS.ErrnoException) => {
      if (err.code === "EADDRINUSE") reject(new StartupError(`port ${port} on ${host} is already in use; stop what holds it, or pass --port <n> (--port 0 picks a free one)`));
      else if (err.code === "EACCES") reject(new StartupError(`no permission to listen on port ${port}; use a port above 1023`));
      else reject(err);
    });
    server.listen(port, host, () => resolve((server.address() as AddressInfo).port));
  });
}

/** The local token key: given, or from $CHAT_TOKEN_KEY, or kept in a file so `npm run token -- --local` can sign. */
function localTokenKey(file: string, given?: string): string {
  const key = given ?? process.env.CHAT_TOKEN_KEY;
  if (key) return key;
  if (fs.existsSync(file)) return fs.readFileSync(file, "utf8").trim();
  const created = randomBytes(48).toString("base64url");
  fs.mkdirSync(path.dirname(file), { recursive: true });
  fs.writeFileSync(file, created + "\n", { mode: 0o600 });
  return created;
}

function writeArchive(program: LoadedProgram, fn: RecordedResource, root: string): string {
  const dir = path.join(root, fn.name);
  fs.rmSync(dir, { recursive: true, force: true });
  for (const [file, content] of program.archives.get(fn.name) ?? []) {
    fs.mkdirSync(path.dirname(path.join(dir, file)), { recursive: true });
    fs.writeFileSync(path.join(dir, file), content);
  }
  return dir;
}

/** What the stack counted so far, for benchmarks: DynamoDB capacity, @connections calls, invocations. */
export const METRICS_PATH = "/_local/metrics";

async function serveMetrics(res: ServerResponse, sources: { dynamodb: LocalDynamoDB; management: Record<string, number>; lambda: LambdaRuntime }) {
  const invocations = sources.lambda.invocationCounts();
  let dynamodb: CapacityMeter;
  try {
    dynamodb = await sources.dynamodb.readMeter();
  } catch (err) {
    res.writeHead(503, { "Content-Type": "application/json" });
    res.end(JSON.stringify({ message: `DynamoDB's meter is not available: ${(err as Error).message}` }));
    return;
  }
  res.writeHead(200, { "Content-Type": "application/json" });
  res.end(JSON.stringify({ dynamodb, management: sources.management, invocations }));
}

/** A FunctionEventInvokeConfig's retry settings, Lambda's defaults for what it leaves out. */
function asyncConfig(config?: RecordedResource): FunctionSpec["async"] {
  return {
    maximumRetryAttempts: config?.inputs.maximumRetryAttempts ?? DEFAULT_ASYNC_CONFIG.maximumRetryAttempts,
    maximumEventAgeSeconds: config?.inputs.maximumEventAgeInSeconds ?? DEFAULT_ASYNC_CONFIG.maximumEventAgeSeconds,
  };
}

// --- Settings ---------------------------------------------------------------------------------

/** Settings given as secrets (`pulumi config set --secret`): valid overrides, but handed to the program as secrets. */
const SECRET_SETTINGS = ["tokenKey", "tokenPreviousKey"] as const;

/** Every key `--config` accepts, as a user writes it: the schema's settings, the secrets, and aws:region. */
export function knownConfigKeys(): string[] {
  return [...Object.keys(SETTINGS_SCHEMA), ...SECRET_SETTINGS, "aws:region"];
}

/** Refuses an override the program would never read (a typo would otherwise be ignored in silence). */
export function checkConfigOverrides(project: string, overrides: Record<string, string>): void {
  const known = knownConfigKeys();
  for (const key of Object.keys(overrides)) {
    const short = key.startsWith(`${project}:`) ? key.slice(project.length + 1) : key;
    if (known.includes(short)) continue;
    const near = known.filter((k) => closeTo(k.toLowerCase(), short.toLowerCase()));
    throw new StartupError(`unknown setting "${short}" (--config ${short}=…)${near.length ? `; did you mean ${near.join(" or ")}?` : ""}\nknown keys: ${known.join(", ")}`);
  }
}

/** At most two edits apart, or one contains the other: enough to name a likely typo. */
function closeTo(a: string, b: string): boolean {
  if (a.includes(b) || b.includes(a)) return Math.min(a.length, b.length) >= 4;
  const row = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    let diagonal = row[0];
    row[0] = i;
    for (let j = 1; j <= b.length; j++) {
      const above = row[j];
      row[j] = Math.min(row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] === b[j - 1] ? 0 : 1));
      diagonal = above;
    }
  }
  return row[b.length] <= 2;
}

/** Overrides without the secrets, and the secrets apart (they reach the program as secrets). */
function splitSecrets(project: string, overrides: Record<string, string> = {}) {
  const settings = { ...overrides };
  const take = (key: string) => {
    const value = settings[`${project}:${key}`];
    delete settings[`${project}:${key}`];
    return value;
  };
  return { settings, tokenKey: take("tokenKey"), tokenPreviousKey: take("tokenPreviousKey") };
}

// --- The door: what answers on the port while the stack starts and stops -----------------------

type Phase = "starting" | "ready" | "stopping";

const UNAVAILABLE: Record<Exclude<Phase, "ready">, string> = {
  starting: "The local stack is starting; try again in a moment",
  stopping: "The local stack is stopping",
};
const UNAVAILABLE_HEADERS = { "Content-Type": "application/json", "Retry-After": "1", Connection: "close" };

/** 503 at once, never a request left hanging. */
function unavailable(res: ServerResponse, phase: Exclude<Phase, "ready">) {
  res.writeHead(503, UNAVAILABLE_HEADERS);
  res.end(JSON.stringify({ message: UNAVAILABLE[phase] }));
}

interface Door {
  phase(): Phase;
  /** The gateway takes the upgrades from here on (call right before createGateway). */
  handUpgradesOver(): void;
  /** From now on requests go to `handler`. */
  open(handler: RequestListener): void;
  stopping(): void;
}

/**
 * The port is taken first (a busy port fails at once, not after the program loads, and --port 0
 * learns its number, which the program's outputs need); until the stack is ready, every request
 * and every WebSocket upgrade is answered 503. In this process that answer waits while loading
 * the program blocks the event loop (seconds); `npm start` avoids that: its launcher holds the
 * port and answers 503 from a process of its own (takeOverPort).
 */
function door(server: Server): Door {
  let phase: Phase = "starting";
  let handler: RequestListener | undefined;
  const earlyUpgrade = (_req: IncomingMessage, socket: Duplex) =>
    refuseUpgrade(socket, 503, JSON.stringify({ message: UNAVAILABLE.starting }), { "Content-Type": "application/json", "Retry-After": "1" });
  server.on("upgrade", earlyUpgrade);
  server.on("request", (req, res) => (handler ? handler(req, res) : unavailable(res, "starting")));
  return {
    phase: () => phase,
    handUpgradesOver: () => void server.off("upgrade", earlyUpgrade),
    open(next) {
      handler = next;
      phase = "ready";
    },
    stopping: () => void (phase = "stopping"),
  };
}

// --- Outputs ----------------------------------------------------------------------------------

/** Marks an output value that stands in for an AWS resource the local stack does not serve. */
export const NOT_SERVED_LOCALLY = "(not served locally)";

/** What the local stack serves itself; an output naming any other resource names something only AWS has. */
const SERVED_TYPES = new Set([
  "aws:dynamodb/table:Table",
  "aws:apigatewayv2/api:Api",
  "aws:apigatewayv2/stage:Stage",
  "aws:lambda/function:Function",
  "aws:lambda/eventSourceMapping:EventSourceMapping",
  "aws:iam/role:Role",
]);

const SERVICE_NAMES: Record<string, string> = { cloudfront: "CloudFront", sns: "SNS", s3: "S3", cloudwatch: "CloudWatch", sqs: "SQS", logs: "CloudWatch Logs" };

/**
 * The outputs as the local stack gives them. An output built from a resource it does not serve
 * holds a mock value (a real-looking ARN or domain, account 123456789012): the CloudFront page
 * URL becomes the page this stack serves itself (the same files, config.json and headers,
 * local/web.ts); anything else keeps its key but its value is marked "(not served locally)", so
 * it cannot be mistaken for a real resource. `notes` says why, per marked key.
 */
export function localOutputs(program: Pick<LoadedProgram, "outputs" | "resources">, pageUrl: string): { outputs: StackOutputs; notes: Record<string, string> } {
  const standIns = program.resources
    .filter((r) => !SERVED_TYPES.has(r.type))
    .map((r) => ({ resource: r, ids: [r.state.arn, r.state.domainName, r.state.bucketRegionalDomainName].filter((v): v is string => typeof v === "string" && v.length > 0) }))
    .filter((s) => s.ids.length > 0);
  const outputs: Record<string, unknown> = {};
  const notes: Record<string, string> = {};
  for (const [key, value] of Object.entries(program.outputs)) {
    const standIn = typeof value === "string" ? standIns.find((s) => s.ids.some((id) => value.includes(id))) : undefined;
    if (!standIn) {
      outputs[key] = value;
      continue;
    }
    const service = standIn.resource.type.split(":")[1].split("/")[0];
    const name = SERVICE_NAMES[service] ?? service;
    if (standIn.resource.type === "aws:cloudfront/distribution:Distribution") {
      outputs[key] = pageUrl;
      notes[key] = `the chat page, served by this stack (on AWS: a ${name} distribution; the mock was ${value})`;
    } else {
      outputs[key] = `${NOT_SERVED_LOCALLY} ${value}`;
      notes[key] = `a mock value: ${name} is not served locally`;
    }
  }
  return { outputs: outputs as StackOutputs, notes };
}

const RUN_DIR = /^run-(\d+)(?:-\d+)?$/;
let runsInProcess = 0;

/** This stack's own folder (its functions' archives, its outputs), removed when it stops. */
function newRunDir(stateDir: string): string {
  const n = runsInProcess++;
  return path.join(stateDir, n === 0 ? `run-${process.pid}` : `run-${process.pid}-${n}`);
}

/** Run folders of stacks still running (their process alive), with outputs, newest first. */
export function liveRuns(stateDir: string): string[] {
  let entries: string[];
  try {
    entries = fs.readdirSync(stateDir);
  } catch {
    return [];
  }
  return entries
    .filter((name) => RUN_DIR.test(name) && alive(Number(RUN_DIR.exec(name)![1])))
    .map((name) => path.join(stateDir, name, "outputs.json"))
    .filter((file) => fs.existsSync(file))
    .sort((a, b) => fs.statSync(b).mtimeMs - fs.statSync(a).mtimeMs)
    .map((file) => path.dirname(file));
}

/** Removes the run folders of stacks that are gone without cleaning up (killed with SIGKILL). */
export function sweepDeadRuns(stateDir: string): void {
  let entries: string[];
  try {
    entries = fs.readdirSync(stateDir);
  } catch {
    return;
  }
  for (const name of entries) {
    if (RUN_DIR.test(name) && !alive(Number(RUN_DIR.exec(name)![1]))) fs.rmSync(path.join(stateDir, name), { recursive: true, force: true });
  }
}

function writeAtomically(file: string, text: string) {
  fs.mkdirSync(path.dirname(file), { recursive: true });
  const temporary = `${file}.${process.pid}.tmp`;
  fs.writeFileSync(temporary, text);
  fs.renameSync(temporary, file);
}

function readOrUndefined(file: string): string | undefined {
  try {
    return fs.readFileSync(file, "utf8");
  } catch {
    return undefined;
  }
}

/** Runs `fn` holding `<dir>/outputs.lock` (a folder: mkdir is atomic), so two stacks never interleave. */
function withOutputsLock<T>(dir: string, fn: () => T): T {
  const lock = path.join(dir, "outputs.lock");
  fs.mkdirSync(dir, { recursive: true });
  for (;;) {
    try {
      fs.mkdirSync(lock);
      break;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "EEXIST") throw err;
      // A holder killed between its two file operations leaves the lock: taken over after 5 s.
      const age = Date.now() - (fs.statSync(lock, { throwIfNoEntry: false })?.mtimeMs ?? Date.now());
      if (age > 5_000) fs.rmSync(lock, { recursive: true, force: true });
      Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 10); // held for a few ms at most
    }
  }
  try {
    return fn();
  } finally {
    fs.rmSync(lock, { recursive: true, force: true });
  }
}

/**
 * Where the outputs go, so that stacks of one name never clobber each other: every stack writes
 * its own into its run folder; the default `.local/<stack>/outputs.json` is a copy of the newest
 * live stack's. When a stack stops it removes its run folder and, where the default still holds
 * its outputs, copies the next newest live stack's there, or removes it: the file never describes
 * a stack that has stopped. A file named with --outputs is that stack's alone, removed as it stops.
 */
export interface OutputsFiles {
  /** The file to read: the one asked for, or the default. */
  file: string;
  /** Takes this stack's outputs back (call before its run folder goes). */
  withdraw(): void;
}

export function publishOutputs(stateDir: string, runDir: string, text: string, asked?: string): OutputsFiles {
  const own = path.join(runDir, "outputs.json");
  const file = asked ?? path.join(stateDir, "outputs.json");
  withOutputsLock(stateDir, () => {
    writeAtomically(own, text);
    writeAtomically(file, text);
  });
  return {
    file,
    withdraw() {
      withOutputsLock(stateDir, () => {
        fs.rmSync(own, { force: true });
        if (readOrUndefined(file) !== text) return; // another stack's by now
        const next = asked ? undefined : liveRuns(stateDir).find((dir) => dir !== runDir);
        const successor = next && readOrUndefined(path.join(next, "outputs.json"));
        if (successor) writeAtomically(file, successor);
        else fs.rmSync(file, { force: true });
      });
    },
  };
}

// --- What the program declared, as the local stack serves it -----------------------------------

type Declared = (type: string) => RecordedResource[];

/** The program's one WebSocket API and its stage. */
function webSocketApi(of: Declared): { api: RecordedResource; stage: string } {
  const apis = of("aws:apigatewayv2/api:Api").filter((a) => a.inputs.protocolType === "WEBSOCKET");
  if (apis.length !== 1) throw new StartupError(`the program declares ${apis.length} WebSocket APIs; the local stack serves exactly one`);
  const api = apis[0];
  const stageResource = of("aws:apigatewayv2/stage:Stage").find((s) => s.inputs.apiId === api.id);
  if (!stageResource) throw new StartupError("the program declares no Stage for its WebSocket API");
  return { api, stage: stageResource.inputs.name as string };
}

/** Each function's archive unpacked into `dir`, with its settings. */
function functionSpecs(program: LoadedProgram, of: Declared, dir: string): FunctionSpec[] {
  const invokeConfigs = of("aws:lambda/functionEventInvokeConfig:FunctionEventInvokeConfig");
  return of("aws:lambda/function:Function").map((fn) => ({
    name: fn.state.name,
    arn: fn.state.arn,
    archiveDir: writeArchive(program, fn, dir),
    handler: fn.inputs.handler ?? "index.handler",
    environment: fn.inputs.environment?.variables ?? {},
    timeoutSeconds: fn.inputs.timeout ?? 3,
    memoryMb: fn.inputs.memorySize ?? 128,
    async: asyncConfig(invokeConfigs.find((c) => [fn.state.name, fn.state.arn].includes(c.inputs.functionName))),
  }));
}

/** The API's routes, each to its function through its integration (and authorizer), as API Gateway calls them. */
function routeTargets(of: Declared, api: RecordedResource, stage: string, lambdas: LambdaRuntime): RouteTarget[] {
  const functions = of("aws:lambda/function:Function");
  const permissions = of("aws:lambda/permission:Permission");
  /** Invokes a function as API Gateway would: only if a lambda.Permission lets it, for this source ARN. */
  const invoker = (fn: RecordedResource, sourceArn: string) => {
    const allowed = permissions.some(
      (p) => p.inputs.principal === "apigateway.amazonaws.com" && [fn.state.name, fn.state.arn].includes(p.inputs.function) && arnMatches(p.inputs.sourceArn ?? "*", sourceArn),
    );
    return (event: unknown) =>
      allowed
        ? lambdas.invoke(fn.state.name, event)
        : Promise.resolve({ error: { errorType: "AccessDenied", errorMessage: `no lambda.Permission lets API Gateway invoke ${fn.state.name} for ${sourceArn}` }, durationMs: 0, coldStart: false });
  };
  const authorizerFor = (route: RecordedResource, routeKey: string): RouteTarget["authorizer"] => {
    if (route.inputs.authorizationType !== "CUSTOM") return undefined;
    const declared = of("aws:apigatewayv2/authorizer:Authorizer").find((a) => a.id === route.inputs.authorizerId);
    const authorizerFn = functions.find((f) => f.state.invokeArn === declared?.inputs.authorizerUri);
    if (!declared || !authorizerFn) throw new StartupError(`route ${routeKey} names an authorizer the local stack cannot find`);
    if (declared.inputs.authorizerType !== "REQUEST") throw new StartupError(`route ${routeKey}: WebSocket APIs support REQUEST authorizers only`);
    return {
      functionName: authorizerFn.state.name,
      identitySources: declared.inputs.identitySources ?? [],
      invoke: invoker(authorizerFn, `${api.state.executionArn}/authorizers/${declared.id}`),
    };
  };
  return of("aws:apigatewayv2/route:Route")
    .filter((r) => r.inputs.apiId === api.id)
    .map((route) => {
      const routeKey = route.inputs.routeKey as string;
      const integrationId = /^integrations\/(.+)$/.exec(route.inputs.target ?? "")?.[1];
      const integration = of("aws:apigatewayv2/integration:Integration").find((i) => i.id === integrationId);
      const fn = functions.find((f) => f.state.invokeArn === integration?.inputs.integrationUri);
      if (!integration || !fn) throw new StartupError(`route ${routeKey} has no Lambda integration the local stack can serve`);
      if (integration.inputs.integrationType !== "AWS_PROXY") throw new StartupError(`route ${routeKey}: only AWS_PROXY integrations are emulated`);
      const sourceArn = `${api.state.executionArn}/${stage}/${routeKey}`;
      const twoWay = of("aws:apigatewayv2/routeResponse:RouteResponse").some((rr) => rr.inputs.routeId === route.id && rr.inputs.routeResponseKey === "$default");
      return { routeKey, functionName: fn.state.name, twoWay, authorizer: authorizerFor(route, routeKey), invoke: invoker(fn, sourceArn) };
    });
}

/**
 * The program's event source mappings, checked before anything starts: a setting not emulated
 * stops the start, and so does, with IAM on, a function role that may not read its stream or send
 * to its on-failure queue (as CreateEventSourceMapping refuses it on AWS).
 */
function eventSourceMappings(resources: RecordedResource[], iam: IamConfig | undefined) {
  let mappings: ReturnType<typeof mappingSpecs>;
  try {
    mappings = mappingSpecs(resources);
  } catch (err) {
    throw new StartupError((err as Error).message, { cause: err });
  }
  for (const mapping of iam ? mappings : []) {
    const refused = streamAccessRefusal(mapping, iam!.principals) ?? destinationAccessRefusal(mapping, iam!.principals);
    if (refused) throw new StartupError(`event source mapping ${mapping.name} (function ${mapping.functionName}): ${refused}`);
  }
  return mappings;
}

// --- Stopping ---------------------------------------------------------------------------------

/** How long the stop waits for invocations already running before it closes the connections. */
export const DRAIN_MS = 2_000;

/** What has been started so far; the stop (or a failed start) ends what is there. */
interface Parts {
  server: Server;
  door: Door;
  runDir: string;
  gateway?: Gateway;
  lambdas?: LambdaRuntime;
  streams?: StreamDelivery;
  dynamodb?: LocalDynamoDB;
  outputs?: OutputsFiles;
  lean?: LeanRouter;
}

/** One step of the stop: a failure is one line, and the next step runs anyway. */
async function step(log: (line: string) => void, what: string, fn: () => unknown): Promise<void> {
  try {
    await fn();
  } catch (err) {
    log(`warning: ${what} failed: ${(err as Error).message}`);
  }
}

function closeServer(server: Server, lean?: LeanRouter): Promise<void> {
  return new Promise<void>((resolve) => {
    if (!server.listening) return resolve();
    server.close(() => resolve());
    server.closeAllConnections(); // idle keep-alive sockets from the functions' SDK clients
    lean?.closeAll(); // and the functions' @connections sockets, which Node's server does not track
  });
}

/**
 * The stop, in order: refuse new connections (503; the functions still reach DynamoDB,
 * @connections and Invoke), let running invocations finish (up to DRAIN_MS), close every
 * connection with 1001 "Going away" and let their $disconnect run, deliver the stream records
 * those left (up to DRAIN_MS) and start no more, end the function instances (what still runs is
 * cancelled, silently: it is not the function's failure), then DynamoDB, the port, and the run
 * folder.
 */
async function shutdown(parts: Parts, log: (line: string) => void, drain: boolean): Promise<void> {
  const { gateway, lambdas, streams, dynamodb } = parts;
  parts.door.stopping();
  gateway?.stopAccepting();
  if (drain && lambdas && lambdas.inFlight() > 0) {
    log(`Waiting for ${lambdas.inFlight()} invocation(s) to finish…`);
    await lambdas.idle(DRAIN_MS);
  }
  if (gateway) {
    const open = [...gateway.connections.values()].filter((c) => c.state === "open").length;
    if (open > 0) log(`Closing ${open} connection(s) (1001 Going away)…`);
    await step(log, "closing the connections", () => gateway.close());
  }
  // Before the instances end: no batch is started on a runtime that is stopping.
  if (streams) await step(log, "stopping stream delivery", () => streams.close(drain ? DRAIN_MS : 0));
  if (lambdas) {
    await step(log, "ending the function instances", async () => {
      const { instances, cancelled } = await lambdas.close();
      if (instances > 0) log(`Ended ${instances} function instance(s)${cancelled > 0 ? `; ${cancelled} invocation(s) still running were cancelled` : ""}.`);
    });
  }
  if (streams) await step(log, "ending stream delivery", () => streams.settled());
  if (dynamodb) await step(log, "stopping DynamoDB", () => dynamodb.close());
  await step(log, "closing the port", () => closeServer(parts.server, parts.lean));
  await step(log, "removing the outputs", () => parts.outputs?.withdraw());
  await step(log, `removing ${parts.runDir}`, () => fs.rmSync(parts.runDir, { recursive: true, force: true }));
}

// --- Start ------------------------------------------------------------------------------------

export async function startLocalStack(options: LocalStackOptions): Promise<LocalStack> {
  const log = options.log ?? ((line: string) => console.log(line));
  const host = options.host ?? "127.0.0.1";
  const project = readProjectFile().name;
  checkConfigOverrides(project, options.configOverrides ?? {});
  const overrides = splitSecrets(project, options.configOverrides);
  const stateDir = path.join(PROJECT_DIR, ".local", options.stack);
  sweepDeadRuns(stateDir);
  const server = createServer();
  server.keepAliveTimeout = 65_000;
  const parts: Parts = { server, door: door(server), runDir: newRunDir(stateDir) };

  try {
    const port = options.takeOverPort ? options.port : await listen(server, options.port, host);
    options.signal?.throwIfAborted();
    // Secrets in Pulumi.<stack>.yaml are encrypted for the Pulumi CLI; locally the token key is our own.
    const tokenKeyFile = path.join(stateDir, "token-key");
    const tokenKey = localTokenKey(tokenKeyFile, options.tokenKey ?? overrides.tokenKey);
    const previousKey = overrides.tokenPreviousKey ?? process.env.CHAT_TOKEN_PREVIOUS_KEY;
    log(`Loading the program (index.ts) with the ${options.stack} settings…`);
    const program = await loadProgram({
      stack: options.stack,
      apiEndpoint: () => `ws://${host}:${port}`,
      configOverrides: overrides.settings,
      secrets: {
        [`${project}:tokenKey`]: tokenKey,
        // A key being rotated out (README, "Rotating the key"): tokens it signed stay valid.
        ...(previousKey ? { [`${project}:tokenPreviousKey`]: previousKey } : {}),
      },
    });
    options.signal?.throwIfAborted();
    const of: Declared = (type) => program.resources.filter((r) => r.type === type);
    const { api, stage } = webSocketApi(of);

    const iam = options.iam === false ? undefined : newIamConfig(FAKE_ACCOUNT_ID, program.region, principalsOf(program.resources, options.policyEdits));
    const mappings = eventSourceMappings(program.resources, iam);
    const tables = of("aws:dynamodb/table:Table");
    log(`Starting DynamoDB (${tables.length} table${tables.length === 1 ? "" : "s"})…`);
    const dynamodb = (parts.dynamodb = await startDynamoDBProcess({
      tables: tables.map(tableSpec),
      dataDir: options.dataDir,
      region: program.region,
      iam,
      // Only what a mapping takes leaves the DynamoDB process; a stream nobody maps is not captured.
      streamReaders: streamReaders(mappings),
    }));
    options.signal?.throwIfAborted();

    // Per stack: two local stacks of one stack (npm start beside npm test) never share archives.
    const specs = functionSpecs(program, of, path.join(parts.runDir, "functions"));
    log(`Starting ${specs.length} functions (an instance starts on its first invocation)…`);
    const lambdas = (parts.lambdas = createLambdaRuntime({
      functions: specs,
      maxInstances: options.maxInstances,
      instanceIdleMs: options.instanceIdleMs,
      // Each instance its own temporary credentials, as Lambda gives them (the operator's without IAM).
      credentials: iam ? (functionName) => issueCredentials(iam, functionName) : undefined,
      baseEnv: {
        AWS_REGION: program.region,
        AWS_DEFAULT_REGION: program.region,
        AWS_ACCESS_KEY_ID: "local",
        AWS_SECRET_ACCESS_KEY: "local",
        AWS_ENDPOINT_URL_DYNAMODB: dynamodb.endpoint,
        AWS_ENDPOINT_URL_LAMBDA: `http://${host}:${port}`,
      },
      write: log,
    }));

    const queues = createLocalQueues(queueSpecs(program.resources));
    parts.streams = startStreamDelivery({
      mappings,
      invoke: (name, event) => lambdas.invoke(name, event),
      subscribe: (listener) => dynamodb.onStream(listener),
      log,
      sendFailureRecord: (queueArn, record) => (queues.send(queueArn, JSON.stringify(record)), queues.find(queueArn)!.name),
    });
    const routes = routeTargets(of, api, stage, lambdas);
    parts.door.handUpgradesOver();
    const gateway = (parts.gateway = createGateway(server, {
      api: { apiId: api.id, stage, domainName: `${host}:${port}` },
      methodArnPrefix: `arn:aws:execute-api:${program.region}:${FAKE_ACCOUNT_ID}:${api.id}/${stage}`,
      routeSelectionExpression: api.inputs.routeSelectionExpression,
      routes,
      idleTimeoutMs: options.idleTimeoutMs,
      maxDurationMs: options.maxDurationMs,
      loseAbnormalDisconnects: options.loseAbnormalDisconnects,
      log,
    }));
    const authEnabled = routes.some((r) => r.authorizer);
    const pageUrl = `http://${host}:${port}/`;
    const { outputs, notes } = localOutputs(program, pageUrl);
    const managementCalls: Record<string, number> = {};
    const management: ManagementOptions = { stage, gateway, latencyMs: options.managementLatencyMs, faults: options.managementFaults, calls: managementCalls, log, iam: iam ? { config: iam, apiId: api.id } : undefined };
    parts.lean = routeLeanConnections(server, leanManagementRoute(management), server.keepAliveTimeout);
    parts.door.open((req, res) => {
      if (handleManagementRequest(management, req, res)) return;
      if (req.url === METRICS_PATH) return void serveMetrics(res, { dynamodb, management: managementCalls, lambda: lambdas });
      if (handleLambdaApiRequest({ runtime: lambdas, functionNames: specs.map((f) => f.name), log, iam }, req, res)) return;
      // Stopping: the functions still reach the APIs above; a page load (a new visitor) is refused.
      if (parts.door.phase() === "stopping") return unavailable(res, "stopping");
      if (servePage({ url: outputs.url, authEnabled, maxMessageBytes: Number(program.config[`${project}:maxMessageBytes`]) }, req, res)) return;
      answerPlainRequest(stage, req, res);
    });
    if (options.takeOverPort) await listenOn(server, await options.takeOverPort());
    parts.outputs = publishOutputs(stateDir, parts.runDir, JSON.stringify(outputs, null, 2) + "\n", options.outputsFile);

    let stopping: Promise<void> | undefined;
    return {
      port,
      tokenKey,
      tokenKeyFile,
      tokenKeyFrom: options.tokenKey ? "the key given" : overrides.tokenKey ? "the key given with --config tokenKey" : process.env.CHAT_TOKEN_KEY ? "$CHAT_TOKEN_KEY" : `the key in ${tokenKeyFile}`,
      authEnabled,
      pageUrl,
      outputs,
      outputNotes: notes,
      outputsFile: parts.outputs.file,
      program,
      iam,
      dynamodb,
      lambdas,
      streams: parts.streams,
      queues,
      gateway,
      stop: () => (stopping ??= shutdown(parts, log, true)),
    };
  } catch (err) {
    await shutdown(parts, () => undefined, false);
    throw err;
  }
}
