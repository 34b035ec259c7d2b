/**
 * The Pulumi program under mocks, for each stack, with the config from the real Pulumi.<stack>.yaml.
 * `loadProgram` calls setMocks (and setAllConfig) before it imports index.ts.
 */
import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as path from "node:path";
import { FAKE_ACCOUNT_ID, loadProgram, LoadedProgram, PROJECT_DIR, RecordedResource } from "../../local/program";

const CANARY = "canary-secret-9f8e7d6c";

function byType(program: LoadedProgram, type: string): RecordedResource[] {
  return program.resources.filter((r) => r.type === type);
}
function one(program: LoadedProgram, type: string, name?: string): RecordedResource {
  const found = byType(program, type).filter((r) => name === undefined || r.name === name);
  assert.equal(found.length, 1, `exactly one ${type} ${name ?? ""}`);
  return found[0];
}

for (const stack of ["dev", "prod"] as const) {
  describe(`the program under mocks: ${stack}`, () => {
    let program: LoadedProgram;
    before(async () => {
      // A config value that must never reach a function's code (pulumi.Config must not be captured).
      program = await loadProgram({ stack, configOverrides: { "ws-chat:canary": CANARY } });
    });

    const config = (key: string) => program.config[`ws-chat:${key}`];
    const fn = (route: string) => one(program, "aws:lambda/function:Function", `ws-chat-${route}`);
    const api = () => one(program, "aws:apigatewayv2/api:Api");

    it("declares a WebSocket API that selects routes by $request.body.action", () => {
      assert.equal(api().inputs.protocolType, "WEBSOCKET");
      assert.equal(api().inputs.routeSelectionExpression, "$request.body.action");
    });

    it("routes $connect, $disconnect, $default and sendmessage, each through an AWS_PROXY integration to its own function", () => {
      const routes = byType(program, "aws:apigatewayv2/route:Route");
      assert.deepEqual(routes.map((r) => r.inputs.routeKey).sort(), ["$connect", "$default", "$disconnect", "sendmessage"]);
      const functionFor: Record<string, string> = { $connect: "connect", $disconnect: "disconnect", $default: "default", sendmessage: "sendmessage" };
      for (const route of routes) {
        const integration = byType(program, "aws:apigatewayv2/integration:Integration").find((i) => route.inputs.target === `integrations/${i.id}`);
        assert.ok(integration, `${route.inputs.routeKey} targets an integration`);
        assert.equal(integration.inputs.integrationType, "AWS_PROXY");
        assert.equal(integration.inputs.apiId, api().id);
        assert.equal(integration.inputs.integrationUri, fn(functionFor[route.inputs.routeKey]).state.invokeArn);
      }
    });

    it("lets API Gateway invoke each function only from this API, stage and route", () => {
      const permissions = byType(program, "aws:lambda/permission:Permission");
      assert.equal(permissions.length, 4);
      for (const p of permissions) {
        assert.equal(p.inputs.principal, "apigateway.amazonaws.com");
        assert.equal(p.inputs.action, "lambda:InvokeFunction");
        const routeKey = p.name === "sendmessage" ? "sendmessage" : `$${p.name}`;
        assert.equal(p.inputs.sourceArn, `${api().state.executionArn}/${config("stageName")}/${routeKey}`);
        assert.equal(p.inputs.function, fn(p.name).state.name);
      }
    });

    it("deploys a stage named by the settings, throttled and access-logged as they say", () => {
      const s = one(program, "aws:apigatewayv2/stage:Stage");
      assert.equal(s.inputs.name, config("stageName"));
      assert.equal(s.inputs.deploymentId, one(program, "aws:apigatewayv2/deployment:Deployment").id);
      assert.equal(s.inputs.defaultRouteSettings.throttlingBurstLimit, Number(config("throttlingBurstLimit")));
      assert.equal(s.inputs.defaultRouteSettings.throttlingRateLimit, Number(config("throttlingRateLimit")));
      assert.equal(s.inputs.defaultRouteSettings.dataTraceEnabled, false);
      const accessLogs = one(program, "aws:cloudwatch/logGroup:LogGroup", "chat-access");
      assert.equal(s.inputs.accessLogSettings.destinationArn, accessLogs.state.arn);
      assert.equal(accessLogs.inputs.retentionInDays, Number(config("logRetentionDays")));
      assert.match(JSON.parse(s.inputs.accessLogSettings.format).connectionId, /\$context\.connectionId/);
    });

    it("redeploys when routes change: the deployment's trigger hashes every route and integration", () => {
      const d = one(program, "aws:apigatewayv2/deployment:Deployment");
      assert.match(d.inputs.triggers.redeployment, /^[0-9a-f]{64}$/);
    });

    it("keys the connections table by connectionId, with a room index, TTL on expiresAt and on-demand billing", () => {
      const t = one(program, "aws:dynamodb/table:Table");
      assert.equal(t.inputs.hashKey, "connectionId");
      assert.equal(t.inputs.billingMode, "PAY_PER_REQUEST");
      assert.deepEqual(t.inputs.ttl, { attributeName: "expiresAt", enabled: true });
      assert.deepEqual(t.inputs.globalSecondaryIndexes, [
        { name: "byRoom", keySchemas: [{ attributeName: "room", keyType: "HASH" }], projectionType: "KEYS_ONLY" },
      ]);
      assert.deepEqual(t.inputs.attributes.map((a: { name: string }) => a.name).sort(), ["connectionId", "room"]);
    });

    it(stack === "prod" ? "protects the table: point-in-time recovery and deletion protection" : "must not protect the dev table", () => {
      const t = one(program, "aws:dynamodb/table:Table");
      const protectedTable = stack === "prod";
      assert.equal(t.inputs.pointInTimeRecovery.enabled, protectedTable);
      assert.equal(t.inputs.deletionProtectionEnabled, protectedTable);
    });

    it("runs every function on nodejs22.x with the memory, timeout and its own log group from the settings", () => {
      for (const route of ["connect", "disconnect", "default", "sendmessage"]) {
        const f = fn(route);
        assert.equal(f.inputs.runtime, "nodejs22.x");
        assert.equal(f.inputs.handler, "__index.handler");
        assert.equal(f.inputs.memorySize, Number(config("lambdaMemoryMb")));
        assert.equal(f.inputs.timeout, Number(config("lambdaTimeoutSeconds")));
        const logGroup = one(program, "aws:cloudwatch/logGroup:LogGroup", `ws-chat-${route}`);
        assert.equal(f.inputs.loggingConfig.logGroup, logGroup.state.name);
        assert.equal(logGroup.inputs.retentionInDays, Number(config("logRetentionDays")));
      }
    });

    it("passes table, index and management endpoint to the handlers only through environment variables", () => {
      const endpoint = `https://${api().id}.execute-api.${program.region}.amazonaws.com/${config("stageName")}`;
      const table = one(program, "aws:dynamodb/table:Table").state.name;
      assert.deepEqual(fn("connect").inputs.environment.variables, { CONNECTIONS_TABLE: table, ROOM_INDEX: "byRoom" });
      assert.deepEqual(fn("disconnect").inputs.environment.variables, { CONNECTIONS_TABLE: table, ROOM_INDEX: "byRoom" });
      assert.deepEqual(fn("default").inputs.environment.variables, { MANAGEMENT_ENDPOINT: endpoint });
      assert.deepEqual(fn("sendmessage").inputs.environment.variables, {
        CONNECTIONS_TABLE: table,
        ROOM_INDEX: "byRoom",
        MANAGEMENT_ENDPOINT: endpoint,
        MAX_MESSAGE_BYTES: config("maxMessageBytes"),
        FANOUT_CONCURRENCY: config("fanoutConcurrency"),
      });
    });

    describe("least privilege", () => {
      const tableArn = () => one(program, "aws:dynamodb/table:Table").state.arn;
      const stageArn = (method: string) => `${api().state.executionArn}/${config("stageName")}/${method}/@connections/*`;
      function statements(route: string) {
        const role = one(program, "aws:iam/role:Role", `ws-chat-${route}`);
        assert.equal(fn(route).inputs.role, role.state.arn);
        const policies = byType(program, "aws:iam/rolePolicy:RolePolicy").filter((p) => p.inputs.role === role.id);
        assert.equal(policies.length, 1, "one inline policy per role");
        const logGroupArn = one(program, "aws:cloudwatch/logGroup:LogGroup", `ws-chat-${route}`).state.arn;
        const all = JSON.parse(policies[0].inputs.policy).Statement as { Effect: string; Action: string[]; Resource: string[] }[];
        const logs = all.filter((s) => s.Action.some((a) => a.startsWith("logs:")));
        assert.deepEqual(logs.map((s) => [s.Action, s.Resource]), [[["logs:CreateLogStream", "logs:PutLogEvents"], [`${logGroupArn}:*`]]]);
        for (const s of all) assert.equal(s.Effect, "Allow");
        return all.filter((s) => !logs.includes(s)).map((s) => ({ Action: s.Action, Resource: s.Resource }));
      }

      it("connect may only PutItem on the table", () => {
        assert.deepEqual(statements("connect"), [{ Action: ["dynamodb:PutItem"], Resource: [tableArn()] }]);
      });
      it("disconnect may only DeleteItem on the table", () => {
        assert.deepEqual(statements("disconnect"), [{ Action: ["dynamodb:DeleteItem"], Resource: [tableArn()] }]);
      });
      it("sendmessage may GetItem/DeleteItem, Query the room index, and POST to this stage's @connections", () => {
        assert.deepEqual(statements("sendmessage"), [
          { Action: ["dynamodb:GetItem", "dynamodb:DeleteItem"], Resource: [tableArn()] },
          { Action: ["dynamodb:Query"], Resource: [`${tableArn()}/index/byRoom`] },
          { Action: ["execute-api:ManageConnections"], Resource: [stageArn("POST")] },
        ]);
      });
      it("default may only GET and POST on this stage's @connections", () => {
        assert.deepEqual(statements("default"), [{ Action: ["execute-api:ManageConnections"], Resource: [stageArn("GET"), stageArn("POST")] }]);
      });

      it("must not attach any managed policy to a function role, nor use a '*' action or resource", () => {
        const functionRoles = new Set(byType(program, "aws:lambda/function:Function").map((f) => f.inputs.role));
        const attachments = byType(program, "aws:iam/rolePolicyAttachment:RolePolicyAttachment");
        assert.deepEqual(attachments, []);
        for (const role of byType(program, "aws:iam/role:Role").filter((r) => functionRoles.has(r.state.arn))) {
          assert.equal(role.inputs.managedPolicyArns, undefined);
          assert.equal(JSON.parse(role.inputs.assumeRolePolicy).Statement[0].Principal.Service, "lambda.amazonaws.com");
        }
        for (const policy of byType(program, "aws:iam/rolePolicy:RolePolicy")) {
          for (const s of JSON.parse(policy.inputs.policy).Statement) {
            for (const a of s.Action) assert.ok(!a.includes("*"), `${policy.name}: action ${a}`);
            for (const r of s.Resource) assert.ok(r !== "*" && !r.endsWith(":*:*"), `${policy.name}: resource ${r}`);
          }
        }
      });
    });

    describe("function archives", () => {
      it("are __index.js alone: no node_modules packed, the runtime's AWS SDK is used", () => {
        assert.equal(program.archives.size, 4);
        for (const [name, archive] of program.archives) {
          assert.deepEqual([...archive.keys()], ["__index.js"], name);
        }
      });

      it("load in Node and export a two-parameter handler", () => {
        // Inside the project, so the archives' require("@aws-sdk/…") resolves as it would on Lambda.
        fs.mkdirSync(path.join(PROJECT_DIR, ".local"), { recursive: true });
        const dir = fs.mkdtempSync(path.join(PROJECT_DIR, ".local", "archive-test-"));
        const restore = { ...process.env };
        Object.assign(process.env, fn("sendmessage").inputs.environment.variables, fn("connect").inputs.environment.variables);
        try {
          for (const [name, archive] of program.archives) {
            const file = path.join(dir, `${name}.js`);
            fs.writeFileSync(file, archive.get("__index.js")!);
            const mod = require(file);
            assert.equal(typeof mod.handler, "function", name);
            assert.equal(mod.handler.length, 2, `${name}: (event, context)`);
          }
        } finally {
          process.env = restore;
          fs.rmSync(dir, { recursive: true, force: true });
        }
      });

      it("must not contain any config value: pulumi.Config is never captured", () => {
        for (const [name, archive] of program.archives) {
          const code = archive.get("__index.js")!.toString("utf8");
          assert.ok(!code.includes(CANARY), `${name} captured config`);
          assert.ok(!/pulumi/i.test(code), `${name} references Pulumi`);
        }
      });
    });

    it(`exports the stack outputs url, connectionsUrl, tableName, stage and region`, () => {
      const id = api().id;
      assert.deepEqual(program.outputs, {
        url: `wss://${id}.execute-api.${program.region}.amazonaws.com/${config("stageName")}`,
        connectionsUrl: `https://${id}.execute-api.${program.region}.amazonaws.com/${config("stageName")}/@connections`,
        tableName: one(program, "aws:dynamodb/table:Table").state.name,
        stage: config("stageName"),
        region: program.region,
      });
      assert.equal(program.region, program.config["aws:region"]);
      assert.ok(FAKE_ACCOUNT_ID);
    });
  });
}

describe("the program under mocks: bad settings", () => {
  it("must fail to load, naming the key and the allowed range", async () => {
    await assert.rejects(loadProgram({ stack: "dev", configOverrides: { "ws-chat:lambdaMemoryMb": "1" } }), /ws-chat:lambdaMemoryMb must be an integer from 128 to 10240; got "1"/);
  });
  it("must fail to load an unknown stack, listing the stacks there are", async () => {
    await assert.rejects(loadProgram({ stack: "staging" }), /no stack "staging".*stacks: dev, prod/);
  });
});
