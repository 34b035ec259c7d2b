/**
 * The local stack: everything the Pulumi program declared, brought up on this machine. The
 * program is evaluated under mocks with the API's endpoint pointing here; then its tables go into
 * the embedded DynamoDB, its functions' archives into the Lambda runtime, and its routes into the
 * WebSocket gateway and management API, all on one port. Nothing about the chat is hard-coded:
 * a route or function added to index.ts is served here too.
 */
import { randomBytes } from "crypto";
import * as fs from "fs";
import { createServer, Server, ServerResponse } from "http";
import type { AddressInfo } from "net";
import * as path from "path";
import { LocalDynamoDB, tableSpec } from "./dynamodb";
import { startDynamoDBProcess } from "./dynamodb-process";
import { answerPlainRequest, createGateway, Gateway, RouteTarget } from "./gateway";
import { createLambdaRuntime, DEFAULT_ASYNC_CONFIG, FunctionSpec, LambdaRuntime } from "./lambda";
import { handleLambdaApiRequest } from "./lambda-api";
import { arnMatches, IamConfig, issueCredentials, newIamConfig } from "./iam";
import { PolicyEdit, principalsOf } from "./principals";
import { handleManagementRequest, ManagementFaults } from "./management";
import type { CapacityMeter } from "./transactions";
import { FAKE_ACCOUNT_ID, loadProgram, LoadedProgram, PROJECT_DIR, readProjectFile, RecordedResource } from "./program";
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
  /** Where the outputs JSON goes; default .local/<stack>/outputs.json. */
  outputsFile?: string;
  configOverrides?: Record<string, string>;
  /** Key that signs chat tokens; default $CHAT_TOKEN_KEY, else one kept in .local/<stack>/token-key. */
  tokenKey?: string;
  /** SigV4 and IAM enforcement on the local DynamoDB, @connections and Invoke APIs (default on). */
  iam?: boolean;
  /** Statements to drop from roles before enforcing them (tests of a missing permission). */
  policyEdits?: PolicyEdit[];
  log?: (line: string) => void;
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
  /** Whether $connect is behind an authorizer. */
  authEnabled: boolean;
  /** The chat page, served by this stack. */
  pageUrl: string;
  outputs: StackOutputs;
  outputsFile: string;
  program: LoadedProgram;
  /** The enforced identities and the secret their credentials derive from; absent with `iam: false`. */
  iam?: IamConfig;
  dynamodb: LocalDynamoDB;
  lambdas: LambdaRuntime;
  gateway: Gateway;
  stop(): Promise<void>;
}

export class StartupError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "StartupError";
  }
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

