/**
 * A serverless WebSocket chat: API Gateway WebSocket API → Lambda route handlers → DynamoDB.
 * Read top to bottom: settings, the tables, the API, the functions, the authorizer, the routes
 * that join them, the deployment and stage, the alarms, and the stack outputs.
 */
import * as aws from "@pulumi/aws";
import * as pulumi from "@pulumi/pulumi";
import { createHash } from "crypto";
import { authorizerHandlerFactory } from "./handlers/authorizer";
import { connectHandlerFactory } from "./handlers/connect";
import { defaultHandlerFactory } from "./handlers/default";
import { disconnectHandlerFactory } from "./handlers/disconnect";
import { historyHandlerFactory } from "./handlers/history";
import { fanoutHandlerFactory } from "./handlers/fanout";
import { membersHandlerFactory } from "./handlers/members";
import { presenceHandlerFactory } from "./handlers/presence";
import { readHandlerFactory } from "./handlers/read";
import { seedSendMessageHandlerFactory } from "./handlers/seed-sendmessage";
import { sendMessageHandlerFactory } from "./handlers/sendmessage";
import { typingHandlerFactory } from "./handlers/typing";
import { ENV, holeGraceMsFor } from "./handlers/shared/env";
import { tokenAudience as audienceOf } from "./handlers/shared/tokens";
import { apiGatewayAccountLogging } from "./infra/account";
import { chatFunction, ChatFunction } from "./infra/function";
import { chatSite } from "./infra/site";
import { loadStackSettings } from "./stacks";

const settings = loadStackSettings();
const project = pulumi.getProject();
const region = aws.getRegionOutput().region;
const tableProtection = { pointInTimeRecovery: { enabled: settings.tableProtection }, deletionProtectionEnabled: settings.tableProtection };

// Connections: one item per open socket. The room index lets sendmessage Query one room's
// members instead of scanning the table; sorted by name, it is also the member list (its keys carry
// the names). The TTL removes records whose $disconnect never came; the stream (old and new images)
// feeds presence, so every way a connection ends, TTL included, becomes a leave event.
// The index projects `expiresAt` too, so room queries skip records TTL has not deleted yet.
// (Adding `name` as the index's sort key, or `expiresAt` to its projection, to a stack deployed
// before it rebuilds the index: DynamoDB cannot change an index's keys or projection in place, so
// the provider deletes and re-creates it (updateDiffGSI in
// https://github.com/hashicorp/terraform-provider-aws/blob/main/internal/service/dynamodb/table.go);
// the table and its items stay, and room queries fail until the index is back. Deploy when quiet.)
const ROOM_INDEX = "byRoom";
const connections = new aws.dynamodb.Table("connections", {
  billingMode: "PAY_PER_REQUEST",
  hashKey: "connectionId",
  attributes: [
    { name: "connectionId", type: "S" },
    { name: "room", type: "S" },
    { name: "name", type: "S" },
  ],
  globalSecondaryIndexes: [
    {
      name: ROOM_INDEX,
      keySchemas: [
        { attributeName: "room", keyType: "HASH" },
        { attributeName: "name", keyType: "RANGE" },
      ],
      projectionType: "INCLUDE",
      nonKeyAttributes: ["expiresAt"],
    },
  ],
  ttl: { attributeName: "expiresAt", enabled: true },
  streamEnabled: true,
  streamViewType: "NEW_AND_OLD_IMAGES",
  ...tableProtection,
});

// Messages: every accepted message, persisted before fan-out so that nothing is lost; keyed by
// room and a consecutive per-room cursor (see handlers/shared/messages.ts), kept for the
// stack's retention by TTL.
const messages = new aws.dynamodb.Table("messages", {
  billingMode: "PAY_PER_REQUEST",
  hashKey: "room",
  rangeKey: "cursor",
  attributes: [
    { name: "room", type: "S" },
    { name: "cursor", type: "S" },
  ],
  ttl: { attributeName: "expiresAt", enabled: true },
  ...tableProtection,
});

// The WebSocket API. Route selection reads the JSON body's "action", as in the AWS tutorial.
const api = new aws.apigatewayv2.Api("chat", {
  protocolType: "WEBSOCKET",
  routeSelectionExpression: "$request.body.action",
  description: `WebSocket chat (${pulumi.getStack()})`,
});

