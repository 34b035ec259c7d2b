/**
 * The per-environment settings: declared once here (type, range, description), validated in one
 * pass, and reported with the key and the allowed values when wrong. Defaults live in Pulumi.yaml,
 * where the Pulumi CLI applies them; a test keeps that file and this schema in step.
 *
 * Pure: no Pulumi import, so the schema can be checked without an engine. `index.ts` beside this
 * file is the only reader of `pulumi.Config`.
 */
import { RANGES } from "../handlers/shared/env";

/** CloudWatch Logs accepts only these retention periods (PutRetentionPolicy). 0 ("never") is not offered. */
export const LOG_RETENTION_DAYS = [1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653] as const;
export const API_LOGGING_LEVELS = ["OFF", "ERROR", "INFO"] as const;
/** Lambda's two instruction sets (FunctionArgs.architectures); the handlers are plain JavaScript and run on either. */
export const LAMBDA_ARCHITECTURES = ["arm64", "x86_64"] as const;

interface IntegerSpec { type: "integer"; min: number; max: number; oneOf?: readonly number[]; description: string }
interface BooleanSpec { type: "boolean"; description: string }
interface StringSpec { type: "string"; pattern?: RegExp; oneOf?: readonly string[]; rule: string; description: string }
type Spec = IntegerSpec | BooleanSpec | StringSpec;

type ValueOf<S> = S extends IntegerSpec ? number : S extends BooleanSpec ? boolean : string;

/** One function's reserved concurrency (infra/function.ts): 0 leaves it unreserved. */
const reservedConcurrency = (what: string): IntegerSpec => ({
  type: "integer", min: 0, max: 10000,
  description: `Reserved concurrency of ${what}: the most instances it may run at once, also guaranteed to it; 0 leaves it unreserved.`,
});

export const SETTINGS_SCHEMA = {
  stageName: {
    type: "string",
    pattern: /^[A-Za-z0-9_-]{1,128}$/,
    rule: "1-128 characters of A-Z, a-z, 0-9, _ or -",
    description: "API Gateway stage name; the last path segment of the WebSocket URL.",
  },
  throttlingBurstLimit: {
    type: "integer", min: 0, max: 5000,
    description: "Stage-wide burst limit for messages, in requests (the account default is 5000).",
  },
  throttlingRateLimit: {
    type: "integer", min: 0, max: 10000,
    description: "Stage-wide steady message rate limit, in requests per second (the account default is 10000).",
  },
  logRetentionDays: {
    type: "integer", min: 1, max: 3653, oneOf: LOG_RETENTION_DAYS,
    description: "Retention of every function's log group and of the API access log group, in days.",
  },
  lambdaMemoryMb: {
    type: "integer", min: 128, max: 10240,
    description: "Memory of each function, in MB; Lambda gives CPU in proportion.",
  },
  lambdaArchitecture: {
    type: "string", oneOf: LAMBDA_ARCHITECTURES, rule: "one of arm64, x86_64",
    description: "Instruction set of every function: arm64 (Graviton) costs 20% less per GB-second than x86_64.",
  },
  lambdaTimeoutSeconds: {
    type: "integer", min: 1, max: 29,
    description: "Timeout of each function, in seconds; API Gateway's integration timeout is 29 s.",
  },
  tableProtection: {
    type: "boolean",
    description: "Point-in-time recovery and deletion protection on both tables (connections and messages).",
  },
  maxMessageBytes: {
    type: "integer", min: RANGES.maxMessageBytes.min, max: RANGES.maxMessageBytes.max,
    description: "Largest accepted sendmessage or edit frame, in UTF-8 bytes: the message in its JSON envelope, escapes included (at most 32000, within API Gateway's 32 KB frame).",
  },
  fanoutConcurrency: {
    type: "integer", min: RANGES.fanoutConcurrency.min, max: RANGES.fanoutConcurrency.max,
    description: "Posts in flight at once during one sendmessage fan-out (and the size of its keep-alive socket pool).",
  },
  fanoutChunkSize: {
    type: "integer", min: RANGES.fanoutChunkSize.min, max: RANGES.fanoutChunkSize.max,
    description: "Recipients per fan-out chunk: a room larger than this is spread over parallel fanout runs, one chunk each.",
  },
  benchSeedFanout: {
    type: "boolean",
    description: "Benchmark only: route sendmessage to the seed's algorithm (one Scan, unbounded Promise.all, default client) for npm run bench. Refused on prod.",
  },
  apiLoggingLevel: {
    type: "string", oneOf: API_LOGGING_LEVELS, rule: "one of OFF, ERROR, INFO",
    description: "API Gateway execution logging level for the stage.",
  },
  historyRetentionDays: {
    type: "integer", min: RANGES.historyRetentionDays.min, max: RANGES.historyRetentionDays.max,
    description: "How long messages are kept for history replay and client ids for deduplication, in days.",
  },
  rateLimitMessages: {
    type: "integer", min: RANGES.rateLimitMessages.min, max: RANGES.rateLimitMessages.max,
    description: "Messages one connection may send per rate-limit window; more are refused with rate_limited.",
  },
  rateLimitWindowSeconds: {
    type: "integer", min: RANGES.rateLimitWindowSeconds.min, max: RANGES.rateLimitWindowSeconds.max,
    description: "Length of the per-connection rate-limit window, in seconds.",
  },
  authEnabled: {
    type: "boolean",
    description: "Require a signed token (?token=) on connect, checked by a $connect authorizer; needs the secret tokenKey.",
  },
  tokenMaxLifetimeHours: {
    type: "integer", min: 1, max: 8760,
    description: "Longest token lifetime (expiry minus issue time) the authorizer accepts, in hours; longer tokens are refused whoever signed them.",
  },
  maxConnectionsPerName: {
    type: "integer", min: RANGES.maxConnectionsPerName.min, max: RANGES.maxConnectionsPerName.max,
    description: "With auth on, open connections one verified name may hold at once; more are refused at $connect with 429.",
  },
  presenceLimit: {
    type: "integer", min: RANGES.presenceLimit.min, max: RANGES.presenceLimit.max,
    description: "Connections a room may hold with presence on: above it, joins and leaves are not recorded, typing is dropped and members answers with a count.",
  },
  typingIntervalSeconds: {
    type: "integer", min: RANGES.typingIntervalMs.min / 1000, max: RANGES.typingIntervalMs.max / 1000,
    description: "Shortest interval between two typing signals of one connection, in seconds; the surplus is dropped silently.",
  },
  editWindowMinutes: {
    type: "integer", min: RANGES.editWindowMs.min / 60_000, max: RANGES.editWindowMs.max / 60_000,
    description: "How long after sending its author may edit a message, in minutes (deleting has no limit).",
  },
  reservedConcurrencyConnect: reservedConcurrency("$connect (new connections)"),
  reservedConcurrencyDisconnect: reservedConcurrency("$disconnect"),
  reservedConcurrencyAuthorizer: reservedConcurrency("the $connect authorizer"),
  reservedConcurrencySendMessage: reservedConcurrency("sendmessage (messages stored and fanned out)"),
  reservedConcurrencyFanout: reservedConcurrency("fanout (chunks of large rooms)"),
  reservedConcurrencyHistory: reservedConcurrency("history (replays)"),
  reservedConcurrencyDefault: reservedConcurrency("$default (echo and usage answers)"),
  reservedConcurrencyPresence: reservedConcurrency("presence (joins and leaves from the connections stream)"),
  reservedConcurrencyTyping: reservedConcurrency("typing (typing signals)"),
  reservedConcurrencyMembers: reservedConcurrency("members (member lists)"),
  reservedConcurrencyRead: reservedConcurrency("read (read markers)"),
  alarmsEnabled: {
    type: "boolean",
    description: "CloudWatch alarms on Lambda errors and throttles, API integration and execution errors, and DynamoDB throttling.",
  },
  alarmTopic: {
    type: "boolean",
    description: "Create an SNS topic that the alarms notify (subscribe to it after deploying).",
  },
  tracingEnabled: {
    type: "boolean",
    description: "X-Ray active tracing on every function.",
  },
  webEnabled: {
    type: "boolean",
    description: "Publish the chat page: a private S3 bucket behind CloudFront (origin access control); its address is the webUrl output.",
  },
  stageLogging: {
    type: "boolean",
    description: "Execution logging (at apiLoggingLevel) and access logging on the stage. API Gateway refuses both until the account and Region has its CloudWatch role (docs/account-settings.md).",
  },
  manageApiGatewayAccount: {
    type: "boolean",
    description: "Let this stack set API Gateway's account-wide CloudWatch role (kept when the stack is destroyed). Off: set it once per account and Region (docs/account-settings.md).",
  },
} as const satisfies Record<string, Spec>;

