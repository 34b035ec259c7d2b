/**
 * The Pulumi program under mocks, for each stack, with the config from the real Pulumi.<stack>.yaml.
 * `loadProgram` calls setMocks (and setAllConfig) before it imports index.ts.
 */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import * as fs from "node:fs";
import * as path from "node:path";
import { compilePattern, passesFilters } from "../../local/event-filter";
import { FAKE_ACCOUNT_ID, loadProgram, LoadedProgram, PROJECT_DIR, RecordedResource } from "../../local/program";
import settingsModule = require("@pulumi/pulumi/runtime/settings");
import { plannedReservations, RESERVATION_SETTINGS } from "../../stacks/preflight";
import { parseSettings } from "../../stacks/settings";
import { PROD as PROD_COST_ASSUMPTIONS } from "../../scripts/monthly-cost";

const CANARY = "canary-secret-9f8e7d6c";
const TOKEN_KEY = "token-key-for-tests-0123456789abcdefghijklmnop";
/** Each route (in the program's order) and the function its integration invokes: edit and delete are sendmessage's. */
const ROUTE_FUNCTIONS: Record<string, string> = {
  $connect: "connect",
  $disconnect: "disconnect",
  $default: "default",
  sendmessage: "sendmessage",
  edit: "sendmessage",
  delete: "sendmessage",
  history: "history",
  typing: "typing",
  members: "members",
  read: "read",
};
/** The functions no route invokes: fanout (sendmessage and presence hand it chunks) and presence (the connections stream). */
const UNROUTED_FUNCTIONS = ["fanout", "presence"];
/** A route's resource name (integration, permission, route): its key without the `$`. */
const routeId = (routeKey: string) => routeKey.replace(/^\$/, "");

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
      program = await loadProgram({ stack, configOverrides: { "ws-chat:canary": CANARY }, secrets: { "ws-chat:tokenKey": TOKEN_KEY } });
    });

    const config = (key: string) => program.config[`ws-chat:${key}`];
    const prod = stack === "prod";
    const functionNames = () => [...new Set(Object.values(ROUTE_FUNCTIONS)), ...UNROUTED_FUNCTIONS, ...(prod ? ["authorizer"] : [])];
    const fn = (route: string) => one(program, "aws:lambda/function:Function", `ws-chat-${route}`);
    const api = () => one(program, "aws:apigatewayv2/api:Api");

    it("declares a WebSocket API that selects routes by $request.body.action", () => {
      assert.equal(api().inputs.protocolType, "WEBSOCKET");
      assert.equal(api().inputs.routeSelectionExpression, "$request.body.action");
    });

    it("routes $connect, $disconnect, $default, sendmessage, edit, delete, history, typing, members and read, each through its own AWS_PROXY integration to its function (edit and delete: sendmessage's)", () => {
      const routes = byType(program, "aws:apigatewayv2/route:Route");
      assert.deepEqual(routes.map((r) => r.inputs.routeKey).sort(), Object.keys(ROUTE_FUNCTIONS).sort());
      const integrations = byType(program, "aws:apigatewayv2/integration:Integration");
      assert.equal(integrations.length, routes.length, "one integration per route");
      for (const route of routes) {
        assert.equal(route.name, routeId(route.inputs.routeKey));
        assert.equal(route.inputs.apiId, api().id);
        const integration = integrations.find((i) => route.inputs.target === `integrations/${i.id}`);
        assert.ok(integration, `${route.inputs.routeKey} targets an integration`);
        assert.equal(integration.name, route.name, `${route.inputs.routeKey}: its own integration`);
        assert.equal(integration.inputs.integrationType, "AWS_PROXY");
        assert.equal(integration.inputs.integrationMethod, "POST");
        assert.equal(integration.inputs.apiId, api().id);
        assert.equal(integration.inputs.integrationUri, fn(ROUTE_FUNCTIONS[route.inputs.routeKey]).state.invokeArn, route.inputs.routeKey);
      }
    });

    it("must not route any request to fanout or presence: no integration invokes them, no permission lets API Gateway", () => {
      const uris = byType(program, "aws:apigatewayv2/integration:Integration").map((i) => i.inputs.integrationUri);
      const permitted = byType(program, "aws:lambda/permission:Permission").map((p) => p.inputs.function);
      for (const name of UNROUTED_FUNCTIONS) {
        assert.ok(!uris.includes(fn(name).state.invokeArn), `${name} has no integration`);
        assert.ok(!permitted.includes(fn(name).state.name), `${name} has no permission`);
      }
    });

    it("lets API Gateway invoke each function only from this API, stage and route (the authorizer: only as this authorizer)", () => {
      const permissions = byType(program, "aws:lambda/permission:Permission");
      // One permission per route, named after it (edit and delete each have theirs, for sendmessage).
      assert.deepEqual(permissions.map((p) => p.name).sort(), [...Object.keys(ROUTE_FUNCTIONS).map(routeId), ...(prod ? ["authorizer"] : [])].sort());
      for (const p of permissions) {
        assert.equal(p.inputs.principal, "apigateway.amazonaws.com");
        assert.equal(p.inputs.action, "lambda:InvokeFunction");
        if (p.name === "authorizer") {
          assert.equal(p.inputs.function, fn("authorizer").state.name);
          assert.equal(p.inputs.sourceArn, `${api().state.executionArn}/authorizers/${one(program, "aws:apigatewayv2/authorizer:Authorizer").id}`);
          continue;
        }
        const routeKey = Object.keys(ROUTE_FUNCTIONS).find((key) => routeId(key) === p.name)!;
        assert.equal(p.inputs.function, fn(ROUTE_FUNCTIONS[routeKey]).state.name, p.name);
        assert.equal(p.inputs.sourceArn, `${api().state.executionArn}/${config("stageName")}/${routeKey}`, p.name);
      }
    });

    it(prod ? "puts $connect behind a REQUEST authorizer on the token query parameter" : "must not require a token on $connect in dev", () => {
      const connectRoute = byType(program, "aws:apigatewayv2/route:Route").find((r) => r.inputs.routeKey === "$connect")!;
      const authorizers = byType(program, "aws:apigatewayv2/authorizer:Authorizer");
      if (!prod) {
        assert.deepEqual(authorizers, []);
        assert.equal(connectRoute.inputs.authorizerId, undefined);
        return;
      }
      const [authorizer] = authorizers;
      assert.equal(authorizer.inputs.authorizerType, "REQUEST");
      assert.deepEqual(authorizer.inputs.identitySources, ["route.request.querystring.token"]);
      assert.equal(authorizer.inputs.authorizerUri, fn("authorizer").state.invokeArn);
      assert.equal(connectRoute.inputs.authorizationType, "CUSTOM");
      assert.equal(connectRoute.inputs.authorizerId, authorizer.id);
      for (const r of byType(program, "aws:apigatewayv2/route:Route").filter((r) => r.inputs.routeKey !== "$connect")) {
        assert.equal(r.inputs.authorizerId, undefined, `${r.inputs.routeKey}: authorizers run on $connect only`);
      }
    });

    it(`deploys a stage named by the settings, throttled as they say, ${prod ? "execution- and access-logged into log groups of the stack's retention" : "with no logging (a new account has no API Gateway CloudWatch role)"}`, () => {
      const s = one(program, "aws:apigatewayv2/stage:Stage");
      assert.equal(s.inputs.name, config("stageName"));
      assert.equal(s.inputs.deploymentId, one(program, "aws:apigatewayv2/deployment:Deployment").id);
      assert.equal(s.inputs.defaultRouteSettings.throttlingBurstLimit, Number(config("throttlingBurstLimit")));
      assert.equal(s.inputs.defaultRouteSettings.throttlingRateLimit, Number(config("throttlingRateLimit")));
      assert.equal(s.inputs.defaultRouteSettings.dataTraceEnabled, false);
      const accessLogs = one(program, "aws:cloudwatch/logGroup:LogGroup", "chat-access");
      assert.equal(accessLogs.inputs.retentionInDays, Number(config("logRetentionDays")));
      const executionLogs = byType(program, "aws:cloudwatch/logGroup:LogGroup").filter((g) => g.name === "chat-execution");
      assert.equal(config("stageLogging"), String(prod));
      if (!prod) {
        assert.deepEqual([s.inputs.defaultRouteSettings.loggingLevel, s.inputs.accessLogSettings, executionLogs], ["OFF", undefined, []]);
        return;
      }
      assert.equal(s.inputs.defaultRouteSettings.loggingLevel, config("apiLoggingLevel"));
      assert.equal(s.inputs.accessLogSettings.destinationArn, accessLogs.state.arn);
      assert.match(JSON.parse(s.inputs.accessLogSettings.format).connectionId, /\$context\.connectionId/);
      // The group API Gateway would otherwise create itself, with no retention, and keep after a destroy.
      assert.equal(executionLogs.length, 1);
      assert.deepEqual([executionLogs[0].inputs.name, executionLogs[0].inputs.retentionInDays], [`API-Gateway-Execution-Logs_${api().id}/prod`, 90]);
    });

    it("must not own API Gateway's account-wide CloudWatch role, nor attach a policy through the deprecated managedPolicyArns", () => {
      assert.equal(config("manageApiGatewayAccount"), "false");
      assert.deepEqual(byType(program, "aws:apigateway/account:Account"), []);
      for (const role of byType(program, "aws:iam/role:Role")) assert.equal(role.inputs.managedPolicyArns, undefined, role.name);
    });

    it("runs every function on arm64 (lambdaArchitecture)", () => {
      assert.equal(config("lambdaArchitecture"), "arm64");
      for (const name of functionNames()) assert.deepEqual(fn(name).inputs.architectures, ["arm64"], name);
    });

    it("redeploys when routes change: the deployment's trigger hashes every route, its authorizer and its integration", () => {
      const d = one(program, "aws:apigatewayv2/deployment:Deployment");
      const integrations = byType(program, "aws:apigatewayv2/integration:Integration");
      const order = Object.keys(ROUTE_FUNCTIONS); // the program's order
      const routes = byType(program, "aws:apigatewayv2/route:Route")
        .sort((a, b) => order.indexOf(a.inputs.routeKey) - order.indexOf(b.inputs.routeKey))
        .map((r) => [
        r.inputs.routeKey,
        r.inputs.target,
        r.inputs.authorizationType,
        r.inputs.authorizerId,
        integrations.find((i) => r.inputs.target === `integrations/${i.id}`)!.inputs.integrationUri,
      ]);
      assert.equal(routes.length, Object.keys(ROUTE_FUNCTIONS).length);
      const hash = (value: unknown) => createHash("sha256").update(JSON.stringify(value)).digest("hex");
      assert.equal(d.inputs.triggers.redeployment, hash(routes));
      // Any change to a route's target changes the trigger.
      const changed = routes.map((r, i) => (i === 0 ? [r[0], "integrations/other", ...r.slice(2)] : r));
      assert.notEqual(hash(changed), d.inputs.triggers.redeployment);
    });

    it("keys the connections table by connectionId, with a room index sorted by name (projecting expiresAt only), TTL on expiresAt and on-demand billing", () => {
      const t = one(program, "aws:dynamodb/table:Table", "connections");
      assert.equal(t.inputs.hashKey, "connectionId");
      assert.equal(t.inputs.rangeKey, undefined);
      assert.equal(t.inputs.billingMode, "PAY_PER_REQUEST");
      assert.deepEqual(t.inputs.ttl, { attributeName: "expiresAt", enabled: true });
      assert.deepEqual(t.inputs.globalSecondaryIndexes, [
        {
          name: "byRoom",
          keySchemas: [
            { attributeName: "room", keyType: "HASH" },
            { attributeName: "name", keyType: "RANGE" },
          ],
          projectionType: "INCLUDE",
          nonKeyAttributes: ["expiresAt"],
        },
      ]);
      // Every key attribute declared, as a string, and nothing else (DynamoDB refuses unused ones).
      assert.deepEqual(
        t.inputs.attributes.map((a: { name: string; type: string }) => `${a.name}:${a.type}`).sort(),
        ["connectionId:S", "name:S", "room:S"],
      );
    });

    it("streams the connections table with old and new images, so presence sees every removal (TTL included) with its room and name", () => {
      const t = one(program, "aws:dynamodb/table:Table", "connections");
      assert.equal(t.inputs.streamEnabled, true);
      assert.equal(t.inputs.streamViewType, "NEW_AND_OLD_IMAGES");
      assert.match(t.state.streamArn, new RegExp(`^${t.state.arn}/stream/\\d{4}-\\d\\d-\\d\\dT[\\d:.]+$`));
    });

    it("must not stream the messages table: nothing reads it", () => {
      const t = one(program, "aws:dynamodb/table:Table", "messages");
      assert.equal(t.inputs.streamEnabled, undefined);
      assert.equal(t.inputs.streamViewType, undefined);
    });

    describe("presence's event source mapping", () => {
      const mapping = () => one(program, "aws:lambda/eventSourceMapping:EventSourceMapping");
      const patterns = () => (mapping().inputs.filterCriteria.filters as { pattern: string }[]).map((f) => f.pattern);
      const image = (extra: Record<string, unknown> = {}) => ({
        connectionId: { S: "c1" },
        room: { S: "lobby" },
        name: { S: "ada" },
        connectedAt: { N: "1" },
        expiresAt: { N: "2" },
        ...extra,
      });
      const passes = (record: unknown) => passesFilters(patterns().map((p, i) => compilePattern(p, `filter ${i + 1}`)), record);

      it("reads the connections table's stream into presence, from LATEST, in batches of 100 with no batching window", () => {
        const m = mapping();
        assert.equal(m.name, "presence");
        assert.equal(m.inputs.eventSourceArn, one(program, "aws:dynamodb/table:Table", "connections").state.streamArn);
        assert.equal(m.inputs.functionName, fn("presence").state.arn);
        assert.deepEqual([m.inputs.startingPosition, m.inputs.batchSize, m.inputs.maximumBatchingWindowInSeconds], ["LATEST", 100, 0]);
      });

      it("retries a failed batch, bisecting it, at most 10 times and for at most an hour, then sends its record to the presence-failures queue", () => {
        const m = mapping();
        assert.deepEqual(
          [m.inputs.bisectBatchOnFunctionError, m.inputs.maximumRetryAttempts, m.inputs.maximumRecordAgeInSeconds],
          [true, 10, 3600],
        );
        assert.deepEqual(m.inputs.destinationConfig, { onFailure: { destinationArn: one(program, "aws:sqs/queue:Queue", "presence-failures").state.arn } });
        // Nothing the program does not state: one shard read by one instance, whole-batch failures.
        const settings = Object.keys(m.inputs).sort();
        assert.deepEqual(settings, [
          "batchSize",
          "bisectBatchOnFunctionError",
          "destinationConfig",
          "eventSourceArn",
          "filterCriteria",
          "functionName",
          "maximumBatchingWindowInSeconds",
          "maximumRecordAgeInSeconds",
          "maximumRetryAttempts",
          "startingPosition",
        ]);
      });

      it("filters on INSERTs of a record with a room and REMOVEs of one, and nothing else", () => {
        assert.deepEqual(Object.keys(mapping().inputs.filterCriteria), ["filters"]);
        assert.deepEqual(patterns().map((p) => JSON.parse(p)), [
          { eventName: ["INSERT"], dynamodb: { NewImage: { room: { S: [{ exists: true }] } } } },
          { eventName: ["REMOVE"], dynamodb: { OldImage: { room: { S: [{ exists: true }] } } } },
        ]);
        assert.ok(passes({ eventName: "INSERT", dynamodb: { NewImage: image() } }), "a connection opened: a join");
        assert.ok(passes({ eventName: "REMOVE", dynamodb: { OldImage: image() } }), "a connection closed or expired: a leave");
      });

      it("must not invoke presence for a budget or typing update (MODIFY), nor for a name's place (no room)", () => {
        assert.ok(!passes({ eventName: "MODIFY", dynamodb: { OldImage: image(), NewImage: image({ rlCount: { N: "3" } }) } }));
        const place = { connectionId: { S: "#name#ada#0" }, holder: { S: "c1" }, expiresAt: { N: "2" } };
        assert.ok(!passes({ eventName: "INSERT", dynamodb: { NewImage: place } }));
        assert.ok(!passes({ eventName: "REMOVE", dynamodb: { OldImage: place } }));
        // A REMOVE is judged by its old image only; an INSERT by its new one.
        assert.ok(!passes({ eventName: "REMOVE", dynamodb: { NewImage: image() } }));
        assert.ok(!passes({ eventName: "INSERT", dynamodb: { OldImage: image() } }));
      });
    });

    it("keys the messages table by room and cursor, with TTL on expiresAt and on-demand billing", () => {
      const t = one(program, "aws:dynamodb/table:Table", "messages");
      assert.equal(t.inputs.hashKey, "room");
      assert.equal(t.inputs.rangeKey, "cursor");
      assert.equal(t.inputs.billingMode, "PAY_PER_REQUEST");
      assert.deepEqual(t.inputs.ttl, { attributeName: "expiresAt", enabled: true });
      assert.deepEqual(t.inputs.attributes, [{ name: "room", type: "S" }, { name: "cursor", type: "S" }]);
    });

    it(prod ? "protects both tables: point-in-time recovery and deletion protection" : "must not protect the dev tables", () => {
      for (const t of byType(program, "aws:dynamodb/table:Table")) {
        assert.equal(t.inputs.pointInTimeRecovery.enabled, prod, t.name);
        assert.equal(t.inputs.deletionProtectionEnabled, prod, t.name);
      }
    });

    it(`must ${prod ? "reserve each function's concurrency from its setting" : "leave every function unreserved (reserving needs account headroom a new account lacks)"}`, () => {
      const setting: Record<string, string> = {
        connect: "Connect", disconnect: "Disconnect", authorizer: "Authorizer", sendmessage: "SendMessage", fanout: "Fanout", history: "History", default: "Default",
        presence: "Presence", typing: "Typing", members: "Members", read: "Read",
      };
      assert.deepEqual(Object.keys(setting).sort(), [...functionNames(), ...(prod ? [] : ["authorizer"])].sort(), "a setting per function");
      let reserved = 0;
      for (const route of functionNames()) {
        const value = Number(config(`reservedConcurrency${setting[route]}`));
        assert.equal(fn(route).inputs.reservedConcurrentExecutions, value === 0 ? -1 : value, route);
        if (prod) assert.ok(value > 0, `${route}: reserved on prod`);
        reserved += value;
      }
      if (prod) assert.ok(reserved > 0 && reserved <= 900, `${reserved} reserved: Lambda keeps 100 of the default 1,000 unreserved`);
      else assert.equal(reserved, 0);
      // The preflight counts exactly what the program reserves.
      const reservedByFunction = Object.fromEntries(
        functionNames().map((f) => [f, fn(f).inputs.reservedConcurrentExecutions]).filter(([, n]) => n > 0),
      );
      assert.deepEqual(plannedReservations(parseSettings("ws-chat", (key) => config(key))), reservedByFunction);
    });

    it("runs every function on nodejs22.x with the memory, timeout and its own log group from the settings", () => {
      for (const route of functionNames()) {
        const f = fn(route);
        assert.equal(f.inputs.runtime, "nodejs22.x");
        assert.equal(f.inputs.handler, "__index.handler");
        assert.equal(f.inputs.memorySize, Number(config("lambdaMemoryMb")));
        assert.equal(f.inputs.timeout, Number(config("lambdaTimeoutSeconds")));
        const logGroup = one(program, "aws:cloudwatch/logGroup:LogGroup", `ws-chat-${route}`);
        assert.equal(f.inputs.loggingConfig.logGroup, logGroup.state.name);
        assert.equal(logGroup.inputs.retentionInDays, Number(config("logRetentionDays")));
        assert.deepEqual(f.inputs.tracingConfig, { mode: prod ? "Active" : "PassThrough" });
      }
    });

    it("passes tables, index, endpoint and limits to the handlers only through environment variables", () => {
      const endpoint = `https://${api().id}.execute-api.${program.region}.amazonaws.com/${config("stageName")}`;
      const table = one(program, "aws:dynamodb/table:Table", "connections").state.name;
      const messages = one(program, "aws:dynamodb/table:Table", "messages").state.name;
      const connectionsEnv = { CONNECTIONS_TABLE: table, ROOM_INDEX: "byRoom" };
      const budgetEnv = { RATE_LIMIT_MESSAGES: config("rateLimitMessages"), RATE_LIMIT_WINDOW_SECONDS: config("rateLimitWindowSeconds") };
      const historyEnv = { MESSAGES_TABLE: messages, HISTORY_RETENTION_DAYS: config("historyRetentionDays"), HOLE_GRACE_MS: String((Number(config("lambdaTimeoutSeconds")) + 5) * 1000) };
      assert.deepEqual(fn("connect").inputs.environment.variables, { ...connectionsEnv, ...(prod ? { MAX_CONNECTIONS_PER_NAME: config("maxConnectionsPerName") } : {}) });
      assert.deepEqual(fn("disconnect").inputs.environment.variables, connectionsEnv);
      assert.deepEqual(fn("default").inputs.environment.variables, { ...connectionsEnv, ...budgetEnv, MANAGEMENT_ENDPOINT: endpoint });
      assert.deepEqual(fn("history").inputs.environment.variables, { ...connectionsEnv, ...historyEnv, ...budgetEnv, MANAGEMENT_ENDPOINT: endpoint });
      assert.deepEqual(fn("fanout").inputs.environment.variables, { ...connectionsEnv, MANAGEMENT_ENDPOINT: endpoint, FANOUT_CONCURRENCY: config("fanoutConcurrency") });
      const presenceEnv = { PRESENCE_LIMIT: config("presenceLimit") };
      const fanoutEnv = { FANOUT_CONCURRENCY: config("fanoutConcurrency"), FANOUT_CHUNK_SIZE: config("fanoutChunkSize"), FANOUT_FUNCTION: fn("fanout").state.name };
      assert.deepEqual(fn("sendmessage").inputs.environment.variables, {
        ...connectionsEnv,
        ...historyEnv,
        MANAGEMENT_ENDPOINT: endpoint,
        MAX_MESSAGE_BYTES: config("maxMessageBytes"),
        ...fanoutEnv,
        EDIT_WINDOW_MS: String(Number(config("editWindowMinutes")) * 60_000),
        ...budgetEnv,
      });
      assert.deepEqual(fn("presence").inputs.environment.variables, { ...connectionsEnv, ...historyEnv, ...presenceEnv, MANAGEMENT_ENDPOINT: endpoint, ...fanoutEnv });
      assert.deepEqual(fn("typing").inputs.environment.variables, {
        ...connectionsEnv,
        ...presenceEnv,
        MANAGEMENT_ENDPOINT: endpoint,
        TYPING_INTERVAL_MS: String(Number(config("typingIntervalSeconds")) * 1000),
      });
      assert.deepEqual(fn("members").inputs.environment.variables, { ...connectionsEnv, ...budgetEnv, ...presenceEnv, MANAGEMENT_ENDPOINT: endpoint });
      assert.deepEqual(fn("read").inputs.environment.variables, { ...connectionsEnv, ...historyEnv, ...budgetEnv, MANAGEMENT_ENDPOINT: endpoint });
      if (prod) {
        assert.deepEqual(fn("authorizer").inputs.environment.variables, {
          TOKEN_KEY: TOKEN_KEY,
          TOKEN_AUDIENCE: "ws-chat/prod",
          TOKEN_MAX_LIFETIME_SECONDS: String(Number(config("tokenMaxLifetimeHours")) * 3600),
        });
        assert.ok(fn("authorizer").secretInputs.some((p) => p.startsWith("environment")), "the token key stays a secret in the state");
      }
      assert.equal(config("historyRetentionDays"), prod ? "30" : "1");
    });

    describe("least privilege", () => {
      const tableArn = (name = "connections") => one(program, "aws:dynamodb/table:Table", name).state.arn;
      // This table's streams (AWS's example policy scopes the four actions so); the stream's own ARN is under it.
      const streamArn = () => `${tableArn()}/stream/*`;
      // Lambda's four stream actions: three on this table's streams, ListStreams on "*", the only
      // resource the Service Authorization Reference gives it.
      const STREAM_READ = () => [
        { Action: ["dynamodb:DescribeStream", "dynamodb:GetRecords", "dynamodb:GetShardIterator"], Resource: [streamArn()] },
        { Action: ["dynamodb:ListStreams"], Resource: ["*"] },
      ];
      const STREAM_ACTIONS = () => STREAM_READ().flatMap((st) => st.Action);
      const stageArn = (method: string) => `${api().state.executionArn}/${config("stageName")}/${method}/@connections/*`;
      const XRAY = { Action: ["xray:PutTraceSegments", "xray:PutTelemetryRecords"], Resource: ["*"] };
      function statements(route: string) {
        const role = one(program, "aws:iam/role:Role", `ws-chat-${route}`);
        assert.equal(fn(route).inputs.role, role.state.arn);
        const policies = byType(program, "aws:iam/rolePolicy:RolePolicy").filter((p) => p.inputs.role === role.id);
        assert.equal(policies.length, 1, "one inline policy per role");
        const logGroupArn = one(program, "aws:cloudwatch/logGroup:LogGroup", `ws-chat-${route}`).state.arn;
        const all = (JSON.parse(policies[0].inputs.policy).Statement as { Effect: string; Action: string[]; Resource: string[] }[]).map(
          ({ Effect, Action, Resource }) => {
            assert.equal(Effect, "Allow");
            return { Action, Resource };
          },
        );
        const own = all.filter((s) => s.Action.some((a) => a.startsWith("logs:") || a.startsWith("xray:")));
        assert.deepEqual(own, [
          { Action: ["logs:CreateLogStream", "logs:PutLogEvents"], Resource: [`${logGroupArn}:*`] },
          ...(prod ? [XRAY] : []),
        ]);
        return all.filter((s) => !own.includes(s));
      }

      it(`connect may only PutItem on the connections table${prod ? " (and DeleteItem a name's place it took, with auth on)" : ""}`, () => {
        assert.deepEqual(statements("connect"), [{ Action: ["dynamodb:PutItem", ...(prod ? ["dynamodb:DeleteItem"] : [])], Resource: [tableArn()] }]);
      });
      it("disconnect may only read (GetItem) and DeleteItem on the connections table", () => {
        assert.deepEqual(statements("disconnect"), [{ Action: ["dynamodb:GetItem", "dynamodb:DeleteItem"], Resource: [tableArn()] }]);
      });
      it("sendmessage may admit the sender, Query the room index, append to history, POST to this stage's @connections and invoke fanout", () => {
        assert.deepEqual(statements("sendmessage"), [
          { Action: ["dynamodb:UpdateItem", "dynamodb:GetItem", "dynamodb:DeleteItem"], Resource: [tableArn()] },
          { Action: ["dynamodb:Query"], Resource: [`${tableArn()}/index/byRoom`] },
          { Action: ["dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem"], Resource: [tableArn("messages")] },
          { Action: ["execute-api:ManageConnections"], Resource: [stageArn("POST")] },
          { Action: ["lambda:InvokeFunction"], Resource: [fn("fanout").state.arn] },
        ]);
      });
      it("presence may read the connections stream (Lambda's four stream actions, on that stream only), Query the room index, read and DeleteItem stale records, append to history, POST to this stage's @connections, invoke fanout and send to its failure queue", () => {
        assert.deepEqual(statements("presence"), [
          ...STREAM_READ(),
          { Action: ["dynamodb:Query"], Resource: [`${tableArn()}/index/byRoom`] },
          { Action: ["dynamodb:GetItem", "dynamodb:DeleteItem"], Resource: [tableArn()] },
          { Action: ["dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem"], Resource: [tableArn("messages")] },
          { Action: ["execute-api:ManageConnections"], Resource: [stageArn("POST")] },
          { Action: ["lambda:InvokeFunction"], Resource: [fn("fanout").state.arn] },
          { Action: ["sqs:SendMessage"], Resource: [one(program, "aws:sqs/queue:Queue", "presence-failures").state.arn] },
        ]);
      });
      it("typing may only UpdateItem its caller's record, read and DeleteItem stale ones, Query the room index and POST to this stage's @connections", () => {
        assert.deepEqual(statements("typing"), [
          { Action: ["dynamodb:UpdateItem", "dynamodb:GetItem", "dynamodb:DeleteItem"], Resource: [tableArn()] },
          { Action: ["dynamodb:Query"], Resource: [`${tableArn()}/index/byRoom`] },
          { Action: ["execute-api:ManageConnections"], Resource: [stageArn("POST")] },
        ]);
      });
      it("members may only spend the caller's budget, Query the room index and POST to this stage's @connections", () => {
        assert.deepEqual(statements("members"), [
          { Action: ["dynamodb:UpdateItem", "dynamodb:GetItem"], Resource: [tableArn()] },
          { Action: ["dynamodb:Query"], Resource: [`${tableArn()}/index/byRoom`] },
          { Action: ["execute-api:ManageConnections"], Resource: [stageArn("POST")] },
        ]);
      });
      it("read may only spend the caller's budget, read and move markers in the messages table (GetItem, UpdateItem, Query) and POST to this stage's @connections", () => {
        assert.deepEqual(statements("read"), [
          { Action: ["dynamodb:UpdateItem", "dynamodb:GetItem"], Resource: [tableArn()] },
          { Action: ["dynamodb:GetItem", "dynamodb:UpdateItem", "dynamodb:Query"], Resource: [tableArn("messages")] },
          { Action: ["execute-api:ManageConnections"], Resource: [stageArn("POST")] },
        ]);
      });
      it("must not let any function but presence read the connections stream, nor grant a stream action on anything else", () => {
        for (const name of functionNames()) {
          const reading = statements(name).filter((s) => s.Action.some((a) => STREAM_ACTIONS().includes(a)) || s.Resource.some((r) => r.includes("/stream/")));
          assert.deepEqual(reading, name === "presence" ? STREAM_READ() : [], name);
        }
      });
      it("fanout may only POST to this stage's @connections, read and DeleteItem stale records", () => {
        assert.deepEqual(statements("fanout"), [
          { Action: ["execute-api:ManageConnections"], Resource: [stageArn("POST")] },
          { Action: ["dynamodb:GetItem", "dynamodb:DeleteItem"], Resource: [tableArn()] },
        ]);
      });
      it("fanout is retried by Lambda's event queue at most twice, for at most two minutes", () => {
        const config = one(program, "aws:lambda/functionEventInvokeConfig:FunctionEventInvokeConfig");
        assert.deepEqual(
          [config.inputs.functionName, config.inputs.maximumRetryAttempts, config.inputs.maximumEventAgeInSeconds],
          [fn("fanout").state.name, 2, 120],
        );
      });
      it("history may spend the caller's budget, read the messages table, tombstone settled holes in it and POST to this stage's @connections", () => {
        assert.deepEqual(statements("history"), [
          { Action: ["dynamodb:UpdateItem", "dynamodb:GetItem"], Resource: [tableArn()] },
          { Action: ["dynamodb:Query", "dynamodb:GetItem"], Resource: [tableArn("messages")] },
          { Action: ["dynamodb:PutItem"], Resource: [tableArn("messages")] },
          { Action: ["execute-api:ManageConnections"], Resource: [stageArn("POST")] },
        ]);
      });
      it("default may only spend the caller's budget and GET and POST on this stage's @connections", () => {
        assert.deepEqual(statements("default"), [
          { Action: ["dynamodb:UpdateItem", "dynamodb:GetItem"], Resource: [tableArn()] },
          { Action: ["execute-api:ManageConnections"], Resource: [stageArn("GET"), stageArn("POST")] },
        ]);
      });
      if (prod) {
        it("the authorizer may only write its logs (and traces)", () => {
          assert.deepEqual(statements("authorizer"), []);
        });
      }

      it("must not attach any managed policy to a function role, nor use '*' except for X-Ray's write actions and ListStreams", () => {
        const functionRoles = new Set(byType(program, "aws:lambda/function:Function").map((f) => f.inputs.role));
        assert.equal(functionRoles.size, functionNames().length, "one role per function");
        assert.deepEqual(byType(program, "aws:iam/rolePolicyAttachment:RolePolicyAttachment"), []);
        for (const role of byType(program, "aws:iam/role:Role").filter((r) => functionRoles.has(r.state.arn))) {
          assert.equal(role.inputs.managedPolicyArns, undefined);
          assert.equal(JSON.parse(role.inputs.assumeRolePolicy).Statement[0].Principal.Service, "lambda.amazonaws.com");
        }
        for (const policy of byType(program, "aws:iam/rolePolicy:RolePolicy")) {
          for (const s of JSON.parse(policy.inputs.policy).Statement) {
            for (const a of s.Action) assert.ok(!a.includes("*"), `${policy.name}: action ${a}`);
            const wide = JSON.stringify({ Action: s.Action, Resource: s.Resource });
            if (s.Resource.includes("*")) assert.ok([XRAY, STREAM_READ()[1]].some((allowed) => JSON.stringify(allowed) === wide), `${policy.name}: '*' resource for ${wide}`);
            for (const r of s.Resource) assert.ok(!r.endsWith(":*:*"), `${policy.name}: resource ${r}`);
          }
        }
      });
    });

    it(prod ? "alarms on every function's errors and logged failures, on the throttles of those invoked synchronously, on dropped fan-out chunks, presence's lag and failure queue, API failures and DynamoDB throttling, to an SNS topic" : "must not create alarms or a topic in dev", () => {
      const alarms = byType(program, "aws:cloudwatch/metricAlarm:MetricAlarm");
      const topics = byType(program, "aws:sns/topic:Topic");
      if (!prod) {
        assert.deepEqual([alarms, topics, byType(program, "aws:cloudwatch/logMetricFilter:LogMetricFilter")], [[], [], []]);
        return;
      }
      assert.equal(topics.length, 1);
      const metric = (a: RecordedResource) => `${a.inputs.namespace} ${a.inputs.metricName} ${JSON.stringify(a.inputs.dimensions)}`;
      const of = (f: string) => JSON.stringify({ FunctionName: fn(f).state.name });
      const synchronous = functionNames().filter((f) => !UNROUTED_FUNCTIONS.includes(f));
      const expected = [
        ...functionNames().flatMap((f) => [`AWS/Lambda Errors ${of(f)}`, `ws-chat/prod LoggedErrors-${f} {}`]),
        ...synchronous.map((f) => `AWS/Lambda Throttles ${of(f)}`),
        `AWS/Lambda AsyncEventsDropped ${of("fanout")}`,
        `AWS/Lambda IteratorAge ${of("presence")}`,
        `AWS/SQS ApproximateNumberOfMessagesVisible ${JSON.stringify({ QueueName: one(program, "aws:sqs/queue:Queue", "presence-failures").state.name })}`,
        "ws-chat/prod ApiServerErrors {}",
        `AWS/ApiGateway ExecutionError ${JSON.stringify({ ApiId: api().id, Stage: "prod" })}`,
        ...["connections", "messages"].flatMap((t) =>
          ["ReadThrottleEvents", "WriteThrottleEvents"].map((m) => `AWS/DynamoDB ${m} ${JSON.stringify({ TableName: one(program, "aws:dynamodb/table:Table", t).state.name })}`),
        ),
      ];
      assert.deepEqual(alarms.map(metric).sort(), expected.sort());
      // Named after what they watch: sendmessage's once, none for the edit and delete routes.
      assert.deepEqual(alarms.map((a) => a.name).sort(), [
        ...functionNames().flatMap((f) => [`${f}-errors`, `${f}-logged-errors`]),
        ...synchronous.map((f) => `${f}-throttles`),
        "fanout-dropped",
        "presence-iterator-age",
        "presence-failures",
        "api-server-errors",
        "api-execution-errors",
        ...["connections", "messages"].flatMap((t) => [`${t}-read-throttles`, `${t}-write-throttles`]),
      ].sort());
      for (const a of alarms) {
        assert.deepEqual(a.inputs.alarmActions, [topics[0].state.arn], `${a.name} notifies the topic`);
        assert.deepEqual(a.inputs.okActions, [topics[0].state.arn]);
        assert.deepEqual([a.inputs.period, a.inputs.evaluationPeriods, a.inputs.comparisonOperator], [60, 1, "GreaterThanOrEqualToThreshold"], a.name);
        assert.deepEqual([a.inputs.statistic, a.inputs.threshold], a.name === "presence-iterator-age" ? ["Maximum", 60_000] : [a.name === "presence-failures" ? "Maximum" : "Sum", 1], a.name);
        assert.equal(a.inputs.treatMissingData, "notBreaching");
      }
    });

    it(prod ? "publishes the page from a private bucket that only its CloudFront distribution can read" : "must not publish the page in dev", () => {
      const buckets = byType(program, "aws:s3/bucket:Bucket");
      if (!prod) {
        assert.deepEqual([buckets, byType(program, "aws:cloudfront/distribution:Distribution")], [[], []]);
        return;
      }
      const [bucket] = buckets;
      assert.equal(bucket.inputs.acl, undefined, "no ACL");
      assert.deepEqual(
        { ...one(program, "aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock").inputs, bucket: undefined },
        { bucket: undefined, blockPublicAcls: true, blockPublicPolicy: true, ignorePublicAcls: true, restrictPublicBuckets: true },
      );
      assert.deepEqual(one(program, "aws:s3/bucketOwnershipControls:BucketOwnershipControls").inputs.rule, { objectOwnership: "BucketOwnerEnforced" });
      for (const acl of byType(program, "aws:s3/bucketAclV2:BucketAclV2")) assert.fail(`unexpected ACL ${acl.name}`);
      const objects = byType(program, "aws:s3/bucketObjectv2:BucketObjectv2");
      assert.deepEqual(objects.map((o) => o.inputs.key).sort(), ["chat.css", "chat.js", "config.json", "index.html", "room-stream.js"]);
      for (const o of objects) {
        assert.equal(o.inputs.bucket, bucket.id);
        assert.equal(o.inputs.acl, undefined, `${o.inputs.key}: no ACL`);
      }
      const pageConfig = objects.find((o) => o.inputs.key === "config.json")!;
      assert.deepEqual(JSON.parse(pageConfig.inputs.content), { url: program.outputs.url, authEnabled: true, maxMessageBytes: Number(config("maxMessageBytes")) });

      const oac = one(program, "aws:cloudfront/originAccessControl:OriginAccessControl");
      assert.deepEqual([oac.inputs.originAccessControlOriginType, oac.inputs.signingBehavior, oac.inputs.signingProtocol], ["s3", "always", "sigv4"]);
      const cdn = one(program, "aws:cloudfront/distribution:Distribution");
      assert.deepEqual(cdn.inputs.origins, [{ originId: "page", domainName: bucket.state.bucketRegionalDomainName, originAccessControlId: oac.id }]);
      assert.equal(cdn.inputs.defaultCacheBehavior.viewerProtocolPolicy, "redirect-to-https");
      assert.deepEqual(cdn.inputs.defaultCacheBehavior.allowedMethods, ["GET", "HEAD"]);
      assert.equal(cdn.inputs.defaultRootObject, "index.html");

      const policy = JSON.parse(one(program, "aws:s3/bucketPolicy:BucketPolicy").inputs.policy);
      assert.deepEqual(policy.Statement, [
        {
          Sid: "CloudFrontReadsPage",
          Effect: "Allow",
          Principal: { Service: "cloudfront.amazonaws.com" },
          Action: "s3:GetObject",
          Resource: `${bucket.state.arn}/*`,
          Condition: { StringEquals: { "AWS:SourceArn": cdn.state.arn } },
        },
      ]);
    });

    describe("function archives", () => {
      it("are __index.js alone: no node_modules packed, the runtime's AWS SDK is used", () => {
        assert.equal(program.archives.size, functionNames().length);
        for (const [name, archive] of program.archives) {
          assert.deepEqual([...archive.keys()], ["__index.js"], name);
        }
      });

      it("are one per function, named after it", () => {
        assert.deepEqual([...program.archives.keys()].sort(), functionNames().map((f) => `ws-chat-${f}`).sort());
      });

      it("load in Node with only their own function's environment variables and export a two-parameter handler", () => {
        // Inside the project, so the archives' require("@aws-sdk/…") resolves as it would on Lambda.
        fs.mkdirSync(path.join(PROJECT_DIR, ".local"), { recursive: true });
        const dir = fs.mkdtempSync(path.join(PROJECT_DIR, ".local", "archive-test-"));
        const restore = { ...process.env };
        try {
          for (const [name, archive] of program.archives) {
            // Each handler factory runs when its archive loads and reads its settings then: a variable
            // its function lacks fails here (no other function's variables are set).
            const own = byType(program, "aws:lambda/function:Function").find((f) => f.name === name)!.inputs.environment.variables;
            process.env = { ...restore, ...own, AWS_REGION: program.region }; // Lambda sets AWS_REGION in every instance
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

      it("must not contain any config value or the token key: pulumi.Config is never captured", () => {
        for (const [name, archive] of program.archives) {
          const code = archive.get("__index.js")!.toString("utf8");
          assert.ok(!code.includes(CANARY), `${name} captured config`);
          assert.ok(!code.includes(TOKEN_KEY), `${name} captured the token key`);
          assert.ok(!/pulumi/i.test(code), `${name} references Pulumi`);
        }
      });
    });

    it(`exports the stack outputs url, connectionsUrl, tableName, stage and region`, () => {
      const id = api().id;
      const expected: Record<string, unknown> = {
        url: `wss://${id}.execute-api.${program.region}.amazonaws.com/${config("stageName")}`,
        connectionsUrl: `https://${id}.execute-api.${program.region}.amazonaws.com/${config("stageName")}/@connections`,
        tableName: one(program, "aws:dynamodb/table:Table", "connections").state.name,
        messagesTableName: one(program, "aws:dynamodb/table:Table", "messages").state.name,
        stage: config("stageName"),
        authEnabled: prod,
        region: program.region,
      };
      if (prod) expected.tokenAudience = "ws-chat/prod";
      if (prod) expected.alarmTopicArn = one(program, "aws:sns/topic:Topic").state.arn;
      if (prod) expected.webUrl = `https://${one(program, "aws:cloudfront/distribution:Distribution").state.domainName}/`;
      assert.deepEqual(program.outputs, expected);
      assert.equal(program.region, program.config["aws:region"]);
      assert.ok(FAKE_ACCOUNT_ID);
    });
  });
}

/**
 * The subset of CloudWatch Logs' JSON filter syntax the program's patterns use: `$.field = "text"`
 * terms joined by `||`, where a trailing `*` matches any rest (FilterAndPatternSyntax.html). Throws
 * on anything else, so a pattern it cannot judge fails the test instead of passing it.
 */
function jsonPatternMatches(pattern: string, line: Record<string, unknown>): boolean {
  const body = /^\{ (.*) \}$/.exec(pattern)?.[1];
  if (!body) throw new Error(`not a JSON filter pattern: ${pattern}`);
  return body.split(" || ").some((term) => {
    const [, field, value] = /^\$\.(\w+) = "([^"*]*\*?)"$/.exec(term) ?? assert.fail(`term not understood: ${term}`);
    const actual = line[field];
    if (typeof actual !== "string" && typeof actual !== "number") return false;
    return value.endsWith("*") ? String(actual).startsWith(value.slice(0, -1)) : String(actual) === value;
  });
}

