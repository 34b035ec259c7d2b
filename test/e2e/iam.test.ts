/**
 * IAM and SigV4 in the local stack (README, "What the local stack emulates"): a function whose role
 * lacks one statement fails exactly as on AWS, with AWS's error in its log; a request with a bad
 * signature is refused with each service's answer, for the unmodified SDK.
 */
import { ApiGatewayManagementApiClient, PostToConnectionCommand } from "@aws-sdk/client-apigatewaymanagementapi";
import { DynamoDBClient, ListTablesCommand } from "@aws-sdk/client-dynamodb";
import assert from "node:assert/strict";
import { signRequest } from "../../handlers/shared/aws-http";
import { issueCredentials, SIGNATURE_MISMATCH } from "../../local/iam";
import { LocalStack, LocalStackOptions, startLocalStack } from "../../local/stack";
import { Client } from "./clients";

/** A local stack whose log can be waited on, line by line. */
async function watchedStack(options: Partial<LocalStackOptions> = {}) {
  const lines: string[] = [];
  const waiters: { match: (line: string) => boolean; resolve: (line: string) => void }[] = [];
  const log = (line: string) => {
    lines.push(line);
    for (const w of waiters.splice(0)) (w.match(line) ? w.resolve(line) : waiters.push(w));
  };
  const stack = await startLocalStack({ stack: "dev", port: 0, log, ...options });
  const logged = (match: (line: string) => boolean) => {
    const seen = lines.find(match);
    return seen ? Promise.resolve(seen) : new Promise<string>((resolve) => waiters.push({ match, resolve }));
  };
  return { stack, logged };
}

const fn = (stack: LocalStack, part: string) => String(stack.program.resources.find((r) => r.type === "aws:lambda/function:Function" && String(r.state.name).includes(part))!.state.name);
const roleOf = (stack: LocalStack, part: string) => stack.iam!.principals.find((p) => p.functionName.includes(part))!.roleName;