export type SettingKey = keyof typeof SETTINGS_SCHEMA;
export type StackSettings = { readonly [K in SettingKey]: ValueOf<(typeof SETTINGS_SCHEMA)[K]> } & {
  readonly apiLoggingLevel: (typeof API_LOGGING_LEVELS)[number];
  readonly lambdaArchitecture: (typeof LAMBDA_ARCHITECTURES)[number];
};

/** Reads one raw (string) value, as `pulumi.Config.get` does. */
export type ConfigSource = (key: SettingKey) => string | undefined;

export class SettingsError extends Error {
  constructor(readonly problems: string[]) {
    super(`invalid stack settings:\n  - ${problems.join("\n  - ")}`);
    this.name = "SettingsError";
  }
}

function parseOne(namespace: string, key: SettingKey, spec: Spec, raw: string | undefined): { value?: unknown; problem?: string } {
  const name = `${namespace}:${key}`;
  if (raw === undefined) {
    return { problem: `${name} is not set (Pulumi.yaml declares its default; set it with \`pulumi config set ${key} <value>\`)` };
  }
  switch (spec.type) {
    case "integer": {
      const value = Number(raw.trim());
      const range = spec.oneOf ? `one of ${spec.oneOf.join(", ")}` : `an integer from ${spec.min} to ${spec.max}`;
      if (raw.trim() === "" || !Number.isInteger(value) || value < spec.min || value > spec.max || (spec.oneOf && !spec.oneOf.includes(value))) {
        return { problem: `${name} must be ${range}; got ${JSON.stringify(raw)}` };
      }
      return { value };
    }
    case "boolean":
      if (raw !== "true" && raw !== "false") return { problem: `${name} must be true or false; got ${JSON.stringify(raw)}` };
      return { value: raw === "true" };
    case "string":
      if ((spec.pattern && !spec.pattern.test(raw)) || (spec.oneOf && !spec.oneOf.includes(raw))) {
        return { problem: `${name} must be ${spec.rule}; got ${JSON.stringify(raw)}` };
      }
      return { value: raw };
  }
}

/** Parses and validates every setting, reporting all problems at once. */
export function parseSettings(namespace: string, source: ConfigSource): StackSettings {
  const settings: Record<string, unknown> = {};
  const problems: string[] = [];
  for (const [key, spec] of Object.entries(SETTINGS_SCHEMA) as [SettingKey, Spec][]) {
    const { value, problem } = parseOne(namespace, key, spec, source(key));
    if (problem) problems.push(problem);
    else settings[key] = value;
  }
  if (problems.length > 0) throw new SettingsError(problems);
  return settings as StackSettings;
}
