/**
 * `npm run token -- --name alice [--rooms general,ops] [--ttl 1h] [--stack dev] [--local]`
 * mints a chat token for a stack and prints it (alone, so `$(npm run -s token -- …)` works).
 *
 * The signing key comes from $CHAT_TOKEN_KEY; else, with --local, from the local stack's
 * .local/<stack>/token-key; else from the stack's secret config (`pulumi config get tokenKey`).
 */
import { execFileSync } from "child_process";
import * as fs from "fs";
import * as path from "path";
import { parseArgs } from "util";
import { parse as parseYaml } from "yaml";
import { checkKey, mintToken, tokenAudience } from "../handlers/shared/tokens";

const USAGE = `usage: npm run token -- --name <name> [--rooms a,b] [--ttl 1h] [--stack dev] [--local]
  --name <name>    the name the token proves (1-32 letters, digits, _ . -)
  --rooms <a,b>    rooms the token may join (default: any)
  --ttl <n><unit>  lifetime: s, m, h or d (default 1h, at most 30d; the stack's
                   authorizer refuses tokens longer-lived than its tokenMaxLifetimeHours)
  --stack <name>   the stack it is for (its audience) and whose key signs it (default dev)
  --local          sign with the local stack's key (.local/<stack>/token-key)`;

const UNITS: Record<string, number> = { s: 1, m: 60, h: 3_600, d: 86_400 };
const MAX_TTL_SECONDS = 30 * 86_400;

export function parseTtl(text: string, maxSeconds = MAX_TTL_SECONDS): number {
  const match = /^(\d+)([smhd])$/.exec(text);
  const seconds = match ? Number(match[1]) * UNITS[match[2]] : NaN;
  if (!(seconds > 0 && seconds <= MAX_TTL_SECONDS)) throw new Error(`--ttl must look like 30m, 1h or 7d, at most 30d; got "${text}"`);
  if (seconds > maxSeconds) throw new Error(`--ttl ${text} is longer than the stack accepts (tokenMaxLifetimeHours: ${maxSeconds / 3_600} h); its authorizer would refuse the token`);
  return seconds;
}

/** The stack's tokenMaxLifetimeHours (Pulumi.<stack>.yaml, else Pulumi.yaml's default), in seconds. */
export function stackMaxLifetimeSeconds(stack: string, projectDir = path.resolve(__dirname, "..")): number {
  const read = (file: string) => (fs.existsSync(file) ? parseYaml(fs.readFileSync(file, "utf8")) : undefined) as Record<string, Record<string, unknown> | undefined> | undefined;
  const project = read(path.join(projectDir, "Pulumi.yaml"));
  const name = String(project?.name);
  const set = read(path.join(projectDir, `Pulumi.${stack}.yaml`))?.config?.[`${name}:tokenMaxLifetimeHours`];
  const declared = (project?.config?.tokenMaxLifetimeHours as { default?: unknown } | undefined)?.default;
  const hours = Number(set ?? declared);
  return Number.isInteger(hours) && hours > 0 ? hours * 3_600 : MAX_TTL_SECONDS;
}

function signingKey(stack: string, local: boolean): string {
  if (process.env.CHAT_TOKEN_KEY) return process.env.CHAT_TOKEN_KEY;
  if (local) {
    const file = path.resolve(__dirname, "..", ".local", stack, "token-key");
    if (!fs.existsSync(file)) throw new Error(`${file} does not exist: start the local stack first (npm start -- --stack ${stack})`);
    return fs.readFileSync(file, "utf8").trim();
  }
  try {
    return execFileSync("pulumi", ["config", "get", "tokenKey", "--stack", stack], { encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] }).trim();
  } catch (err) {
    throw new Error(`could not read the stack's tokenKey with the Pulumi CLI (${(err as Error).message.split("\n")[0]}); set $CHAT_TOKEN_KEY or pass --local`);
  }
}

/** The project's name, from Pulumi.yaml: with the stack, the token's audience. */
function projectName(): string {
  const name = (parseYaml(fs.readFileSync(path.resolve(__dirname, "..", "Pulumi.yaml"), "utf8")) as { name?: string })?.name;
  if (!name) throw new Error("Pulumi.yaml has no project name");
  return name;
}

function main() {
  const { values } = parseArgs({
    options: {
      name: { type: "string" },
      rooms: { type: "string" },
      ttl: { type: "string", default: "1h" },
      stack: { type: "string", default: "dev" },
      local: { type: "boolean", default: false },
      help: { type: "boolean", short: "h", default: false },
    },
  });
  if (values.help) return console.log(USAGE);
  if (!values.name) throw new Error(`--name is required\n\n${USAGE}`);
  const rooms = values.rooms?.split(",").map((r) => r.trim()).filter(Boolean);
  const issuedAt = Math.floor(Date.now() / 1000);
  const expiresAt = issuedAt + parseTtl(values.ttl!, stackMaxLifetimeSeconds(values.stack!));
  const key = checkKey(signingKey(values.stack!, values.local!));
  const audience = tokenAudience(projectName(), values.stack!);
  console.log(mintToken(key, { name: values.name, audience, issuedAt, expiresAt, ...(rooms?.length ? { rooms } : {}) }));
}

if (require.main === module) {
  try {
    main();
  } catch (err) {
    console.error(`error: ${(err as Error).message}`);
    process.exit(1);
  }
}
