import assert from "node:assert/strict";
import * as fs from "node:fs";
import { createServer, Server } from "node:http";
import type { AddressInfo } from "node:net";
import * as path from "node:path";
import { createLambdaRuntime, LambdaRuntime } from "../../local/lambda";
import { handleLambdaApiRequest } from "../../local/lambda-api";
import { PROJECT_DIR } from "../../local/program";

describe("local Lambda Invoke API", function () {
  this.timeout(30_000);
  let dir: string;
  let runtime: LambdaRuntime;
  let server: Server;
  let base: string;

  before(async () => {
    fs.mkdirSync(path.join(PROJECT_DIR, ".local"), { recursive: true });
    dir = fs.mkdtempSync(path.join(PROJECT_DIR, ".local", "invoke-test-"));
    fs.writeFileSync(path.join(dir, "__index.js"), `exports.handler = async (event) => { if (event.fail) throw new TypeError("bad"); return { got: event }; };`);
    runtime = createLambdaRuntime({
      functions: [{ name: "ws-chat-fanout-dev", arn: "arn:aws:lambda:us-east-1:123456789012:function:ws-chat-fanout-dev", archiveDir: dir, handler: "__index.handler", environment: {}, timeoutSeconds: 3, memoryMb: 128 }],
      baseEnv: {},
      write: () => undefined,
    });
    server = createServer((req, res) => {
      if (!handleLambdaApiRequest({ runtime, functionNames: ["ws-chat-fanout-dev"] }, req, res)) res.writeHead(404).end();
    });
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    base = `http://127.0.0.1:${(server.address() as AddressInfo).port}/2015-03-31/functions`;
  });
  after(async () => {
    await runtime.close();
    server.closeAllConnections();
    await new Promise((resolve) => server.close(resolve));
    fs.rmSync(dir, { recursive: true, force: true });
  });

  const invoke = (name: string, body: string, type?: string) =>
    fetch(`${base}/${encodeURIComponent(name)}/invocations`, { method: "POST", body, headers: type ? { "X-Amz-Invocation-Type": type } : {} });

  it("answers 202 at once for InvocationType Event and runs the function afterwards", async () => {
    const res = await invoke("ws-chat-fanout-dev", '{"n":1}', "Event");
    assert.equal(res.status, 202);
    await runtime.drainAsync();
    assert.deepEqual(runtime.reports("ws-chat-fanout-dev").at(-1)?.result, { got: { n: 1 } });
  });

  it("answers RequestResponse with the result, by name, ARN or partial ARN", async () => {
    for (const name of ["ws-chat-fanout-dev", "arn:aws:lambda:us-east-1:123456789012:function:ws-chat-fanout-dev", "123456789012:function:ws-chat-fanout-dev:$LATEST"]) {
      const res = await invoke(name, '{"n":2}');
      assert.equal(res.status, 200, name);
      assert.deepEqual(await res.json(), { got: { n: 2 } });
    }
  });

  it("marks a failed synchronous run with X-Amz-Function-Error", async () => {
    const res = await invoke("ws-chat-fanout-dev", '{"fail":true}');
    assert.equal(res.headers.get("x-amz-function-error"), "Unhandled");
    assert.equal(((await res.json()) as { errorType: string }).errorType, "TypeError");
  });

  const errors: [string, () => Promise<Response>, number, string][] = [
    ["an unknown function", () => invoke("nope", "{}"), 404, "ResourceNotFoundException"],
    ["a body that is not JSON", () => invoke("ws-chat-fanout-dev", "{oops", "Event"), 400, "InvalidRequestContentException"],
    ["an unknown invocation type", () => invoke("ws-chat-fanout-dev", "{}", "Later"), 400, "InvalidParameterValueException"],
    ["an asynchronous payload over 1 MB", () => invoke("ws-chat-fanout-dev", JSON.stringify({ x: "x".repeat(1024 * 1024) }), "Event"), 413, "RequestTooLargeException"],
  ];
  for (const [name, call, status, type] of errors) {
    it(`answers ${name} with ${status} ${type}, as Lambda does`, async () => {
      const res = await call();
      assert.equal(res.status, status);
      assert.equal(res.headers.get("x-amzn-errortype"), type);
    });
  }
});