describe("the program under mocks: alarms that mean failure, and no presence batch lost unrecorded (prod)", () => {
  let program: LoadedProgram;
  before(async () => {
    program = await loadProgram({ stack: "prod", secrets: { "ws-chat:tokenKey": TOKEN_KEY } });
  });
  const alarms = () => byType(program, "aws:cloudwatch/metricAlarm:MetricAlarm");
  const filters = () => byType(program, "aws:cloudwatch/logMetricFilter:LogMetricFilter");
  const queue = () => one(program, "aws:sqs/queue:Queue", "presence-failures");

  it("must not alarm on API Gateway's IntegrationError or ClientError, which count refusals (a bad room's 400, a denied token's 403, a spent budget's 429)", () => {
    assert.deepEqual(alarms().filter((a) => ["IntegrationError", "ClientError"].includes(a.inputs.metricName)).map((a) => a.name), []);
  });

  it("counts the API's failures from the access log: a 5xx answer or integration status, never a 4xx refusal nor a success", () => {
    const stage = one(program, "aws:apigatewayv2/stage:Stage");
    const logGroup = one(program, "aws:cloudwatch/logGroup:LogGroup", "chat-access");
    assert.equal(stage.inputs.accessLogSettings.destinationArn, logGroup.state.arn);
    const format = JSON.parse(stage.inputs.accessLogSettings.format);
    assert.deepEqual([format.status, format.integrationStatus], ["$context.status", "$context.integrationStatus"], "the fields the filter reads are logged");
    const [filter] = filters().filter((f) => f.inputs.logGroupName === logGroup.state.name);
    assert.deepEqual(filter.inputs.metricTransformation, { name: "ApiServerErrors", namespace: "ws-chat/prod", value: "1" });
    const matches = (status: string, integrationStatus: string) => jsonPatternMatches(filter.inputs.pattern, { ...format, status, integrationStatus });
    for (const [status, integration] of [["400", "400"], ["403", "-"], ["429", "429"], ["401", "-"], ["200", "200"], ["429", "-"]]) assert.equal(matches(status, integration), false, `${status}/${integration} is not a failure`);
    for (const [status, integration] of [["500", "200"], ["502", "-"], ["504", "-"], ["503", "503"], ["200", "500"]]) assert.equal(matches(status, integration), true, `${status}/${integration} is a failure`);
    const alarm = alarms().find((a) => a.name === "api-server-errors")!;
    assert.deepEqual([alarm.inputs.namespace, alarm.inputs.metricName, alarm.inputs.statistic, alarm.inputs.threshold], ["ws-chat/prod", "ApiServerErrors", "Sum", 1]);
  });

  it("counts each function's ERROR lines (the failures a handler answers itself), never its WARN lines (refusals)", () => {
    const functions = byType(program, "aws:lambda/function:Function");
    for (const fn of functions) {
      const id = fn.name.replace(/^ws-chat-/, "");
      const logGroup = one(program, "aws:cloudwatch/logGroup:LogGroup", fn.name);
      const filter = one(program, "aws:cloudwatch/logMetricFilter:LogMetricFilter", `${id}-logged-errors`);
      assert.deepEqual([filter.inputs.logGroupName, filter.inputs.pattern, filter.inputs.metricTransformation], [logGroup.state.name, "ERROR", { name: `LoggedErrors-${id}`, namespace: "ws-chat/prod", value: "1" }]);
      assert.equal(fn.inputs.loggingConfig.logFormat, "Text", "Lambda's text format tags console.error lines ERROR and console.warn lines WARN");
    }
    assert.equal(filters().length, functions.length + 1, "one per function, and the access log's");
  });

  it("must not page on throttles of fanout or presence, whose invocations Lambda retries (what they could lose has its own alarm)", () => {
    const throttled = alarms().filter((a) => a.inputs.metricName === "Throttles").map((a) => a.inputs.dimensions.FunctionName);
    for (const f of ["fanout", "presence"]) assert.ok(!throttled.includes(one(program, "aws:lambda/function:Function", `ws-chat-${f}`).state.name), f);
    assert.ok(alarms().some((a) => a.name === "fanout-dropped"));
  });

  it("alarms when presence is 60 s behind its stream (IteratorAge, its maximum) and as soon as its failure queue holds a record", () => {
    const [age] = alarms().filter((a) => a.inputs.metricName === "IteratorAge");
    assert.deepEqual(
      [age.inputs.namespace, age.inputs.dimensions, age.inputs.statistic, age.inputs.threshold, age.inputs.period],
      ["AWS/Lambda", { FunctionName: one(program, "aws:lambda/function:Function", "ws-chat-presence").state.name }, "Maximum", 60_000, 60],
    );
    const [depth] = alarms().filter((a) => a.inputs.namespace === "AWS/SQS");
    assert.deepEqual(
      [depth.inputs.metricName, depth.inputs.dimensions, depth.inputs.statistic, depth.inputs.comparisonOperator, depth.inputs.threshold],
      ["ApproximateNumberOfMessagesVisible", { QueueName: queue().state.name }, "Maximum", "GreaterThanOrEqualToThreshold", 1],
    );
  });

  it("has as many alarms as the monthly cost model charges for (npm run cost, docs/deploy.md)", () => {
    assert.equal(alarms().length, PROD_COST_ASSUMPTIONS.alarms);
  });

  it("keeps a given-up batch's record 14 days (SQS's maximum), encrypted, in a queue the presence mapping names as its on-failure destination", () => {
    assert.deepEqual([queue().inputs.name, queue().inputs.messageRetentionSeconds, queue().inputs.sqsManagedSseEnabled], ["ws-chat-prod-presence-failures", 1_209_600, true]);
    const mapping = one(program, "aws:lambda/eventSourceMapping:EventSourceMapping", "presence");
    assert.equal(mapping.inputs.destinationConfig.onFailure.destinationArn, queue().state.arn);
  });

  it("must not let any function but presence send to SQS, nor presence send anything but SendMessage to its failure queue", () => {
    for (const policy of byType(program, "aws:iam/rolePolicy:RolePolicy")) {
      const sqs = (JSON.parse(policy.inputs.policy).Statement as { Sid: string; Action: string[]; Resource: string[] }[]).filter((s) => s.Action.some((a) => a.startsWith("sqs:")));
      assert.deepEqual(sqs, policy.name === "ws-chat-presence" ? [{ Sid: "RecordFailedBatches", Effect: "Allow", Action: ["sqs:SendMessage"], Resource: [queue().state.arn] }] : [], policy.name);
    }
  });
});