// The @connections management endpoint, derived from the API's own endpoint:
// wss://{apiId}.execute-api.{region}.amazonaws.com → https://…/{stage}. (A local endpoint,
// ws://host:port, maps to http://host:port/{stage} the same way.)
const stageName = settings.stageName;
const managementEndpoint = pulumi.interpolate`${api.apiEndpoint}`.apply(
  (endpoint) => `${endpoint.replace(/^wss:/, "https:").replace(/^ws:/, "http:")}/${stageName}`,
);
const connectionsArn = (method: "GET" | "POST" | "DELETE") =>
  pulumi.interpolate`${api.executionArn}/${stageName}/${method}/@connections/*`;
const connectionsEnv = { [ENV.tableName]: connections.name, [ENV.roomIndexName]: ROOM_INDEX };
const roomIndexArn = pulumi.interpolate`${connections.arn}/index/${ROOM_INDEX}`;
const presenceEnv = { [ENV.presenceLimit]: String(settings.presenceLimit) };
// The per-connection budget every route a client can call spends (handlers/shared/connections.ts).
const budgetEnv = {
  [ENV.rateLimitMessages]: String(settings.rateLimitMessages),
  [ENV.rateLimitWindowSeconds]: String(settings.rateLimitWindowSeconds),
};
const audience = audienceOf(project, pulumi.getStack());
const historyEnv = {
  [ENV.messagesTable]: messages.name,
  [ENV.historyRetentionDays]: String(settings.historyRetentionDays),
  [ENV.holeGraceMs]: String(holeGraceMsFor(settings.lambdaTimeoutSeconds)),
};

// The route handlers, each with its own role holding only what its code calls.
// With auth on, $connect also takes one of the verified name's places (a conditional PutItem of a
// place item in the same table) and frees it (DeleteItem) if the record cannot be written.
const connect = chatFunction(`${project}-connect`, {
  factory: connectHandlerFactory,
  settings,
  reservedConcurrency: settings.reservedConcurrencyConnect,
  environment: { ...connectionsEnv, ...(settings.authEnabled ? { [ENV.maxConnectionsPerName]: String(settings.maxConnectionsPerName) } : {}) },
  statements: [
    { Sid: "RecordConnection", Effect: "Allow", Action: ["dynamodb:PutItem", ...(settings.authEnabled ? ["dynamodb:DeleteItem"] : [])], Resource: [connections.arn] },
  ],
});

// GetItem reads the record (its place) before DeleteItem removes it and, for one that held a place
// among its name's, that place (handlers/shared/connections.ts, remove).
const disconnect = chatFunction(`${project}-disconnect`, {
  factory: disconnectHandlerFactory,
  settings,
  reservedConcurrency: settings.reservedConcurrencyDisconnect,
  environment: connectionsEnv,
  statements: [{ Sid: "ForgetConnection", Effect: "Allow", Action: ["dynamodb:GetItem", "dynamodb:DeleteItem"], Resource: [connections.arn] }],
});

// Fan-out of a large room's message, one chunk of recipients per run; sendmessage invokes it
// asynchronously, so the chunks run on parallel instances (handlers/shared/fanout.ts).
const fanout = chatFunction(`${project}-fanout`, {
  factory: fanoutHandlerFactory,
  settings,
  reservedConcurrency: settings.reservedConcurrencyFanout,
  environment: { ...connectionsEnv, [ENV.managementEndpoint]: managementEndpoint, [ENV.fanoutConcurrency]: String(settings.fanoutConcurrency) },
  statements: [
    { Sid: "PostToMembers", Effect: "Allow", Action: ["execute-api:ManageConnections"], Resource: [connectionsArn("POST")] },
    // Removes recipients that answered 410 (GetItem reads the record first, DeleteItem removes it),
    // and the name's place one of them held.
    { Sid: "RemoveStale", Effect: "Allow", Action: ["dynamodb:GetItem", "dynamodb:DeleteItem"], Resource: [connections.arn] },
  ],
});

// Lambda's event queue retries a failed fanout run twice (its default, stated here): a chunk cut
// short by a crash or timeout is delivered again, possibly twice to some members, who drop the
// repeat by message id. After two minutes a chunk is stale for live delivery; clients fill gaps
// from history. Source: https://docs.aws.amazon.com/lambda/latest/dg/invocation-async-error-handling.html
new aws.lambda.FunctionEventInvokeConfig("fanout", {
  functionName: fanout.fn.name,
  maximumRetryAttempts: 2,
  maximumEventAgeInSeconds: 120,
});

