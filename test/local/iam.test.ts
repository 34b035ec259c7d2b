/**
 * The local stack's IAM (local/iam.ts, local/principals.ts): SigV4 recomputed with the SDK's own
 * signer, AWS's answers to a missing, unknown, stale or wrong signature, and the evaluator.
 */
import { SignatureV4 } from "@smithy/signature-v4";
import assert from "node:assert/strict";
import { authenticate, denial, Sha256, dynamodbActions, IamConfig, issueCredentials, newIamConfig, policyAllows, refusal, SIGNATURE_MISMATCH } from "../../local/iam";
import { principalsOf } from "../../local/principals";
import type { RecordedResource } from "../../local/program";

const config: IamConfig = newIamConfig("123456789012", "us-east-1", [
  { functionName: "ws-chat-history-1a2b", roleName: "ws-chat-history-9f8e", statements: [{ Sid: "ReadHistory", Effect: "Allow", Action: ["dynamodb:Query", "dynamodb:GetItem"], Resource: ["arn:aws:dynamodb:us-east-1:123456789012:table/messages-1"] }] },
  { functionName: "ws-chat-sendmessage-3c4d", roleName: "ws-chat-sendmessage-7a6b", statements: [{ Sid: "AppendHistory", Effect: "Allow", Action: ["dynamodb:PutItem"], Resource: ["arn:aws:dynamodb:us-east-1:123456789012:table/messages-1"] }] },
]);

/** A DynamoDB request signed as the SDK signs it. */
async function signed(credentials: { accessKeyId: string; secretAccessKey: string; sessionToken?: string }, body = '{"TableName":"messages-1"}', signingDate = new Date()) {
  const signer = new SignatureV4({ service: "dynamodb", region: "us-east-1", credentials, sha256: Sha256 as never, applyChecksum: false });
  const request = await signer.sign(
    { method: "POST", protocol: "http:", hostname: "127.0.0.1", port: 8000, path: "/", query: {}, headers: { host: "127.0.0.1:8000", "content-type": "application/x-amz-json-1.0", "x-amz-target": "DynamoDB_20120810.Query" }, body },
    { signingDate },
  );
  return { method: "POST", url: "/", headers: request.headers, body: Buffer.from(body), service: "dynamodb" as const };
}