describe("the program under mocks: settings the new routes read", () => {
  it("passes presenceLimit, typingIntervalSeconds (as ms) and editWindowMinutes (as ms) from the settings, not from defaults in the code", async () => {
    const program = await loadProgram({
      stack: "dev",
      configOverrides: { "ws-chat:presenceLimit": "7", "ws-chat:typingIntervalSeconds": "3", "ws-chat:editWindowMinutes": "5" },
    });
    const env = (name: string) => program.resources.find((r) => r.type === "aws:lambda/function:Function" && r.name === `ws-chat-${name}`)!.inputs.environment.variables;
    assert.deepEqual(
      ["presence", "typing", "members"].map((name) => env(name).PRESENCE_LIMIT),
      ["7", "7", "7"],
    );
    assert.equal(env("typing").TYPING_INTERVAL_MS, "3000");
    assert.equal(env("sendmessage").EDIT_WINDOW_MS, "300000");
  });
});

describe("the program under mocks: the account preflight (Lambda's concurrency quota)", () => {
  const QUOTA = "aws:servicequotas/getServiceQuota:getServiceQuota";
  const quota = (value: number) => ({ [QUOTA]: { serviceCode: "lambda", quotaCode: "L-B99A9384", id: "lambda/L-B99A9384", region: "us-east-1", value, defaultValue: 1000, adjustable: true, globalQuota: false, quotaName: "Concurrent executions", serviceName: "AWS Lambda" } });
  const prod = (value: number) => loadProgram({ stack: "prod", secrets: { "ws-chat:tokenKey": TOKEN_KEY }, dataSources: quota(value) });
  /**
   * A refused load fails each reserving function's registration: the first failure ends the load,
   * the others land later, as unhandled rejections. Waits for the mocked engine's queue to drain,
   * taking them, so that none lands in the next load.
   */
  async function drained(): Promise<void> {
    const late = () => undefined;
    process.on("unhandledRejection", late);
    try {
      await (settingsModule as { waitForRPCs?: () => Promise<void> }).waitForRPCs?.().catch(() => undefined);
      await new Promise((resolve) => setImmediate(resolve));
    } finally {
      process.off("unhandledRejection", late);
    }
  }

  it("must refuse prod's 800 reservations on a new account's quota of 10, with the numbers and the fix", async () => {
    await assert.rejects(prod(10), (err: Error) => {
      assert.match(err.message, /prod reserves 800 concurrent executions over 11 functions; your account's concurrency quota in us-east-1 is 10; Lambda keeps 100 unreserved; ask for quota L-B99A9384 ≥ 900/);
      assert.match(err.message, /--service-code lambda --quota-code L-B99A9384 --desired-value 900 --region us-east-1/);
      assert.match(err.message, /or set reservedConcurrencyConnect, .*reservedConcurrencyRead to 0/);
      return true;
    });
    await drained();
  });
  it("must refuse one short of the reservations plus Lambda's unreserved 100 (899)", async () => {
    await assert.rejects(prod(899), /quota in us-east-1 is 899; Lambda keeps 100 unreserved; ask for quota L-B99A9384 ≥ 900/);
    await drained();
  });
  it("passes prod on a quota of 900, and the local stack's answer (1,000)", async () => {
    for (const program of [await prod(900), await loadProgram({ stack: "prod", secrets: { "ws-chat:tokenKey": TOKEN_KEY } })]) {
      assert.equal(program.resources.find((r) => r.name === "ws-chat-sendmessage" && r.type === "aws:lambda/function:Function")!.inputs.reservedConcurrentExecutions, 200);
    }
  });
  it("passes prod on a quota of 10 once every reservation is set to 0", async () => {
    const zero = Object.fromEntries(Object.values(RESERVATION_SETTINGS).map((key) => [`ws-chat:${key}`, "0"]));
    const program = await loadProgram({ stack: "prod", configOverrides: zero, secrets: { "ws-chat:tokenKey": TOKEN_KEY }, dataSources: quota(10) });
    for (const f of program.resources.filter((r) => r.type === "aws:lambda/function:Function")) assert.equal(f.inputs.reservedConcurrentExecutions, -1, f.name);
  });
});

describe("the program under mocks: lambdaArchitecture", () => {
  it("runs every function on x86_64 when set so", async () => {
    const program = await loadProgram({ stack: "dev", configOverrides: { "ws-chat:lambdaArchitecture": "x86_64" } });
    const functions = program.resources.filter((r) => r.type === "aws:lambda/function:Function");
    assert.ok(functions.length > 0);
    for (const f of functions) assert.deepEqual(f.inputs.architectures, ["x86_64"], f.name);
  });
});

describe("the program under mocks: a stack that opts in to API Gateway's account setting", () => {
  it("sets the role through a RolePolicyAttachment of AWS's managed policy in the stack's partition, and logs the stage", async () => {
    const program = await loadProgram({
      stack: "dev",
      configOverrides: { "ws-chat:manageApiGatewayAccount": "true" },
      dataSources: { "aws:index/getPartition:getPartition": { partition: "aws-cn", dnsSuffix: "amazonaws.com.cn", id: "aws-cn" } },
    });
    const of = (type: string) => program.resources.filter((r) => r.type === type);
    const [account] = of("aws:apigateway/account:Account");
    const role = of("aws:iam/role:Role").find((r) => r.name === "apigateway-cloudwatch")!;
    assert.equal(account.inputs.cloudwatchRoleArn, role.state.arn);
    assert.equal(JSON.parse(role.inputs.assumeRolePolicy).Statement[0].Principal.Service, "apigateway.amazonaws.com");
    assert.equal(role.inputs.managedPolicyArns, undefined);
    assert.deepEqual(
      of("aws:iam/rolePolicyAttachment:RolePolicyAttachment").map((a) => [a.inputs.role, a.inputs.policyArn]),
      [[role.state.name, "arn:aws-cn:iam::aws:policy/service-role/AmazonAPIGatewayPushToCloudWatchLogs"]],
    );
    const stage = of("aws:apigatewayv2/stage:Stage")[0];
    assert.equal(stage.inputs.defaultRouteSettings.loggingLevel, "INFO");
    assert.ok(stage.inputs.accessLogSettings.destinationArn);
  });
});

describe("the program under mocks: bad settings", () => {
  // First: a refused token key's late rejection (an apply) must not land inside these loads.
  it("must refuse the benchmark-only seed fan-out on prod", async () => {
    await assert.rejects(
      loadProgram({ stack: "prod", configOverrides: { "ws-chat:benchSeedFanout": "true" }, secrets: { "ws-chat:tokenKey": "k".repeat(48) } }),
      /ws-chat:benchSeedFanout serves the seed's sendmessage, which loses messages; it is for benchmarks and refused on prod/,
    );
  });
  it("with the benchmark-only seed fan-out on dev, routes sendmessage to the seed's algorithm with only Scan and POST, and must not route edit or delete to it", async () => {
    const program = await loadProgram({ stack: "dev", configOverrides: { "ws-chat:benchSeedFanout": "true" } });
    const seedRoutes = Object.keys(ROUTE_FUNCTIONS).filter((key) => key !== "edit" && key !== "delete");
    assert.deepEqual(program.resources.filter((r) => r.type === "aws:apigatewayv2/route:Route").map((r) => r.inputs.routeKey).sort(), seedRoutes.sort());
    assert.deepEqual(program.resources.filter((r) => r.type === "aws:lambda/permission:Permission").map((r) => r.name).sort(), seedRoutes.map(routeId).sort());
    const fn = program.resources.find((r) => r.type === "aws:lambda/function:Function" && r.name === "ws-chat-sendmessage")!;
    assert.match(program.archives.get(fn.name)!.get("__index.js")!.toString("utf8"), /ScanCommand/);
    const role = program.resources.find((r) => r.type === "aws:iam/role:Role" && r.name === "ws-chat-sendmessage")!;
    const policy = program.resources.find((r) => r.type === "aws:iam/rolePolicy:RolePolicy" && r.inputs.role === role.id)!;
    const actions = (JSON.parse(policy.inputs.policy).Statement as { Action: string[] }[]).flatMap((st) => st.Action);
    assert.deepEqual(actions, ["dynamodb:Scan", "execute-api:ManageConnections", "logs:CreateLogStream", "logs:PutLogEvents"]);
  });
  it("must fail to load, naming the key and the allowed range", async () => {
    await assert.rejects(loadProgram({ stack: "dev", configOverrides: { "ws-chat:lambdaMemoryMb": "1" } }), /ws-chat:lambdaMemoryMb must be an integer from 128 to 10240; got "1"/);
  });
  it("must refuse auth without a token key, saying how to set one", async () => {
    await assert.rejects(loadProgram({ stack: "prod" }), /ws-chat:tokenKey is required when authEnabled is true: pulumi config set --secret tokenKey/);
  });
  it("must refuse a token key shorter than 32 characters", async () => {
    await assert.rejects(loadProgram({ stack: "prod", secrets: { "ws-chat:tokenKey": "short" } }), /ws-chat:tokenKey must be at least 32 characters/);
  });
  it("must fail to load an unknown stack, listing the stacks there are", async () => {
    await assert.rejects(loadProgram({ stack: "staging" }), /no stack "staging".*stacks: dev, prod/);
  });
});

describe("the program's source", () => {
  it("must not hard-code the aws partition in an ARN (GovCloud and China use aws-us-gov and aws-cn)", () => {
    const sources = ["index.ts", ...["infra", "stacks", "handlers", "handlers/shared"].flatMap((dir) => fs.readdirSync(path.join(PROJECT_DIR, dir)).filter((f) => f.endsWith(".ts")).map((f) => `${dir}/${f}`))];
    for (const file of sources) assert.doesNotMatch(fs.readFileSync(path.join(PROJECT_DIR, file), "utf8"), /arn:aws:/, file);
  });
});