const sendMessage = settings.benchSeedFanout
  ? // Benchmark only (refused on prod): the seed's algorithm, with the permissions it uses.
    chatFunction(`${project}-sendmessage`, {
      factory: seedSendMessageHandlerFactory,
      settings,
      environment: { ...connectionsEnv, [ENV.managementEndpoint]: managementEndpoint },
      statements: [
        { Sid: "ScanConnections", Effect: "Allow", Action: ["dynamodb:Scan"], Resource: [connections.arn] },
        { Sid: "PostToMembers", Effect: "Allow", Action: ["execute-api:ManageConnections"], Resource: [connectionsArn("POST")] },
      ],
    })
  : chatFunction(`${project}-sendmessage`, {
      factory: sendMessageHandlerFactory,
      settings,
      reservedConcurrency: settings.reservedConcurrencySendMessage,
      environment: {
        ...connectionsEnv,
        ...historyEnv,
        [ENV.managementEndpoint]: managementEndpoint,
        [ENV.maxMessageBytes]: String(settings.maxMessageBytes),
        [ENV.fanoutConcurrency]: String(settings.fanoutConcurrency),
        [ENV.fanoutChunkSize]: String(settings.fanoutChunkSize),
        [ENV.fanoutFunction]: fanout.fn.name,
        [ENV.editWindowMs]: String(settings.editWindowMinutes * 60_000),
        ...budgetEnv,
      },
      statements: [
        // UpdateItem spends the sender's budget and returns its record (GetItem when refused, or when
        // the spend's answer was lost); GetItem reads a recipient that answered 410, DeleteItem removes
        // it (and the name's place it held).
        { Sid: "AdmitSenderRemoveStale", Effect: "Allow", Action: ["dynamodb:UpdateItem", "dynamodb:GetItem", "dynamodb:DeleteItem"], Resource: [connections.arn] },
        { Sid: "QueryRoom", Effect: "Allow", Action: ["dynamodb:Query"], Resource: [roomIndexArn] },
        // Appending: UpdateItem takes the room's next number (ADD on the head); PutItem stores the
        // message, or a tombstone for a number it could not fill; with a client id the message and its
        // claim are one TransactWriteItems, which IAM authorizes action by action (PutItem). GetItem
        // reads a repeated id's claim, and the message an edit or delete names; the transaction of an
        // edit or delete also updates that message (and a delete its edits): UpdateItem.
        // Source: DynamoDB developer guide, "Using IAM with DynamoDB transactions".
        { Sid: "AppendHistory", Effect: "Allow", Action: ["dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem"], Resource: [messages.arn] },
        { Sid: "PostToMembers", Effect: "Allow", Action: ["execute-api:ManageConnections"], Resource: [connectionsArn("POST")] },
        // Hands chunks of a large room to fanout (asynchronous Invoke).
        { Sid: "HandOffChunks", Effect: "Allow", Action: ["lambda:InvokeFunction"], Resource: [fanout.fn.arn] },
      ],
    });

const history = chatFunction(`${project}-history`, {
  factory: historyHandlerFactory,
  settings,
  reservedConcurrency: settings.reservedConcurrencyHistory,
  environment: { ...connectionsEnv, ...historyEnv, ...budgetEnv, [ENV.managementEndpoint]: managementEndpoint },
  statements: [
    // UpdateItem spends the caller's budget (up front, then by what the page returned) and returns
    // its record (GetItem when refused).
    { Sid: "AdmitCaller", Effect: "Allow", Action: ["dynamodb:UpdateItem", "dynamodb:GetItem"], Resource: [connections.arn] },
    // Query reads the events, GetItem the room's head (its epoch); PutItem writes a tombstone into a
    // number whose sender died before storing it (handlers/shared/sequence.ts).
    { Sid: "ReadHistory", Effect: "Allow", Action: ["dynamodb:Query", "dynamodb:GetItem"], Resource: [messages.arn] },
    { Sid: "SettleHoles", Effect: "Allow", Action: ["dynamodb:PutItem"], Resource: [messages.arn] },
    { Sid: "ReplayToCaller", Effect: "Allow", Action: ["execute-api:ManageConnections"], Resource: [connectionsArn("POST")] },
  ],
});

