/**
 * Runs the Pulumi program (index.ts) under Pulumi's mocks, exactly as `pulumi up` would evaluate
 * it but with no engine and no cloud: the config comes from Pulumi.yaml's defaults overlaid with
 * Pulumi.<stack>.yaml, every resource registration is recorded with its inputs and mocked
 * outputs, and each function's archive is read back as the files Lambda would receive.
 *
 * Used by the unit tests (assertions on resources) and by the local stack (which serves what the
 * program declared). One program is loaded per process at a time.
 */
import * as pulumi from "@pulumi/pulumi";
import settingsModule = require("@pulumi/pulumi/runtime/settings");
import { createHash } from "crypto";
import * as fs from "fs";
import * as path from "path";
import { parse as parseYaml } from "yaml";

export const PROJECT_DIR = path.resolve(__dirname, "..");
export const FAKE_ACCOUNT_ID = "123456789012";

export interface RecordedResource {
  type: string;
  /** The Pulumi resource name (not the physical name). */
  name: string;
  id: string;
  inputs: Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any -- resource inputs are untyped JSON
  /** Inputs merged with the mocked provider outputs: what `resource.<prop>` resolves to. */
  state: Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any
  /** Dotted paths of the inputs that were secret Outputs (unwrapped in `inputs`). */
  secretInputs: string[];
}

/** A function's deployment package, file by file, as Lambda would unzip it. */
export type Archive = Map<string, Buffer>;

export interface LoadedProgram {
  project: string;
  stack: string;
  region: string;
  config: Record<string, string>;
  resources: RecordedResource[];
  outputs: Record<string, unknown>;
  /** Keyed by the Function's Pulumi resource name. */
  archives: Map<string, Archive>;
}

export interface LoadOptions {
  stack: string;
  /** What the mocked API reports as its `apiEndpoint`; the local stack passes its own ws:// URL. */
  apiEndpoint?: (apiId: string, region: string) => string;
  /** Extra or replacement config, as `<namespace>:<key>` → string. */
  configOverrides?: Record<string, string>;
  /** Secret config (as `pulumi config set --secret` gives the program), as `<namespace>:<key>` → string. */
  secrets?: Record<string, string>;
  projectDir?: string;
  /** Answers of data sources, by token, in place of the defaults below (a test's low quota, say). */
  dataSources?: Record<string, Record<string, unknown>>;
}

/**
 * The Lambda concurrency quota the local stack reports (Service Quotas L-B99A9384, which the
 * program's preflight reads: stacks/preflight.ts). 1,000 is the default quota of an AWS account
 * (https://docs.aws.amazon.com/lambda/latest/dg/gettingstarted-limits.html); the local runtime
 * enforces no account-wide limit of its own, only its instances per function (local/lambda.ts).
 */
export const LOCAL_CONCURRENCY_QUOTA = 1000;

export class ProgramError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "ProgramError";
  }
}

interface ProjectFile {
  name: string;
  config?: Record<string, { type?: string; default?: unknown; description?: string }>;
}

export function readProjectFile(projectDir = PROJECT_DIR): ProjectFile {
  const file = path.join(projectDir, "Pulumi.yaml");
  const project = parseYaml(fs.readFileSync(file, "utf8")) as ProjectFile;
  if (!project?.name) throw new ProgramError(`${file} has no project name`);
  return project;
}

export function availableStacks(projectDir = PROJECT_DIR): string[] {
  return fs
    .readdirSync(projectDir)
    .map((f) => /^Pulumi\.(.+)\.yaml$/.exec(f)?.[1])
    .filter((s): s is string => s !== undefined)
    .sort();
}

/** The config the Pulumi CLI would hand the program: project defaults, then the stack file. */
export function stackConfig(stack: string, projectDir = PROJECT_DIR): Record<string, string> {
  const project = readProjectFile(projectDir);
  const file = path.join(projectDir, `Pulumi.${stack}.yaml`);
  if (!fs.existsSync(file)) {
    throw new ProgramError(`no stack "${stack}": ${file} does not exist (stacks: ${availableStacks(projectDir).join(", ")})`);
  }
  const config: Record<string, string> = {};
  for (const [key, spec] of Object.entries(project.config ?? {})) {
    if (spec.default !== undefined) config[key.includes(":") ? key : `${project.name}:${key}`] = stringify(spec.default);
  }
  const stackFile = (parseYaml(fs.readFileSync(file, "utf8")) ?? {}) as { config?: Record<string, unknown> };
  for (const [key, value] of Object.entries(stackFile.config ?? {})) {
    if (value && typeof value === "object" && "secure" in value) {
      throw new ProgramError(`${file}: ${key} is an encrypted secret, which only the Pulumi CLI can decrypt; pass it as an override`);
    }
    config[key] = stringify(value);
  }
  return config;
}