describe("local IAM", () => {
  it("accepts a request signed with an instance's credentials, naming its function, and gives every instance its own", async () => {
    const credentials = issueCredentials(config, "ws-chat-sendmessage-3c4d");
    assert.match(credentials.accessKeyId, /^ASIA[A-Z2-7]{16}$/);
    assert.notEqual(issueCredentials(config, "ws-chat-sendmessage-3c4d").accessKeyId, credentials.accessKeyId);
    const auth = await authenticate(config, await signed(credentials));
    assert.ok(auth.ok && auth.principal !== "operator" && auth.principal.functionName === "ws-chat-sendmessage-3c4d");
  });

  const failures: [string, () => ReturnType<typeof signed>, string, string][] = [
    ["a wrong secret", async () => signed({ ...issueCredentials(config, "ws-chat-history-1a2b"), secretAccessKey: "x".repeat(40) }), "InvalidSignature", SIGNATURE_MISMATCH],
    ["a body changed after signing", async () => ({ ...(await signed(issueCredentials(config, "ws-chat-history-1a2b"))), body: Buffer.from('{"TableName":"other"}') }), "InvalidSignature", SIGNATURE_MISMATCH],
    ["a key never issued", async () => signed({ ...issueCredentials(config, "ws-chat-history-1a2b"), accessKeyId: "ASIAZZZZZZZZZZZZZZZZ" }), "UnrecognizedClient", "The security token included in the request is invalid."],
    ["no session token", async () => signed({ ...issueCredentials(config, "ws-chat-history-1a2b"), sessionToken: undefined }), "UnrecognizedClient", "The security token included in the request is invalid."],
    ["a signature 10 minutes old", async () => signed(issueCredentials(config, "ws-chat-history-1a2b"), undefined, new Date(Date.now() - 600_000)), "SignatureExpired", "Signature expired"],
    ["no Authorization header", async () => ({ ...(await signed(issueCredentials(config, "ws-chat-history-1a2b"))), headers: {} }), "MissingAuthenticationToken", "Missing Authentication Token"],
  ];
  for (const [what, request, failure, message] of failures) {
    it(`must refuse ${what}: ${failure}`, async () => {
      const auth = await authenticate(config, await request());
      assert.ok(!auth.ok);
      assert.equal(auth.failure, failure);
      assert.ok(auth.message.startsWith(message), auth.message);
    });
  }

  it("lets the operator's `local` key do anything, and functions only what their role allows, worded as IAM words it", async () => {
    const auth = await authenticate(config, await signed({ accessKeyId: "local", secretAccessKey: "local" }));
    assert.ok(auth.ok && auth.principal === "operator");
    const history = config.principals[0];
    assert.equal(denial(config, history, [["dynamodb:Query", "arn:aws:dynamodb:us-east-1:123456789012:table/messages-1"]]), undefined);
    assert.equal(
      denial(config, history, [["dynamodb:PutItem", "arn:aws:dynamodb:us-east-1:123456789012:table/messages-1"]]),
      "User: arn:aws:sts::123456789012:assumed-role/ws-chat-history-9f8e/ws-chat-history-1a2b is not authorized to perform: dynamodb:PutItem on resource: arn:aws:dynamodb:us-east-1:123456789012:table/messages-1 because no identity-based policy allows the dynamodb:PutItem action",
    );
  });

  it("checks a transaction action by action, and a Query on an index against the index's ARN", () => {
    const table = "arn:aws:dynamodb:us-east-1:123456789012:table";
    assert.deepEqual(dynamodbActions(config, "TransactWriteItems", { TransactItems: [{ Put: { TableName: "m" } }, { ConditionCheck: { TableName: "c" } }, { Update: { TableName: "m" } }] }), [
      ["dynamodb:PutItem", `${table}/m`],
      ["dynamodb:ConditionCheckItem", `${table}/c`],
      ["dynamodb:UpdateItem", `${table}/m`],
    ]);
    assert.deepEqual(dynamodbActions(config, "Query", { TableName: "c", IndexName: "byRoom" }), [["dynamodb:Query", `${table}/c/index/byRoom`]]);
  });

  it("evaluates wildcards in actions and resources, case-insensitive actions, and Deny over Allow", () => {
    const document = { Statement: [{ Effect: "Allow", Action: "execute-api:*", Resource: "arn:aws:execute-api:*:*:api/dev/POST/@connections/*" }, { Effect: "Deny", Action: "*", Resource: "*/evil" }] };
    assert.equal(policyAllows(document, "execute-api:ManageConnections", "arn:aws:execute-api:us-east-1:1:api/dev/POST/@connections/abc="), true);
    assert.equal(policyAllows(document, "Execute-API:manageconnections", "arn:aws:execute-api:us-east-1:1:api/dev/POST/@connections/abc="), true);
    assert.equal(policyAllows(document, "execute-api:ManageConnections", "arn:aws:execute-api:us-east-1:1:api/dev/GET/@connections/abc="), false);
    assert.equal(policyAllows(document, "execute-api:ManageConnections", "arn:aws:execute-api:us-east-1:1:api/dev/POST/@connections/x/evil"), false);
  });

  it("answers as each service does: DynamoDB 400 with __type, @connections and Lambda 403 with x-amzn-ErrorType", () => {
    const dynamo = refusal("dynamodb", "AccessDenied", "User: x is not authorized");
    assert.equal(dynamo.status, 400);
    assert.deepEqual(JSON.parse(dynamo.body), { __type: "com.amazon.coral.service#AccessDeniedException", Message: "User: x is not authorized" });
    const post = refusal("execute-api", "InvalidSignature", SIGNATURE_MISMATCH);
    assert.deepEqual([post.status, post.headers["x-amzn-ErrorType"], JSON.parse(post.body)], [403, "InvalidSignatureException", { message: SIGNATURE_MISMATCH }]);
    const invoke = refusal("lambda", "AccessDenied", "User: x");
    assert.deepEqual([invoke.status, invoke.headers["x-amzn-ErrorType"], JSON.parse(invoke.body)], [403, "AccessDeniedException", { Type: "User", Message: "User: x" }]);
  });

  it("reads each function's role statements from the program, drops what a test asks, and refuses what it cannot evaluate", () => {
    const resources = [
      { type: "aws:lambda/function:Function", name: "f", id: "f-id", inputs: { role: "arn:role/r" }, state: { name: "ws-chat-f-1" } },
      { type: "aws:iam/role:Role", name: "r", id: "r-id", inputs: {}, state: { arn: "arn:role/r", name: "r-1" } },
      { type: "aws:iam/rolePolicy:RolePolicy", name: "p", id: "p-id", inputs: { role: "r-id", policy: JSON.stringify({ Statement: [{ Sid: "A", Effect: "Allow", Action: ["s3:GetObject"], Resource: ["*"] }, { Sid: "B", Effect: "Allow", Action: ["sqs:SendMessage"], Resource: ["*"] }] }) }, state: {} },
    ] as unknown as RecordedResource[];
    assert.deepEqual(principalsOf(resources, [{ function: "-f-", dropSid: "B" }]), [{ functionName: "ws-chat-f-1", roleName: "r-1", statements: [{ Sid: "A", Effect: "Allow", Action: ["s3:GetObject"], Resource: ["*"] }] }]);
    const conditional = structuredClone(resources);
    conditional[2].inputs.policy = JSON.stringify({ Statement: [{ Effect: "Allow", Action: "*", Resource: "*", Condition: { Bool: { "aws:SecureTransport": "true" } } }] });
    assert.throws(() => principalsOf(conditional), /does not support Condition/);
    const managed = structuredClone(resources);
    managed[1].inputs.managedPolicyArns = ["arn:aws:iam::aws:policy/AdministratorAccess"];
    assert.throws(() => principalsOf(managed), /managed policies/);
  });
});