const defaultRoute = chatFunction(`${project}-default`, {
  factory: defaultHandlerFactory,
  settings,
  reservedConcurrency: settings.reservedConcurrencyDefault,
  environment: { ...connectionsEnv, ...budgetEnv, [ENV.managementEndpoint]: managementEndpoint },
  statements: [
    // Every frame spends the caller's budget: UpdateItem (GetItem when refused).
    { Sid: "AdmitCaller", Effect: "Allow", Action: ["dynamodb:UpdateItem", "dynamodb:GetItem"], Resource: [connections.arn] },
    // GET is GetConnection (the caller's info); POST answers the caller.
    { Sid: "AnswerCaller", Effect: "Allow", Action: ["execute-api:ManageConnections"], Resource: [connectionsArn("GET"), connectionsArn("POST")] },
  ],
});

// Where Lambda sends the record of a presence batch it gave up on (its shard, first and last sequence
// numbers, the condition): without a destination the batch is dropped with no trace. The records
// themselves stay in the stream for 24 h (the queue keeps the pointers 14 days, SQS's maximum), so
// they can be read back and replayed (docs/alarms.md). SSE with SQS-owned keys needs no KMS
// permission. Source: https://docs.aws.amazon.com/lambda/latest/dg/services-dynamodb-errors.html
const presenceFailures = new aws.sqs.Queue("presence-failures", {
  name: `${project}-${pulumi.getStack()}-presence-failures`,
  messageRetentionSeconds: 1_209_600,
  sqsManagedSseEnabled: true,
});

// Presence: the connections stream's inserts and removals become join and leave events in the room's
// sequence, stored and fanned out like messages (handlers/presence.ts).
const presence = chatFunction(`${project}-presence`, {
  factory: presenceHandlerFactory,
  settings,
  reservedConcurrency: settings.reservedConcurrencyPresence,
  environment: {
    ...connectionsEnv,
    ...historyEnv,
    ...presenceEnv,
    [ENV.managementEndpoint]: managementEndpoint,
    [ENV.fanoutConcurrency]: String(settings.fanoutConcurrency),
    [ENV.fanoutChunkSize]: String(settings.fanoutChunkSize),
    [ENV.fanoutFunction]: fanout.fn.name,
  },
  statements: [
    // Lambda's poller reads the stream with the function's role: exactly these four actions. Three
    // take a stream ARN and are scoped to this table's streams; ListStreams takes none (its resource
    // is "*" in the Service Authorization Reference, so a stream ARN would grant nothing).
    // Sources: https://docs.aws.amazon.com/lambda/latest/dg/with-ddb.html ("Execution role permissions"),
    // https://docs.aws.amazon.com/service-authorization/latest/reference/list_amazondynamodb.html
    { Sid: "ReadConnectionStream", Effect: "Allow", Action: ["dynamodb:DescribeStream", "dynamodb:GetRecords", "dynamodb:GetShardIterator"], Resource: [pulumi.interpolate`${connections.arn}/stream/*`] },
    { Sid: "ListStreams", Effect: "Allow", Action: ["dynamodb:ListStreams"], Resource: ["*"] },
    // Query counts the room (the presence limit) and lists it for the fan-out.
    { Sid: "QueryRoom", Effect: "Allow", Action: ["dynamodb:Query"], Resource: [roomIndexArn] },
    // GetItem reads a recipient that answered 410, DeleteItem removes it (and the name's place it held).
    { Sid: "RemoveStale", Effect: "Allow", Action: ["dynamodb:GetItem", "dynamodb:DeleteItem"], Resource: [connections.arn] },
    // Appending a join or leave, as sendmessage appends a message (UpdateItem, PutItem, GetItem).
    { Sid: "AppendHistory", Effect: "Allow", Action: ["dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem"], Resource: [messages.arn] },
    { Sid: "PostToMembers", Effect: "Allow", Action: ["execute-api:ManageConnections"], Resource: [connectionsArn("POST")] },
    { Sid: "HandOffChunks", Effect: "Allow", Action: ["lambda:InvokeFunction"], Resource: [fanout.fn.arn] },
    // Lambda's poller sends a given-up batch's record to the on-failure queue with the function's role
    // (CreateEventSourceMapping refuses a role that may not). Source: with-ddb.html, "Execution role permissions".
    { Sid: "RecordFailedBatches", Effect: "Allow", Action: ["sqs:SendMessage"], Resource: [presenceFailures.arn] },
  ],
});