function stringify(value: unknown): string {
  return typeof value === "string" ? value : JSON.stringify(value);
}

/** A stable, realistic-looking id: the same program gives the same ids on every load. */
/** Pulumi's wire marker for a secret value: `{[SIG_KEY]: SECRET_SIG, value}`. */
const SIG_KEY = "4dabf18193072939515e22adb298388d";
const SECRET_SIG = "1b47061264138c4ac30d75fd1eb44270";

/** Replaces secret markers with their values, noting where they were. */
function unwrapSecrets(value: unknown, path: string, found: string[]): unknown {
  if (Array.isArray(value)) return value.map((v, i) => unwrapSecrets(v, `${path}[${i}]`, found));
  if (value === null || typeof value !== "object" || value instanceof pulumi.asset.Asset || value instanceof pulumi.asset.Archive) return value;
  const record = value as Record<string, unknown>;
  if (record[SIG_KEY] === SECRET_SIG) {
    found.push(path);
    return unwrapSecrets(record.value, path, found);
  }
  return Object.fromEntries(Object.entries(record).map(([k, v]) => [k, unwrapSecrets(v, path ? `${path}.${k}` : k, found)]));
}

function fakeId(seed: string, length: number): string {
  return createHash("sha256").update(seed).digest("hex").replace(/[^a-z0-9]/g, "").slice(0, length);
}

/**
 * A stream's label: the time it was enabled, in ISO 8601 without the zone, as in AWS's stream ARNs
 * (`…:table/orders/stream/2020-06-03T01:49:52.333`). Derived from the table's name, so every load
 * of the program gives the same ARN (a role's policy and the mapping name the same stream).
 */
function streamLabel(table: string): string {
  const sinceEpoch = Date.UTC(2025, 0, 1) + (parseInt(fakeId(`stream/${table}`, 8), 16) % (365 * 86_400_000));
  return new Date(sinceEpoch).toISOString().replace(/Z$/, "");
}

/** A UUID-shaped id, stable per name (an event source mapping's `uuid`). */
function fakeUuid(seed: string): string {
  const hex = createHash("sha256").update(seed).digest("hex");
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-4${hex.slice(13, 16)}-a${hex.slice(17, 20)}-${hex.slice(20, 32)}`;
}

function mockedOutputs(type: string, name: string, inputs: Record<string, any>, id: string, region: string, options: LoadOptions): Record<string, unknown> {
  const physical = (inputs.name as string | undefined) ?? `${name}-${fakeId(name, 7)}`;
  const arnPrefix = (service: string) => `arn:aws:${service}:${region}:${FAKE_ACCOUNT_ID}`;
  switch (type) {
    case "aws:dynamodb/table:Table": {
      const arn = `${arnPrefix("dynamodb")}:table/${physical}`;
      // A table without a stream has no stream ARN (the provider leaves it empty).
      const label = inputs.streamEnabled ? streamLabel(physical) : undefined;
      return { name: physical, arn, ...(label ? { streamArn: `${arn}/stream/${label}`, streamLabel: label } : {}) };
    }
    case "aws:lambda/eventSourceMapping:EventSourceMapping": {
      const uuid = fakeUuid(`esm/${name}`);
      const fn = String(inputs.functionName ?? "");
      return { uuid, arn: `${arnPrefix("lambda")}:event-source-mapping:${uuid}`, functionArn: fn.startsWith("arn:") ? fn : `${arnPrefix("lambda")}:function:${fn}`, state: "Enabled" };
    }
    case "aws:apigatewayv2/api:Api":
      return {
        apiEndpoint: options.apiEndpoint?.(id, region) ?? `wss://${id}.execute-api.${region}.amazonaws.com`,
        executionArn: `${arnPrefix("execute-api")}:${id}`,
        arn: `arn:aws:apigateway:${region}::/apis/${id}`,
      };
    case "aws:lambda/function:Function": {
      const arn = `${arnPrefix("lambda")}:function:${physical}`;
      return { name: physical, arn, invokeArn: `arn:aws:apigateway:${region}:lambda:path/2015-03-31/functions/${arn}/invocations` };
    }
    case "aws:iam/role:Role":
      return { name: physical, arn: `arn:aws:iam::${FAKE_ACCOUNT_ID}:role/${physical}` };
    case "aws:s3/bucket:Bucket":
      return { bucket: physical, arn: `arn:aws:s3:::${physical}`, bucketRegionalDomainName: `${physical}.s3.${region}.amazonaws.com` };
    case "aws:cloudfront/distribution:Distribution":
      return { arn: `arn:aws:cloudfront::${FAKE_ACCOUNT_ID}:distribution/${id}`, domainName: `${id.toLowerCase()}.cloudfront.net` };
    case "aws:sns/topic:Topic":
      return { name: physical, arn: `${arnPrefix("sns")}:${physical}` };
    case "aws:sqs/queue:Queue":
      return { name: physical, arn: `${arnPrefix("sqs")}:${physical}`, url: `https://sqs.${region}.amazonaws.com/${FAKE_ACCOUNT_ID}/${physical}` };
    case "aws:cloudwatch/logGroup:LogGroup":
      return { name: physical, arn: `${arnPrefix("logs")}:log-group:${physical}` };
    default:
      return inputs.name === undefined ? {} : { name: physical };
  }
}

