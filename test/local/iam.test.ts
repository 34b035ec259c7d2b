/**
 * The local stack's IAM (local/iam.ts, local/principals.ts): SigV4 recomputed with the SDK's own
 * signer, AWS's answers to a missing, unknown, stale or wrong signature, and the evaluator.
 */
import { SignatureV4 } from "@smithy/signature-v4";
import assert from "node:assert/strict";
import { getSigningKey } from "@smithy/signature-v4";
import { createHmac, randomBytes, randomInt } from "node:crypto";
import { authenticate, denial, HmacKey, Sha256, dynamodbActions, IamConfig, issueCredentials, newIamConfig, policyAllows, refusal, SIGNATURE_MISMATCH, signingKey } from "../../local/iam";
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


/** A request of any service, signed by the SDK's signer; `target` is the path and query as sent. */
async function signedFor(service: "dynamodb" | "execute-api" | "lambda", credentials: { accessKeyId: string; secretAccessKey: string; sessionToken?: string }, target: string, headers: Record<string, string>, body: string, signingDate = new Date()) {
  const url = new URL(target, "http://127.0.0.1:8080");
  const query: Record<string, string | string[]> = {};
  for (const [key, value] of url.searchParams) query[key] = key in query ? ([] as string[]).concat(query[key], value) : value;
  const signer = new SignatureV4({ service, region: "us-east-1", credentials, sha256: Sha256 as never, applyChecksum: false });
  const request = await signer.sign({ method: "POST", protocol: "http:", hostname: "127.0.0.1", port: 8080, path: url.pathname, query, headers: { host: "127.0.0.1:8080", ...headers }, body }, { signingDate });
  const lower = Object.fromEntries(Object.entries(request.headers).map(([k, v]) => [k.toLowerCase(), v]));
  return { method: "POST", url: target, headers: lower, body: Buffer.from(body), service };
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

  it("recomputes the SDK's signature for encoded paths, dot segments, repeated query keys and folded header values, and refuses each when changed", async () => {
    const credentials = issueCredentials(config, "ws-chat-history-1a2b");
    // [service, target, headers, the target changed]
    const cases: [Parameters<typeof signedFor>[0], string, Record<string, string>, string][] = [
      ["execute-api", "/dev/@connections/aBc%3D", { "content-type": "application/json" }, "/dev/@connections/aBc%3E"],
      ["execute-api", "/dev/./@connections/x/../aBc%3D", {}, "/dev/./@connections/x/../aBc"],
      ["lambda", "/2015-03-31/functions/ws-chat-fanout-1/invocations?b=2&a=1&a=0&c=%20x", { "x-amz-invocation-type": "Event" }, "/2015-03-31/functions/ws-chat-fanout-1/invocations?b=2&a=1&a=9&c=%20x"],
      ["dynamodb", "/", { "x-amz-target": "DynamoDB_20120810.Query", "x-custom": "  two   spaces\tand a tab  " }, "/x"],
    ];
    for (const [service, target, headers, other] of cases) {
      const request = await signedFor(service, credentials, target, headers, '{"m":"hi"}');
      assert.deepEqual(await authenticate(config, request), { ok: true, principal: config.principals[0] }, `${service} ${target}`);
      assert.equal((await authenticate(config, { ...request, url: other })).ok, false, `${service} ${other}`);
      const [name] = Object.keys(headers).concat("host");
      assert.equal((await authenticate(config, { ...request, headers: { ...request.headers, [name]: "changed" } })).ok, false, `${service} ${name}`);
    }
  });

  it("refuses a changed body after the same signature's body was accepted (the remembered body hash is never reused)", async () => {
    const request = await signed(issueCredentials(config, "ws-chat-history-1a2b"));
    assert.ok((await authenticate(config, request)).ok);
    const changed = await authenticate(config, { ...request, body: Buffer.from('{"TableName":"messages-2"}') });
    assert.ok(!changed.ok && changed.failure === "InvalidSignature");
    assert.ok((await authenticate(config, request)).ok);
  });

  it("derives signing keys as the SDK does, one per day, region and service: a key of another day or service is never reused", async () => {
    const credentials = issueCredentials(config, "ws-chat-history-1a2b");
    for (const [day, region, service] of [["20261207", "us-east-1", "dynamodb"], ["20261208", "us-east-1", "dynamodb"], ["20261208", "eu-west-1", "dynamodb"], ["20261208", "us-east-1", "execute-api"]]) {
      const sdk = await getSigningKey(Sha256 as never, credentials, day, region, service);
      assert.deepEqual(new Uint8Array(signingKey(credentials.secretAccessKey, day, region, service)), new Uint8Array(sdk), `${day}/${region}/${service}`);
    }
    assert.notDeepEqual(signingKey("s", "20261207", "us-east-1", "dynamodb"), signingKey("s", "20261208", "us-east-1", "dynamodb"));
    // Across midnight: the first request's key (day 7) must not verify the second (day 8), nor a day-7 signature dated day 8.
    const before = new Date("2026-12-07T23:59:58Z");
    const after = new Date("2026-12-08T00:00:02Z");
    assert.ok((await authenticate(config, await signed(credentials, undefined, before), before.getTime())).ok);
    assert.ok((await authenticate(config, await signed(credentials, undefined, after), after.getTime())).ok);
    const redated = await signed(credentials, undefined, before);
    const moved = await authenticate(config, { ...redated, headers: { ...redated.headers, "x-amz-date": "20261208T000002Z" } }, after.getTime());
    assert.ok(!moved.ok && moved.failure === "InvalidSignature");
    // The same credentials for another service, after one was accepted.
    assert.ok((await authenticate(config, await signedFor("execute-api", credentials, "/dev/@connections/a", {}, "x"))).ok);
    assert.ok((await authenticate(config, await signedFor("lambda", credentials, "/2015-03-31/functions/f/invocations", {}, "{}"))).ok);
  });

  it("computes HMAC-SHA256 from a key's pad blocks exactly as crypto.createHmac does, for any key and message, one key after another", () => {
    const text = (length: number) => String.fromCodePoint(...Array.from({ length }, () => [randomInt(0x20, 0x7f), randomInt(0x80, 0x800), randomInt(0x800, 0x10000), randomInt(0x10000, 0x110000)][randomInt(4)]));
    // Keys shorter than, as long as and longer than SHA-256's 64-byte block (hashed first); messages from empty to past the kept buffer.
    for (const keyLength of [0, 1, 32, 63, 64, 65, 200]) {
      const key = randomBytes(keyLength);
      const hmac = new HmacKey(key);
      for (const length of [0, 1, 150, 3, 700, 2000, 10]) {
        const message = text(length);
        assert.equal(hmac.hex(message), createHmac("sha256", key).update(message).digest("hex"), `key ${keyLength} bytes, message ${length} code points`);
      }
    }
    // A lone surrogate is hashed as Hmac.update hashes it (U+FFFD).
    const key = randomBytes(32);
    assert.equal(new HmacKey(key).hex("a\ud800b"), createHmac("sha256", key).update("a\ud800b").digest("hex"));
  });

  it("keeps each role's decisions apart, and a changed policy (new statements) takes effect at once", () => {
    const table = "arn:aws:dynamodb:us-east-1:123456789012:table/messages-1";
    const changing = newIamConfig("123456789012", "us-east-1", [
      { functionName: "a", roleName: "ra", statements: [{ Effect: "Allow", Action: "dynamodb:Query", Resource: table }] },
      { functionName: "b", roleName: "rb", statements: [] },
    ]);
    const [a, b] = changing.principals;
    assert.equal(denial(changing, a, [["dynamodb:Query", table]]), undefined);
    assert.match(denial(changing, b, [["dynamodb:Query", table]]) ?? "", /rb\/b is not authorized to perform: dynamodb:Query/);
    a.statements = [...a.statements, { Effect: "Deny", Action: "dynamodb:*", Resource: "*" }];
    assert.match(denial(changing, a, [["dynamodb:Query", table]]) ?? "", /ra\/a is not authorized/);
    b.statements = [{ Effect: "Allow", Action: "dynamodb:Query", Resource: "*" }];
    assert.equal(denial(changing, b, [["dynamodb:Query", table]]), undefined);
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
    // Frozen, statements and lists alike: a role's decisions are kept per statements array (local/iam.ts).
    const [loaded] = principalsOf(resources);
    assert.throws(() => loaded.statements.push({ Effect: "Allow", Action: "*", Resource: "*" }), TypeError);
    assert.throws(() => (loaded.statements[0].Action as string[]).push("s3:*"), TypeError);
    const conditional = structuredClone(resources);
    conditional[2].inputs.policy = JSON.stringify({ Statement: [{ Effect: "Allow", Action: "*", Resource: "*", Condition: { Bool: { "aws:SecureTransport": "true" } } }] });
    assert.throws(() => principalsOf(conditional), /does not support Condition/);
    const managed = structuredClone(resources);
    managed[1].inputs.managedPolicyArns = ["arn:aws:iam::aws:policy/AdministratorAccess"];
    assert.throws(() => principalsOf(managed), /managed policies/);
  });
});