// Lambda reads the stream and invokes presence with batches of joins and leaves only: the filter
// keeps rate-limit updates (MODIFY) and name places (no room) away, so they cost no invocation.
// A failed batch is retried, halved on each failure, for up to an hour; events are stored once
// (their client ids), so a retry repeats nothing. A batch given up goes, as a record, to the
// presence-failures queue. Sources:
// https://docs.aws.amazon.com/lambda/latest/dg/with-ddb.html, .../invocation-eventfiltering.html
new aws.lambda.EventSourceMapping("presence", {
  eventSourceArn: connections.streamArn,
  functionName: presence.fn.arn,
  startingPosition: "LATEST",
  batchSize: 100,
  maximumBatchingWindowInSeconds: 0,
  bisectBatchOnFunctionError: true,
  maximumRetryAttempts: 10,
  maximumRecordAgeInSeconds: 3600,
  destinationConfig: { onFailure: { destinationArn: presenceFailures.arn } },
  filterCriteria: {
    filters: [
      { pattern: JSON.stringify({ eventName: ["INSERT"], dynamodb: { NewImage: { room: { S: [{ exists: true }] } } } }) },
      { pattern: JSON.stringify({ eventName: ["REMOVE"], dynamodb: { OldImage: { room: { S: [{ exists: true }] } } } }) },
    ],
  },
});

// Typing: an ephemeral signal to the room, not stored; the caller's record holds when it last typed.
const typing = chatFunction(`${project}-typing`, {
  factory: typingHandlerFactory,
  settings,
  reservedConcurrency: settings.reservedConcurrencyTyping,
  environment: { ...connectionsEnv, ...presenceEnv, [ENV.managementEndpoint]: managementEndpoint, [ENV.typingIntervalMs]: String(settings.typingIntervalSeconds * 1000) },
  statements: [
    // UpdateItem records the signal (conditional: one per interval); GetItem reads a recipient that
    // answered 410, DeleteItem removes it (and the name's place it held).
    { Sid: "LimitCallerRemoveStale", Effect: "Allow", Action: ["dynamodb:UpdateItem", "dynamodb:GetItem", "dynamodb:DeleteItem"], Resource: [connections.arn] },
    { Sid: "QueryRoom", Effect: "Allow", Action: ["dynamodb:Query"], Resource: [roomIndexArn] },
    { Sid: "PostToMembers", Effect: "Allow", Action: ["execute-api:ManageConnections"], Resource: [connectionsArn("POST")] },
  ],
});

// Members: the caller's room's names, read from the room index.
const members = chatFunction(`${project}-members`, {
  factory: membersHandlerFactory,
  settings,
  reservedConcurrency: settings.reservedConcurrencyMembers,
  environment: { ...connectionsEnv, ...budgetEnv, ...presenceEnv, [ENV.managementEndpoint]: managementEndpoint },
  statements: [
    // UpdateItem spends the caller's budget and returns its record (GetItem when refused).
    { Sid: "AdmitCaller", Effect: "Allow", Action: ["dynamodb:UpdateItem", "dynamodb:GetItem"], Resource: [connections.arn] },
    { Sid: "QueryRoom", Effect: "Allow", Action: ["dynamodb:Query"], Resource: [roomIndexArn] },
    { Sid: "AnswerCaller", Effect: "Allow", Action: ["execute-api:ManageConnections"], Resource: [connectionsArn("POST")] },
  ],
});

// Read markers: one item per (room, name) in the messages table, moved forward only.
const read = chatFunction(`${project}-read`, {
  factory: readHandlerFactory,
  settings,
  reservedConcurrency: settings.reservedConcurrencyRead,
  environment: { ...connectionsEnv, ...historyEnv, ...budgetEnv, [ENV.managementEndpoint]: managementEndpoint },
  statements: [
    { Sid: "AdmitCaller", Effect: "Allow", Action: ["dynamodb:UpdateItem", "dynamodb:GetItem"], Resource: [connections.arn] },
    // GetItem reads the marker and the room's head; UpdateItem moves the marker; Query counts what is unread.
    { Sid: "ReadMarkers", Effect: "Allow", Action: ["dynamodb:GetItem", "dynamodb:UpdateItem", "dynamodb:Query"], Resource: [messages.arn] },
    { Sid: "AnswerCaller", Effect: "Allow", Action: ["execute-api:ManageConnections"], Resource: [connectionsArn("POST")] },
  ],
});