function idFor(type: string, name: string): string {
  switch (type) {
    case "aws:apigatewayv2/api:Api":
      return fakeId(`api/${name}`, 10);
    case "aws:apigatewayv2/integration:Integration":
    case "aws:apigatewayv2/route:Route":
    case "aws:apigatewayv2/deployment:Deployment":
      return fakeId(`${type}/${name}`, 7);
    case "aws:cloudfront/distribution:Distribution":
      return `E${fakeId(`${type}/${name}`, 13).toUpperCase()}`;
    default:
      return `${name}-id`;
  }
}

async function readArchive(code: unknown): Promise<Archive> {
  const files: Archive = new Map();
  if (!(code instanceof pulumi.asset.AssetArchive)) return files;
  const assets = await code.assets;
  for (const [file, entry] of Object.entries(assets)) {
    const asset = await entry;
    if (asset instanceof pulumi.asset.StringAsset) files.set(file, Buffer.from(await asset.text, "utf8"));
    else if (asset instanceof pulumi.asset.FileAsset) files.set(file, fs.readFileSync(await asset.path));
    else if (asset instanceof pulumi.asset.FileArchive) files.set(file, Buffer.from(`<archive ${await asset.path}>`));
  }
  return files;
}

function outputValue<T>(value: pulumi.Input<T>, label: string, timeoutMs: number): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const timer = setTimeout(() => reject(new ProgramError(`stack output "${label}" did not resolve within ${timeoutMs} ms`)), timeoutMs);
    pulumi.output(value).apply((v) => {
      clearTimeout(timer);
      resolve(v as T);
      return v;
    });
  });
}

/** Forgets the project's own modules, so the next `require` evaluates the program afresh. */
function forgetProjectModules(projectDir: string): void {
  const modules = path.join(projectDir, "node_modules") + path.sep;
  for (const file of Object.keys(require.cache)) {
    if (file.startsWith(projectDir + path.sep) && !file.startsWith(modules)) delete require.cache[file];
  }
}

