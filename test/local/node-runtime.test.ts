import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as path from "node:path";
import { createLambdaRuntime, FunctionSpec, LambdaRuntime } from "../../local/lambda";
import { LAMBDA_NODE_MAJOR, lambdaNode } from "../../local/node-runtime";
import { PROJECT_DIR } from "../../local/program";

const HANDLER = `
exports.handler = async (event) => {
  if (event.sleepMs) await new Promise((r) => setTimeout(r, event.sleepMs));
  return { version: process.version, execPath: process.execPath, sdkWarningOff: process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ?? null };
};`;

type Result = { version: string; execPath: string; sdkWarningOff: string | null };

const pkg = JSON.parse(fs.readFileSync(path.join(PROJECT_DIR, "package.json"), "utf8")) as { optionalDependencies?: Record<string, string> };
const platformPackage = `node-${process.platform}-${process.arch}`;
/** The exact Node 22 version package.json pins for this platform, if it pins one. */
const pinned = pkg.optionalDependencies?.[platformPackage];

describe("the Node the local Lambda instances run on", function () {
  this.timeout(30_000);
  let dir: string;
  let runtime: LambdaRuntime | undefined;
  let lines: string[];
  const spec: () => FunctionSpec = () => ({
    name: "node-fn",
    arn: "arn:aws:lambda:us-east-1:123456789012:function:node-fn",
    archiveDir: dir,
    handler: "__index.handler",
    environment: {},
    timeoutSeconds: 5,
    memoryMb: 128,
  });

  beforeEach(() => {
    fs.mkdirSync(path.join(PROJECT_DIR, ".local"), { recursive: true });
    dir = fs.mkdtempSync(path.join(PROJECT_DIR, ".local", "node-runtime-test-"));
    fs.writeFileSync(path.join(dir, "__index.js"), HANDLER);
    lines = [];
  });
  afterEach(async () => {
    await runtime?.close();
    runtime = undefined;
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it("package.json pins an exact Node 22 build for this platform, as an optional dependency", function () {
    if (!pinned) this.skip(); // another platform: no build is pinned for it, the fallback below applies
    assert.match(pinned!, new RegExp(`^${LAMBDA_NODE_MAJOR}\\.\\d+\\.\\d+$`));
  });

  it("runs instances on the pinned Node 22 build when its package is installed", async function () {
    if (!pinned) this.skip();
    const node = lambdaNode();
    assert.equal(node.pinned, true, `${platformPackage} is pinned but not installed or not runnable: ${node.notice}`);
    assert.equal(node.version, `v${pinned}`);
    assert.equal(lambdaNode(), node, "probed once per process");
    runtime = createLambdaRuntime({ functions: [spec()], baseEnv: {}, write: (l) => lines.push(l) });
    const out = await runtime.invoke("node-fn", {});
    const r = out.result as Result;
    assert.equal(r.version, `v${pinned}`);
    assert.equal(fs.realpathSync(r.execPath), fs.realpathSync(require.resolve(`${platformPackage}/bin/node`)));
    assert.equal(r.sdkWarningOff, null, "on Lambda's Node the instance environment carries no SDK warning switch, as on Lambda");
    assert.deepEqual(
      lines.filter((l) => /Lambda runs Node/.test(l)),
      [],
    );
  });

  it("falls back to this machine's Node when no build fits the platform, and says so once", async () => {
    const node = lambdaNode({ packageName: "node-nosuch-platform" });
    assert.equal(node.pinned, false);
    assert.equal(node.execPath, process.execPath);
    runtime = createLambdaRuntime({ functions: [spec()], baseEnv: {}, maxInstances: 2, write: (l) => lines.push(l), node });
    // Two instances start (two concurrent invocations), the notice is printed once.
    const outs = await Promise.all([runtime.invoke("node-fn", { sleepMs: 200 }), runtime.invoke("node-fn", { sleepMs: 200 })]);
    assert.equal(outs.filter((o) => o.coldStart).length, 2);
    for (const out of outs) assert.equal((out.result as Result).version, process.version);
    const notices = lines.filter((l) => /Lambda runs Node/.test(l));
    if (Number(process.version.slice(1).split(".")[0]) === LAMBDA_NODE_MAJOR) {
      assert.deepEqual(notices, []); // this machine's Node is already Lambda's major: nothing to say
    } else {
      assert.deepEqual(notices, [
        `Lambda runs Node ${LAMBDA_NODE_MAJOR}; no Node ${LAMBDA_NODE_MAJOR} build for ${process.platform}-${process.arch}: instances run on this machine's Node ${process.version}`,
      ]);
      assert.equal((outs[0].result as Result).sdkWarningOff, "true", "the SDK's per-instance Node warning is off: the notice said it once");
      assert.ok(!lines.some((l) => /NodeVersionSupportWarning/.test(l)));
    }
  });

  describe("a build that is installed but does not run here", () => {
    let modules: string;
    const fakeBuild = (name: string, binary: string | undefined) => {
      fs.mkdirSync(path.join(modules, "node_modules", name, "bin"), { recursive: true });
      fs.writeFileSync(path.join(modules, "node_modules", name, "package.json"), JSON.stringify({ name, version: "22.0.0", bin: { node: "bin/node" } }));
      if (binary !== undefined) fs.writeFileSync(path.join(modules, "node_modules", name, "bin", "node"), binary, { mode: 0o755 });
    };
    beforeEach(() => (modules = fs.mkdtempSync(path.join(PROJECT_DIR, ".local", "node-builds-"))));
    afterEach(() => fs.rmSync(modules, { recursive: true, force: true }));

    it("falls back when the binary cannot start (wrong libc or architecture, missing file)", () => {
      fakeBuild("node-broken", "\x7fELF not really a binary");
      fakeBuild("node-missing", undefined);
      for (const packageName of ["node-broken", "node-missing"]) {
        const node = lambdaNode({ packageName, paths: [modules] });
        assert.equal(node.pinned, false);
        assert.equal(node.execPath, process.execPath);
        if (node.notice) assert.match(node.notice, new RegExp(`the Node build in ${packageName} does not run on this`));
      }
    });

    it("falls back when the build is not Lambda's major", () => {
      fakeBuild("node-old", "#!/bin/sh\necho v20.0.0\n");
      const node = lambdaNode({ packageName: "node-old", paths: [modules] });
      assert.equal(node.pinned, false);
      if (node.notice) assert.match(node.notice, /node-old holds Node v20\.0\.0: instances run on this machine's Node/);
    });
  });
});