// With auth on, a REQUEST authorizer checks the signed ?token= before $connect runs: this stack as
// its audience, at most tokenMaxLifetimeHours long, signed by the current key or, during a rotation,
// the previous one. The keys are secret Outputs: they reach the function as environment variables,
// never in its code (README, "Security notes": why not SSM or Secrets Manager).
let connectAuthorizer: aws.apigatewayv2.Authorizer | undefined;
let authorizerFn: ChatFunction | undefined;
if (settings.authEnabled && settings.tokenKey) {
  authorizerFn = chatFunction(`${project}-authorizer`, {
    factory: authorizerHandlerFactory,
    settings,
    reservedConcurrency: settings.reservedConcurrencyAuthorizer,
    environment: {
      [ENV.tokenKey]: settings.tokenKey,
      ...(settings.tokenPreviousKey ? { [ENV.tokenPreviousKey]: settings.tokenPreviousKey } : {}),
      [ENV.tokenAudience]: audience,
      [ENV.tokenMaxLifetimeSeconds]: String(settings.tokenMaxLifetimeHours * 3600),
    },
    statements: [],
  });
  connectAuthorizer = new aws.apigatewayv2.Authorizer("connect-token", {
    apiId: api.id,
    name: "connect-token",
    authorizerType: "REQUEST",
    authorizerUri: authorizerFn.fn.invokeArn,
    identitySources: ["route.request.querystring.token"],
  });
  new aws.lambda.Permission("authorizer", {
    action: "lambda:InvokeFunction",
    function: authorizerFn.fn.name,
    principal: "apigateway.amazonaws.com",
    sourceArn: pulumi.interpolate`${api.executionArn}/authorizers/${connectAuthorizer.id}`,
  });
}

// Routes: each an AWS_PROXY integration to its function, which API Gateway may invoke only
// for this API, this stage and this route.
const routeTargets: Record<string, ChatFunction> = {
  $connect: connect,
  $disconnect: disconnect,
  $default: defaultRoute,
  sendmessage: sendMessage,
  // Edits and deletes are events of the room's sequence, stored and fanned out as messages are.
  ...(settings.benchSeedFanout ? {} : { edit: sendMessage, delete: sendMessage }),
  history,
  typing,
  members,
  read,
};
const routes = Object.entries(routeTargets).map(([routeKey, { fn }]) => {
  const id = routeKey.replace(/^\$/, "");
  const integration = new aws.apigatewayv2.Integration(id, {
    apiId: api.id,
    integrationType: "AWS_PROXY",
    integrationMethod: "POST",
    integrationUri: fn.invokeArn,
  });
  new aws.lambda.Permission(id, {
    action: "lambda:InvokeFunction",
    function: fn.name,
    principal: "apigateway.amazonaws.com",
    sourceArn: pulumi.interpolate`${api.executionArn}/${stageName}/${routeKey}`,
  });
  const authorized = routeKey === "$connect" && connectAuthorizer;
  const route = new aws.apigatewayv2.Route(id, {
    apiId: api.id,
    routeKey,
    target: pulumi.interpolate`integrations/${integration.id}`,
    ...(authorized ? { authorizationType: "CUSTOM", authorizerId: connectAuthorizer!.id } : {}),
  });
  return { route, integration };
});

// A WebSocket API serves only what is deployed; the trigger hash redeploys whenever a route,
// its authorizer or an integration changes.
const deployment = new aws.apigatewayv2.Deployment(
  "chat",
  {
    apiId: api.id,
    description: "Routes and integrations of the chat",
    triggers: {
      redeployment: pulumi
        .jsonStringify(
          routes.map(({ route, integration }) => [route.routeKey, route.target, route.authorizationType, route.authorizerId, integration.integrationUri]),
        )
        .apply((text) => createHash("sha256").update(text).digest("hex")),
    },
  },
  { dependsOn: [...routes.map(({ route }) => route), ...(connectAuthorizer ? [connectAuthorizer] : [])] },
);

// Stage logging (access and execution) needs API Gateway's account-wide CloudWatch role; API Gateway
// refuses a stage with logging without it ("CloudWatch Logs role ARN must be set in account
// settings to enable logging"). One setting per account and Region: set once outside the stacks
// (docs/account-settings.md), or by a stack that opts in, which keeps it on destroy (infra/account.ts).
const accountSettings = settings.manageApiGatewayAccount ? [apiGatewayAccountLogging()] : [];
const stageLogging = settings.stageLogging || settings.manageApiGatewayAccount;