export async function startLocalStack(options: LocalStackOptions): Promise<LocalStack> {
  const log = options.log ?? ((line: string) => console.log(line));
  const host = options.host ?? "127.0.0.1";
  const stateDir = path.join(PROJECT_DIR, ".local", options.stack);
  const cleanups: (() => Promise<void>)[] = [];
  const server = createServer();
  cleanups.push(
    () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections(); // idle keep-alive sockets from the functions' SDK clients
      }),
  );
  server.keepAliveTimeout = 65_000;

  try {
    const port = await listen(server, options.port, host);
    // Secrets in Pulumi.<stack>.yaml are encrypted for the Pulumi CLI; locally the token key is our own.
    const tokenKeyFile = path.join(stateDir, "token-key");
    const tokenKey = localTokenKey(tokenKeyFile, options.tokenKey);
    const program = await loadProgram({
      stack: options.stack,
      apiEndpoint: () => `ws://${host}:${port}`,
      configOverrides: options.configOverrides,
      secrets: {
        [`${readProjectFile().name}:tokenKey`]: tokenKey,
        // A key being rotated out (README, "Rotating the key"): tokens it signed stay valid.
        ...(process.env.CHAT_TOKEN_PREVIOUS_KEY ? { [`${readProjectFile().name}:tokenPreviousKey`]: process.env.CHAT_TOKEN_PREVIOUS_KEY } : {}),
      },
    });
    const of = (type: string) => program.resources.filter((r) => r.type === type);

    const apis = of("aws:apigatewayv2/api:Api").filter((a) => a.inputs.protocolType === "WEBSOCKET");
    if (apis.length !== 1) throw new StartupError(`the program declares ${apis.length} WebSocket APIs; the local stack serves exactly one`);
    const api = apis[0];
    const stageResource = of("aws:apigatewayv2/stage:Stage").find((s) => s.inputs.apiId === api.id);
    if (!stageResource) throw new StartupError("the program declares no Stage for its WebSocket API");
    const stage = stageResource.inputs.name as string;

    const iam = options.iam === false ? undefined : newIamConfig(FAKE_ACCOUNT_ID, program.region, principalsOf(program.resources, options.policyEdits));
    const dynamodb = await startDynamoDBProcess({
      tables: of("aws:dynamodb/table:Table").map(tableSpec),
      dataDir: options.dataDir,
      region: program.region,
      iam,
    });
    cleanups.unshift(() => dynamodb.close());

    // Per process: two local stacks of one stack (npm start beside npm test) never share archives.
    const functionsDir = path.join(stateDir, `run-${process.pid}`, "functions");
    cleanups.push(async () => fs.rmSync(path.dirname(functionsDir), { recursive: true, force: true }));
    const functions = of("aws:lambda/function:Function");
    const invokeConfigs = of("aws:lambda/functionEventInvokeConfig:FunctionEventInvokeConfig");
    const specs: FunctionSpec[] = functions.map((fn) => ({
      name: fn.state.name,
      arn: fn.state.arn,
      archiveDir: writeArchive(program, fn, functionsDir),
      handler: fn.inputs.handler ?? "index.handler",
      environment: fn.inputs.environment?.variables ?? {},
      timeoutSeconds: fn.inputs.timeout ?? 3,
      memoryMb: fn.inputs.memorySize ?? 128,
      async: asyncConfig(invokeConfigs.find((c) => [fn.state.name, fn.state.arn].includes(c.inputs.functionName))),
    }));
    const lambdas = createLambdaRuntime({
      functions: specs,
      maxInstances: options.maxInstances,
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
    });
    cleanups.unshift(() => lambdas.close());

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
    const routes: RouteTarget[] = of("aws:apigatewayv2/route:Route")
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
        let authorizer: RouteTarget["authorizer"];
        if (route.inputs.authorizationType === "CUSTOM") {
          const declared = of("aws:apigatewayv2/authorizer:Authorizer").find((a) => a.id === route.inputs.authorizerId);
          const authorizerFn = functions.find((f) => f.state.invokeArn === declared?.inputs.authorizerUri);
          if (!declared || !authorizerFn) throw new StartupError(`route ${routeKey} names an authorizer the local stack cannot find`);
          if (declared.inputs.authorizerType !== "REQUEST") throw new StartupError(`route ${routeKey}: WebSocket APIs support REQUEST authorizers only`);
          authorizer = {
            functionName: authorizerFn.state.name,
            identitySources: declared.inputs.identitySources ?? [],
            invoke: invoker(authorizerFn, `${api.state.executionArn}/authorizers/${declared.id}`),
          };
        }
        return { routeKey, functionName: fn.state.name, twoWay, authorizer, invoke: invoker(fn, sourceArn) };
      });

    const gateway = createGateway(server, {
      api: { apiId: api.id, stage, domainName: `${host}:${port}` },
      methodArnPrefix: `arn:aws:execute-api:${program.region}:${FAKE_ACCOUNT_ID}:${api.id}/${stage}`,
      routeSelectionExpression: api.inputs.routeSelectionExpression,
      routes,
      idleTimeoutMs: options.idleTimeoutMs,
      maxDurationMs: options.maxDurationMs,
      loseAbnormalDisconnects: options.loseAbnormalDisconnects,
      log,
    });
    cleanups.unshift(() => gateway.close());
    const outputs = program.outputs as StackOutputs;
    const authEnabled = routes.some((r) => r.authorizer);
    const pageUrl = `http://${host}:${port}/`;
    const managementCalls: Record<string, number> = {};
    server.on("request", (req, res) => {
      const managementIam = iam ? { config: iam, apiId: api.id } : undefined;
      if (handleManagementRequest({ stage, gateway, latencyMs: options.managementLatencyMs, faults: options.managementFaults, calls: managementCalls, log, iam: managementIam }, req, res)) return;
      if (req.url === METRICS_PATH) return void serveMetrics(res, { dynamodb, management: managementCalls, lambda: lambdas });
      if (handleLambdaApiRequest({ runtime: lambdas, functionNames: specs.map((f) => f.name), log, iam }, req, res)) return;
      if (servePage({ url: outputs.url, authEnabled }, req, res)) return;
      answerPlainRequest(stage, req, res);
    });

    const outputsFile = options.outputsFile ?? path.join(stateDir, "outputs.json");
    fs.mkdirSync(path.dirname(outputsFile), { recursive: true });
    fs.writeFileSync(outputsFile, JSON.stringify(outputs, null, 2) + "\n");

    let stopped = false;
    return {
      port,
      tokenKey,
      tokenKeyFile,
      authEnabled,
      pageUrl,
      outputs,
      outputsFile,
      program,
      iam,
      dynamodb,
      lambdas,
      gateway,
      async stop() {
        if (stopped) return;
        stopped = true;
        for (const cleanup of cleanups) await cleanup();
      },
    };
  } catch (err) {
    for (const cleanup of cleanups) await cleanup().catch(() => undefined);
    throw err;
  }
}
