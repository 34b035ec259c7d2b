import { chatError } from "./errors";

/**
 * Reads the handler settings that the program passes through `environment.variables`.
 * Called once per container, in each factory, so a misconfigured function fails at cold start
 * with a message naming the variable instead of misbehaving on every message.
 */
export function requireEnv(name: string, env: NodeJS.ProcessEnv = process.env): string {
  const value = env[name];
  if (value === undefined || value === "") {
    throw chatError("config", `environment variable ${name} is required but not set`, 500);
  }
  return value;
}

export function requireIntEnv(name: string, min: number, max: number, env: NodeJS.ProcessEnv = process.env): number {
  const raw = requireEnv(name, env);
  const value = Number(raw);
  if (!Number.isInteger(value) || value < min || value > max) {
    throw chatError("config", `environment variable ${name} must be an integer from ${min} to ${max}, got "${raw}"`, 500);
  }
  return value;
}

/** The environment variable names, declared once for the program and the handlers. */
export const ENV = {
  tableName: "CONNECTIONS_TABLE",
  roomIndexName: "ROOM_INDEX",
  managementEndpoint: "MANAGEMENT_ENDPOINT",
  maxMessageBytes: "MAX_MESSAGE_BYTES",
  fanoutConcurrency: "FANOUT_CONCURRENCY",
  fanoutChunkSize: "FANOUT_CHUNK_SIZE",
  fanoutFunction: "FANOUT_FUNCTION",
  messagesTable: "MESSAGES_TABLE",
  historyRetentionDays: "HISTORY_RETENTION_DAYS",
  rateLimitMessages: "RATE_LIMIT_MESSAGES",
  rateLimitWindowSeconds: "RATE_LIMIT_WINDOW_SECONDS",
  tokenKey: "TOKEN_KEY",
  tokenPreviousKey: "TOKEN_PREVIOUS_KEY",
  tokenAudience: "TOKEN_AUDIENCE",
  tokenMaxLifetimeSeconds: "TOKEN_MAX_LIFETIME_SECONDS",
  maxConnectionsPerName: "MAX_CONNECTIONS_PER_NAME",
  holeGraceMs: "HOLE_GRACE_MS",
  presenceLimit: "PRESENCE_LIMIT",
  typingIntervalMs: "TYPING_INTERVAL_MS",
  editWindowMs: "EDIT_WINDOW_MS",
} as const;

/** Ranges of the numeric settings the handlers read; the stack settings enforce the same ones. */
export const RANGES = {
  /**
   * The largest sendmessage or edit frame, in UTF-8 bytes (protocol.ts, validateFrameSize). At most
   * 32,000: within API Gateway's 32 KB frame quota whether KB is read as 1,024 or 1,000 bytes
   * (protocol.ts, API_FRAME_BYTES). At least 1,024: room for the largest envelope (an edit with a
   * 64-character id, about 130 bytes) and some text.
   */
  maxMessageBytes: { min: 1_024, max: 32_000 },
  fanoutConcurrency: { min: 1, max: 512 },
  fanoutChunkSize: { min: 2, max: 10_000 },
  historyRetentionDays: { min: 1, max: 365 },
  rateLimitMessages: { min: 1, max: 10_000 },
  rateLimitWindowSeconds: { min: 1, max: 3_600 },
  holeGraceMs: { min: 1_000, max: 3_600_000 },
  tokenMaxLifetimeSeconds: { min: 60, max: 365 * 86_400 },
  maxConnectionsPerName: { min: 1, max: 1_000 },
  presenceLimit: { min: 1, max: 1_000 },
  typingIntervalMs: { min: 1_000, max: 60_000 },
  editWindowMs: { min: 60_000, max: 7 * 86_400_000 },
} as const;

/**
 * How long after a later number was taken an empty number of a room's sequence is settled
 * (handlers/shared/sequence.ts): longer than any sendmessage can run (its timeout), plus a margin
 * for clock differences between Lambda hosts and a request in transit (assumed: Lambda hosts keep
 * NTP time to well under a second; the 5 s margin is our choice, not an AWS figure).
 */
export function holeGraceMsFor(lambdaTimeoutSeconds: number): number {
  return (lambdaTimeoutSeconds + 5) * 1000;
}