// Access logs: one JSON line per connect, message and disconnect (written with stage logging on).
const accessLogs = new aws.cloudwatch.LogGroup("chat-access", {
  name: `/aws/apigateway/${project}-${pulumi.getStack()}/access`,
  retentionInDays: settings.logRetentionDays,
});

// Execution logs go to a group API Gateway names and would create itself, with no retention, and
// keep after a destroy; created here first, it has the stack's retention and goes with it. Name:
// https://docs.aws.amazon.com/apigateway/latest/developerguide/set-up-logging.html
const executionLogs =
  stageLogging && settings.apiLoggingLevel !== "OFF"
    ? [new aws.cloudwatch.LogGroup("chat-execution", { name: pulumi.interpolate`API-Gateway-Execution-Logs_${api.id}/${stageName}`, retentionInDays: settings.logRetentionDays })]
    : [];

// The stage clients connect to, throttled by the stack's settings.
const chatStage = new aws.apigatewayv2.Stage(
  "chat",
  {
    apiId: api.id,
    name: stageName,
    deploymentId: deployment.id,
    defaultRouteSettings: {
      throttlingBurstLimit: settings.throttlingBurstLimit,
      throttlingRateLimit: settings.throttlingRateLimit,
      loggingLevel: stageLogging ? settings.apiLoggingLevel : "OFF",
      dataTraceEnabled: false, // would log message bodies
      detailedMetricsEnabled: true,
    },
    accessLogSettings: stageLogging ? {
      destinationArn: accessLogs.arn,
      format: JSON.stringify({
        requestId: "$context.requestId",
        connectionId: "$context.connectionId",
        eventType: "$context.eventType",
        routeKey: "$context.routeKey",
        status: "$context.status",
        integrationStatus: "$context.integrationStatus",
        integrationError: "$context.integrationErrorMessage",
        authorizeError: "$context.authorize.error",
        error: "$context.error.message",
        sourceIp: "$context.identity.sourceIp",
        requestTimeEpoch: "$context.requestTimeEpoch",
      }),
    } : undefined,
  },
  { dependsOn: [...accountSettings, ...executionLogs] },
);

