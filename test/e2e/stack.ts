/**
 * Where the e2e suite gets its stack outputs:
 * - by default, a local stack it starts itself (`npm start` on a free port) and stops afterwards;
 * - with E2E_STACK=<name>, `pulumi stack output --json --stack <name>`: the same suite against AWS.
 */
import { DynamoDBClient } from "@aws-sdk/client-dynamodb";
import { DynamoDBDocumentClient, ScanCommand, UpdateCommand } from "@aws-sdk/lib-dynamodb";
import { ChildProcess, execFileSync, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { mintToken, TokenClaims } from "../../handlers/shared/tokens";
import type { StackOutputs } from "../../local/stack";

export const PROJECT_DIR = path.resolve(__dirname, "../..");

export interface E2EStack {
  outputs: StackOutputs;
  /** True for a local stack, where faults can be injected (lost $disconnect). */
  local: boolean;
  /** Every item in the connections table. */
  scanConnections(): Promise<Record<string, unknown>[]>;
  /** Moves these connections' `connectedAt` back by `ms`, as if they had connected that long ago. */
  backdateConnections(connectionIds: string[], ms: number): Promise<void>;
  /** Everything the local stack printed so far ("" for a deployed stack). */
  logs(): string;
  /** A token signed with the stack's key (for stacks with auth on). */
  token(claims: Partial<TokenClaims> & { name: string }): string;
  stop(): Promise<void>;
}

function connectionsTable(outputs: StackOutputs, endpoint?: string): Pick<E2EStack, "scanConnections" | "backdateConnections"> {
  const doc = DynamoDBDocumentClient.from(
    new DynamoDBClient(endpoint ? { endpoint, region: outputs.region, credentials: { accessKeyId: "local", secretAccessKey: "local" } } : { region: outputs.region }),
  );
  return {
    async scanConnections() {
      const items: Record<string, unknown>[] = [];
      let ExclusiveStartKey: Record<string, unknown> | undefined;
      do {
        const page = await doc.send(new ScanCommand({ TableName: outputs.tableName, ExclusiveStartKey, ConsistentRead: true }));
        items.push(...(page.Items ?? []));
        ExclusiveStartKey = page.LastEvaluatedKey;
      } while (ExclusiveStartKey);
      return items;
    },
    async backdateConnections(connectionIds, ms) {
      for (const connectionId of connectionIds) {
        await doc.send(
          new UpdateCommand({
            TableName: outputs.tableName,
            Key: { connectionId },
            UpdateExpression: "SET connectedAt = connectedAt - :ms",
            ConditionExpression: "attribute_exists(connectionId)",
            ExpressionAttributeValues: { ":ms": ms },
          }),
        );
      }
    },
  };
}

/** Signs a token for the stack (its `tokenAudience` output), valid for 10 minutes unless the claims say otherwise. */
function signer(key: () => string, outputs: StackOutputs) {
  return (claims: Partial<TokenClaims> & { name: string }) => {
    const now = Math.floor(Date.now() / 1000);
    return mintToken(key(), { audience: String(outputs.tokenAudience), issuedAt: now, expiresAt: now + 600, ...claims });
  };
}

async function deployedStack(name: string): Promise<E2EStack> {
  const outputs = JSON.parse(execFileSync("pulumi", ["stack", "output", "--json", "--stack", name], { cwd: PROJECT_DIR, encoding: "utf8" })) as StackOutputs;
  const key = () => process.env.CHAT_TOKEN_KEY ?? execFileSync("pulumi", ["config", "get", "tokenKey", "--stack", name], { cwd: PROJECT_DIR, encoding: "utf8" }).trim();
  return { outputs, local: false, ...connectionsTable(outputs), logs: () => "", token: signer(key, outputs), stop: async () => undefined };
}

/** Starts `local/cli.ts --port 0` as its own process and waits for its "Ready" line. */
export async function localStack(extraArgs: string[] = [], stack = "dev", env: Record<string, string> = {}): Promise<E2EStack> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "ws-chat-e2e-"));
  const tokenKey = `e2e-${randomBytes(24).toString("base64url")}`;
  const outputsFile = path.join(dir, "outputs.json");
  const child: ChildProcess = spawn(
    process.execPath,
    ["--require", "ts-node/register/transpile-only", "local/cli.ts", "--stack", stack, "--port", "0", "--outputs", outputsFile, ...extraArgs],
    { cwd: PROJECT_DIR, stdio: ["ignore", "pipe", "pipe"], env: { ...process.env, CHAT_TOKEN_KEY: tokenKey, ...env } },
  );
  let output = "";
  child.stdout!.on("data", (d) => (output += d));
  child.stderr!.on("data", (d) => (output += d));
  const exited = new Promise<number | null>((resolve) => child.once("exit", (code) => resolve(code)));
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`local stack not ready in 60 s:\n${output}`)), 60_000);
    // Only the newest output is searched, and not after "Ready": a busy stack prints megabytes.
    const check = () => {
      if (output.slice(-4_096).includes("Ready (pid")) {
        clearTimeout(timer);
        child.stdout!.off("data", check);
        resolve();
      }
    };
    child.stdout!.on("data", check);
    void exited.then((code) => {
      clearTimeout(timer);
      reject(new Error(`local stack exited with ${code}:\n${output}`));
    });
  });
  const outputs = JSON.parse(fs.readFileSync(outputsFile, "utf8")) as StackOutputs;
  const endpoint = /DynamoDB: (http:\/\/\S+)/.exec(output)?.[1];
  return {
    outputs,
    local: true,
    ...connectionsTable(outputs, endpoint),
    logs: () => output,
    token: signer(() => tokenKey, outputs),
    async stop() {
      child.kill("SIGTERM");
      const code = await exited;
      fs.rmSync(dir, { recursive: true, force: true });
      if (code !== 0) throw new Error(`local stack exited with ${code} on SIGTERM:\n${output.slice(-2000)}`);
    },
  };
}

/** The stack under test: E2E_STACK, or a local `dev` stack. */
export function e2eStack(): Promise<E2EStack> {
  const name = process.env.E2E_STACK;
  return name ? deployedStack(name) : localStack(["--lose-abnormal-disconnects"]);
}

/** A stack with auth on: E2E_AUTH_STACK (deployed), or a local `prod` stack. */
export function e2eAuthStack(): Promise<E2EStack> {
  const name = process.env.E2E_AUTH_STACK;
  return name ? deployedStack(name) : localStack([], "prod");
}

/** Polls until `check` passes or `timeoutMs` runs out; the last failure is rethrown. */
export async function eventually<T>(check: () => Promise<T> | T, timeoutMs = 5_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      return await check();
    } catch (err) {
      if (Date.now() > deadline) throw err;
      await new Promise((r) => setTimeout(r, 100));
    }
  }
}