export async function loadProgram(options: LoadOptions): Promise<LoadedProgram> {
  const projectDir = options.projectDir ?? PROJECT_DIR;
  const project = readProjectFile(projectDir).name;
  const config = { ...stackConfig(options.stack, projectDir), ...options.configOverrides, ...options.secrets };
  const region = config["aws:region"];
  if (!region) throw new ProgramError(`Pulumi.${options.stack}.yaml must set aws:region`);

  const resources: RecordedResource[] = [];
  const mocks: pulumi.runtime.Mocks = {
    newResource({ type, name, inputs: wireInputs }) {
      const id = idFor(type, name);
      const secretInputs: string[] = [];
      const inputs = unwrapSecrets(wireInputs, "", secretInputs) as Record<string, any>;
      const state = { ...inputs, ...mockedOutputs(type, name, inputs, id, region, options) };
      resources.push({ type, name, id, inputs, state, secretInputs });
      return { id, state };
    },
    call({ token, inputs }) {
      const answer = options.dataSources?.[token];
      if (answer) return answer;
      switch (token) {
        case "aws:index/getRegion:getRegion":
          return { region, name: region, id: region, endpoint: `ec2.${region}.amazonaws.com`, description: region };
        case "aws:index/getCallerIdentity:getCallerIdentity":
          return { accountId: FAKE_ACCOUNT_ID, arn: `arn:aws:iam::${FAKE_ACCOUNT_ID}:user/local`, userId: "LOCAL", id: FAKE_ACCOUNT_ID };
        case "aws:index/getPartition:getPartition":
          return { partition: "aws", dnsSuffix: "amazonaws.com", id: "aws" };
        case "aws:servicequotas/getServiceQuota:getServiceQuota":
          if (inputs.serviceCode !== "lambda" || inputs.quotaCode !== "L-B99A9384") throw new ProgramError(`the local stack knows only Lambda's concurrency quota, not ${inputs.serviceCode}/${inputs.quotaCode}`);
          return { ...inputs, id: `${inputs.serviceCode}/${inputs.quotaCode}`, region, value: LOCAL_CONCURRENCY_QUOTA, defaultValue: LOCAL_CONCURRENCY_QUOTA, adjustable: true, globalQuota: false, quotaName: "Concurrent executions", serviceName: "AWS Lambda" };
        default:
          return inputs;
      }
    },
  };

  // Serialization failures surface as unhandled rejections, not as thrown errors; the first one
  // ends the load at once (the outputs that depend on it would never resolve).
  const failures: unknown[] = [];
  let fail!: (reason: unknown) => void;
  const failed = new Promise<never>((_, reject) => (fail = reject));
  failed.catch(() => undefined);
  const onRejection = (reason: unknown) => {
    failures.push(reason);
    fail(new ProgramError(`the program failed under mocks: ${(reason as Error)?.message ?? String(reason)}`, { cause: reason }));
  };
  process.on("unhandledRejection", onRejection);
  const cwd = process.cwd();
  try {
    process.chdir(projectDir); // closure serialization resolves package.json from here
    pulumi.runtime.setAllConfig(config, Object.keys(options.secrets ?? {}));
    await pulumi.runtime.setMocks(mocks, project, options.stack, false);
    forgetProjectModules(projectDir);
    let program: Record<string, unknown>;
    try {
      program = require(path.join(projectDir, "index.ts"));
    } catch (err) {
      throw new ProgramError(`the program failed under mocks: ${(err as Error).message}`, { cause: err });
    }
    const outputs: Record<string, unknown> = {};
    for (const [key, value] of Object.entries(program)) {
      if (value !== undefined) outputs[key] = await Promise.race([outputValue(value as pulumi.Input<unknown>, key, 60_000), failed]); // as the CLI, drop undefined
    }
    await pulumi.runtime.awaitStackRegistrations?.();
    // Resources no output depends on (a function and the mapping that reads a stream, say) may still
    // be registering: wait for every outstanding registration, as the CLI does before it ends a run.
    // (Found under load: the presence function was missing from one load's archives.) waitForRPCs is
    // exported by @pulumi/pulumi's runtime/settings but not typed as public API (3.270).
    await (settingsModule as { waitForRPCs?: () => Promise<void> }).waitForRPCs?.();

    const archives = new Map<string, Archive>();
    for (const r of resources.filter((r) => r.type === "aws:lambda/function:Function")) {
      archives.set(r.name, await readArchive(r.inputs.code));
    }
    // Let any pending serialization rejection land before judging the load.
    await new Promise((resolve) => setImmediate(resolve));
    if (failures.length > 0) {
      throw new ProgramError(`the program failed under mocks: ${(failures[0] as Error)?.message ?? String(failures[0])}`, { cause: failures[0] });
    }
    return { project, stack: options.stack, region, config, resources, outputs, archives };
  } finally {
    process.chdir(cwd);
    process.off("unhandledRejection", onRejection);
  }
}