describe("local IAM: a role missing one statement fails as on AWS", function () {
  this.timeout(120_000);

  it("must refuse sendmessage's posts without PostToMembers: @connections answers 403 AccessDeniedException, worded as AWS words it", async () => {
    const { stack, logged } = await watchedStack({ policyEdits: [{ function: "sendmessage", dropSid: "PostToMembers" }] });
    const clients: Client[] = [];
    try {
      const room = `iam-${Date.now()}`;
      for (const name of ["ann", "bo"]) clients.push(await Client.open(stack.outputs.url, { room, name }));
      const [ann, bo] = clients;
      const boId = await bo.connectionId();
      ann.send({ action: "sendmessage", message: "denied", id: "iam-1" });
      const sendmessage = fn(stack, "sendmessage");
      const apiId = stack.program.resources.find((r) => r.type === "aws:apigatewayv2/api:Api")!.id;
      const arn = `arn:aws:execute-api:${stack.program.region}:123456789012:${apiId}/dev/POST/@connections/${boId}`;
      const expected = `User: arn:aws:sts::123456789012:assumed-role/${roleOf(stack, "sendmessage")}/${sendmessage} is not authorized to perform: execute-api:ManageConnections on resource: ${arn} because no identity-based policy allows the execute-api:ManageConnections action`;
      const refused = await logged((l) => l.startsWith(`[management] POST ${boId} refused:`));
      assert.deepEqual(JSON.parse(refused.slice(refused.indexOf("{"))), { message: expected });
      // The function's own log shows the error its post got, as CloudWatch would on AWS.
      const failed = await logged((l) => l.startsWith(`[${sendmessage}]`) && l.includes('"delivery failed"') && l.includes(boId));
      assert.match(failed, /AccessDeniedException: User: arn:aws:sts::123456789012:assumed-role\//);
      assert.equal(bo.frames.some((f) => f.includes("denied")), false);
    } finally {
      await Promise.all(clients.map((c) => c.close().catch(() => undefined)));
      await stack.stop();
    }
  });

  it("must refuse history's reads without ReadHistory: DynamoDB answers 400 AccessDeniedException, and the caller gets unavailable", async () => {
    const { stack, logged } = await watchedStack({ policyEdits: [{ function: "history", dropSid: "ReadHistory" }] });
    const client = await Client.open(stack.outputs.url, { room: `iam-${Date.now()}`, name: "cy" });
    try {
      await client.connectionId();
      client.send({ action: "history" });
      const answer = JSON.parse(await client.waitFor((f) => f.includes('"type":"error"'), 20_000));
      assert.equal(answer.code, "unavailable");
      const history = fn(stack, "history");
      const line = await logged((l) => l.startsWith(`[${history}]`) && l.includes('"history failed"'));
      const table = stack.program.resources.find((r) => r.type === "aws:dynamodb/table:Table" && r.name === "messages")!.state.name;
      assert.ok(
        line.includes(`AccessDeniedException: User: arn:aws:sts::123456789012:assumed-role/${roleOf(stack, "history")}/${history} is not authorized to perform: dynamodb:GetItem on resource: arn:aws:dynamodb:${stack.program.region}:123456789012:table/${table} because no identity-based policy allows the dynamodb:GetItem action`),
        line,
      );
    } finally {
      await client.close().catch(() => undefined);
      await stack.stop();
    }
  });
});

describe("local IAM: signatures are verified", function () {
  this.timeout(60_000);
  let stack: LocalStack;
  before(async () => {
    stack = (await watchedStack()).stack;
  });
  after(() => stack?.stop());

  it("must refuse a DynamoDB request with a bad signature with DynamoDB's answer, for the unmodified SDK", async () => {
    const issued = issueCredentials(stack.iam!, fn(stack, "history"));
    const client = new DynamoDBClient({ endpoint: stack.dynamodb.endpoint, region: stack.program.region, credentials: { ...issued, secretAccessKey: "x".repeat(40) }, maxAttempts: 1 });
    await assert.rejects(client.send(new ListTablesCommand({})), (err: Error & { $metadata?: { httpStatusCode?: number } }) => {
      assert.deepEqual([err.name, err.message, err.$metadata?.httpStatusCode], ["InvalidSignatureException", SIGNATURE_MISMATCH, 400]);
      return true;
    });
    const unknown = new DynamoDBClient({ endpoint: stack.dynamodb.endpoint, region: stack.program.region, credentials: { accessKeyId: "AKIAIOSFODNN7EXAMPLE", secretAccessKey: "x".repeat(40) }, maxAttempts: 1 });
    await assert.rejects(unknown.send(new ListTablesCommand({})), { name: "UnrecognizedClientException", message: "The security token included in the request is invalid." });
  });

  it("must refuse a post to @connections and a Lambda Invoke with a bad signature with 403 InvalidSignatureException", async () => {
    const issued = issueCredentials(stack.iam!, fn(stack, "sendmessage"));
    const management = new ApiGatewayManagementApiClient({ endpoint: String(stack.outputs.connectionsUrl).replace(/\/@connections$/, ""), region: stack.program.region, credentials: { ...issued, secretAccessKey: "y".repeat(40) }, maxAttempts: 1 });
    await assert.rejects(management.send(new PostToConnectionCommand({ ConnectionId: "AAAAAAAAAAAAAAA=", Data: "x" })), (err: Error & { $metadata?: { httpStatusCode?: number } }) => {
      assert.deepEqual([err.name, err.$metadata?.httpStatusCode], ["InvalidSignatureException", 403]);
      return true;
    });
    const url = new URL(`http://127.0.0.1:${stack.port}/2015-03-31/functions/${fn(stack, "fanout")}/invocations`);
    const body = "{}";
    const headers = signRequest({ method: "POST", url, headers: { "x-amz-invocation-type": "Event" }, body, service: "lambda", region: stack.program.region, credentials: { ...issued, secretAccessKey: "z".repeat(40) } });
    const answer = await fetch(url, { method: "POST", headers, body });
    assert.deepEqual([answer.status, answer.headers.get("x-amzn-errortype"), ((await answer.json()) as { message?: string }).message], [403, "InvalidSignatureException", SIGNATURE_MISMATCH]);
  });
});

describe("local IAM: off for benchmarks (--no-iam)", function () {
  this.timeout(60_000);

  it("serves any signature when turned off, and issues no credentials", async () => {
    const stack = await startLocalStack({ stack: "dev", port: 0, log: () => undefined, iam: false });
    try {
      assert.equal(stack.iam, undefined);
      const client = new DynamoDBClient({ endpoint: stack.dynamodb.endpoint, region: stack.program.region, credentials: { accessKeyId: "AKIAIOSFODNN7EXAMPLE", secretAccessKey: "x".repeat(40) }, maxAttempts: 1 });
      assert.ok(((await client.send(new ListTablesCommand({}))).TableNames ?? []).length >= 2);
    } finally {
      await stack.stop();
    }
  });
});