// Alarms (prod), each on a signal that something failed, never on what the stack refuses by design
// (a bad room, a denied token, a spent budget, the stage's throttle): docs/alarms.md says what each
// means and what to do. Each looks at one minute and notifies the optional SNS topic.
const alarmTopic = settings.alarmsEnabled && settings.alarmTopic ? new aws.sns.Topic("alarms", { displayName: `${project} ${pulumi.getStack()} alarms` }) : undefined;
if (settings.alarmsEnabled) {
  const actions = alarmTopic ? [alarmTopic.arn] : [];
  /** Fires when the minute's statistic reaches the threshold (by default: any occurrence). */
  const alarm = (name: string, namespace: pulumi.Input<string>, metricName: pulumi.Input<string>, dimensions: Record<string, pulumi.Input<string>>, description: string, { statistic = "Sum", threshold = 1 } = {}) =>
    new aws.cloudwatch.MetricAlarm(name, {
      namespace,
      metricName,
      dimensions,
      statistic,
      period: 60,
      evaluationPeriods: 1,
      threshold,
      comparisonOperator: "GreaterThanOrEqualToThreshold",
      treatMissingData: "notBreaching",
      alarmDescription: description,
      alarmActions: actions,
      okActions: actions,
    });
  // Counts the log lines a pattern matches, as a metric of this stack's own namespace.
  const stackNamespace = `${project}/${pulumi.getStack()}`;
  const countLines = (name: string, logGroupName: pulumi.Input<string>, pattern: string, metricName: string) =>
    new aws.cloudwatch.LogMetricFilter(name, { logGroupName, pattern, metricTransformation: { name: metricName, namespace: stackNamespace, value: "1" } });
  const { edit: _edit, delete: _delete, ...distinct } = routeTargets; // the sendmessage function's alarms, once
  const synchronous: Record<string, ChatFunction> = { ...distinct, ...(authorizerFn ? { authorizer: authorizerFn } : {}) };
  for (const [routeKey, { fn, logGroup }] of Object.entries({ ...synchronous, fanout, presence })) {
    const id = routeKey.replace(/^\$/, "");
    alarm(`${id}-errors`, "AWS/Lambda", "Errors", { FunctionName: fn.name }, `${routeKey} function threw, timed out or crashed`);
    // A store failure the handler answers as `unavailable` (and a $connect it answers 500 or 503) is
    // not a Lambda error: the handlers log it at level error, which Lambda's text format tags ERROR
    // (refusals are logged at warn). Source: https://docs.aws.amazon.com/lambda/latest/dg/nodejs-logging.html
    countLines(`${id}-logged-errors`, logGroup.name, "ERROR", `LoggedErrors-${id}`);
    alarm(`${id}-logged-errors`, stackNamespace, `LoggedErrors-${id}`, {}, `${routeKey} function logged a failure (store unavailable, deadline, lost fan-out)`);
  }
  // A throttled synchronous invocation fails the client's request. Throttles of fanout (retried by
  // Lambda's event queue) and presence (retried by the stream poller) lose nothing by themselves:
  // what they can lose is watched by fanout-dropped and by presence's iterator age and failure queue.
  for (const [routeKey, { fn }] of Object.entries(synchronous)) {
    alarm(`${routeKey.replace(/^\$/, "")}-throttles`, "AWS/Lambda", "Throttles", { FunctionName: fn.name }, `${routeKey} function was throttled: a request failed`);
  }
  // A fan-out chunk dropped after its retries: members missed it live (history still has it).
  alarm("fanout-dropped", "AWS/Lambda", "AsyncEventsDropped", { FunctionName: fanout.fn.name }, "fan-out chunks dropped after Lambda's retries");
  // Presence a minute behind the stream: a batch failing and retried, or the function throttled.
  // Normal is well under a second (no batching window); records are given up at 3600 s.
  alarm("presence-iterator-age", "AWS/Lambda", "IteratorAge", { FunctionName: presence.fn.name }, "presence is more than 60 s behind the connections stream", { statistic: "Maximum", threshold: 60_000 });
  alarm("presence-failures", "AWS/SQS", "ApproximateNumberOfMessagesVisible", { QueueName: presenceFailures.name }, "a presence batch was given up: joins or leaves were not announced", { statistic: "Maximum" });
  // IntegrationError counts the integrations' 4xx too (every refused $connect), so the API's
  // failures are counted from the access log: a 5xx answer, or a 5xx from the integration (AWS's
  // pages differ on whether integrationStatus is Lambda's status or the function's; either counts).
  // Sources: https://docs.aws.amazon.com/apigateway/latest/developerguide/apigateway-websocket-api-logging.html,
  // https://docs.aws.amazon.com/AmazonCloudWatch/latest/logs/FilterAndPatternSyntax.html
  // (Only with stage logging on, which writes the access log: prod's setting.)
  if (stageLogging) {
    countLines("api-server-errors", accessLogs.name, '{ $.status = "5*" || $.integrationStatus = "5*" }', "ApiServerErrors");
    alarm("api-server-errors", stackNamespace, "ApiServerErrors", {}, "API Gateway answered 5xx, or an integration did");
  }
  alarm("api-execution-errors", "AWS/ApiGateway", "ExecutionError", { ApiId: api.id, Stage: chatStage.name }, "API Gateway failed to call an integration");
  for (const [name, table] of Object.entries({ connections, messages })) {
    alarm(`${name}-read-throttles`, "AWS/DynamoDB", "ReadThrottleEvents", { TableName: table.name }, `${name} table throttled reads`);
    alarm(`${name}-write-throttles`, "AWS/DynamoDB", "WriteThrottleEvents", { TableName: table.name }, `${name} table throttled writes`);
  }
}

const wsUrl = pulumi.interpolate`${api.apiEndpoint}/${chatStage.name}`;

// The chat page (optional): a private bucket behind CloudFront, pointed at this stack's URL.
const webUrl = settings.webEnabled ? chatSite("web", { url: wsUrl, authEnabled: settings.authEnabled, maxMessageBytes: settings.maxMessageBytes }) : undefined;

// Stack outputs, under the names `pulumi stack output`, the local stack and the e2e tests share.
export const url = wsUrl;
export const connectionsUrl = pulumi.interpolate`${managementEndpoint}/@connections`;
export const tableName = connections.name;
export const messagesTableName = messages.name;
export const stage = chatStage.name;
export const authEnabled = settings.authEnabled;
/** The audience a token for this stack carries (`npm run token -- --stack <stack>` sets it). */
export const tokenAudience = settings.authEnabled ? audience : undefined;
export const alarmTopicArn = alarmTopic?.arn;
export { webUrl };
export { region };
