/**
 * A serverless WebSocket chat: API Gateway WebSocket API → four Lambda route handlers → DynamoDB.
 * Read top to bottom: settings, the connections table, the API, the functions, the routes that
 * join them, the deployment and stage, and the stack outputs.
 */
import * as aws from "@pulumi/aws";
import * as pulumi from "@pulumi/pulumi";
import { createHash } from "crypto";
import { connectHandlerFactory } from "./handlers/connect";
import { defaultHandlerFactory } from "./handlers/default";
import { disconnectHandlerFactory } from "./handlers/disconnect";
import { sendMessageHandlerFactory } from "./handlers/sendmessage";
import { ENV } from "./handlers/shared/env";
import { routeFunction, RouteFunction, Statement } from "./infra/function";
import { loadStackSettings } from "./stacks";

const settings = loadStackSettings();
const project = pulumi.getProject();
const region = aws.getRegionOutput().region;

// Connections: one item per open socket. The room index lets sendmessage Query one room's
// members instead of scanning the table; the TTL removes records whose $disconnect never came.
const ROOM_INDEX = "byRoom";
const connections = new aws.dynamodb.Table("connections", {
  billingMode: "PAY_PER_REQUEST",
  hashKey: "connectionId",
  attributes: [
    { name: "connectionId", type: "S" },
    { name: "room", type: "S" },
  ],
  globalSecondaryIndexes: [
    { name: ROOM_INDEX, keySchemas: [{ attributeName: "room", keyType: "HASH" }], projectionType: "KEYS_ONLY" },
  ],
  ttl: { attributeName: "expiresAt", enabled: true },
  pointInTimeRecovery: { enabled: settings.tableProtection },
  deletionProtectionEnabled: settings.tableProtection,
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
const tableEnv = { [ENV.tableName]: connections.name, [ENV.roomIndexName]: ROOM_INDEX };

// The four route handlers, each with its own role holding only what its code calls.
const connect = routeFunction(`${project}-connect`, {
  factory: connectHandlerFactory,
  settings,
  environment: tableEnv,
  statements: [{ Sid: "RecordConnection", Effect: "Allow", Action: ["dynamodb:PutItem"], Resource: [connections.arn] }],
});

const disconnect = routeFunction(`${project}-disconnect`, {
  factory: disconnectHandlerFactory,
  settings,
  environment: tableEnv,
  statements: [{ Sid: "ForgetConnection", Effect: "Allow", Action: ["dynamodb:DeleteItem"], Resource: [connections.arn] }],
});

const sendMessage = routeFunction(`${project}-sendmessage`, {
  factory: sendMessageHandlerFactory,
  settings,
  environment: {
    ...tableEnv,
    [ENV.managementEndpoint]: managementEndpoint,
    [ENV.maxMessageBytes]: String(settings.maxMessageBytes),
    [ENV.fanoutConcurrency]: String(settings.fanoutConcurrency),
  },
  statements: [
    // GetItem reads the sender; DeleteItem removes recipients that answered 410.
    { Sid: "ReadSenderRemoveStale", Effect: "Allow", Action: ["dynamodb:GetItem", "dynamodb:DeleteItem"], Resource: [connections.arn] },
    { Sid: "QueryRoom", Effect: "Allow", Action: ["dynamodb:Query"], Resource: [pulumi.interpolate`${connections.arn}/index/${ROOM_INDEX}`] },
    { Sid: "PostToMembers", Effect: "Allow", Action: ["execute-api:ManageConnections"], Resource: [connectionsArn("POST")] },
  ],
});

const defaultRoute = routeFunction(`${project}-default`, {
  factory: defaultHandlerFactory,
  settings,
  environment: { [ENV.managementEndpoint]: managementEndpoint },
  statements: [
    // GET is GetConnection (the caller's info); POST answers the caller.
    { Sid: "AnswerCaller", Effect: "Allow", Action: ["execute-api:ManageConnections"], Resource: [connectionsArn("GET"), connectionsArn("POST")] },
  ] satisfies Statement[],
});

// Routes: each an AWS_PROXY integration to its function, which API Gateway may invoke only
// for this API, this stage and this route.
const routeTargets: Record<string, RouteFunction> = {
  $connect: connect,
  $disconnect: disconnect,
  $default: defaultRoute,
  sendmessage: sendMessage,
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
  const route = new aws.apigatewayv2.Route(id, {
    apiId: api.id,
    routeKey,
    target: pulumi.interpolate`integrations/${integration.id}`,
  });
  return { route, integration };
});

// A WebSocket API serves only what is deployed; the trigger hash redeploys whenever a route or
// an integration changes.
const deployment = new aws.apigatewayv2.Deployment(
  "chat",
  {
    apiId: api.id,
    description: "Routes and integrations of the chat",
    triggers: {
      redeployment: pulumi
        .jsonStringify(routes.map(({ route, integration }) => [route.routeKey, route.target, integration.integrationUri]))
        .apply((text) => createHash("sha256").update(text).digest("hex")),
    },
  },
  { dependsOn: routes.map(({ route }) => route) },
);

// Stage logging (access and execution) needs an account-level CloudWatch role for API Gateway.
// It is one setting per account and Region, so a stack may leave it to another (setting off).
const accountSettings: pulumi.Resource[] = [];
if (settings.manageApiGatewayAccount) {
  const apiGatewayLogsRole = new aws.iam.Role("apigateway-cloudwatch", {
    assumeRolePolicy: JSON.stringify({
      Version: "2012-10-17",
      Statement: [{ Effect: "Allow", Principal: { Service: "apigateway.amazonaws.com" }, Action: "sts:AssumeRole" }],
    }),
    // AWS's managed policy made for exactly this role (logs actions only). The role is shared by
    // every API in the account and Region, so it cannot be narrowed to this API's log groups.
    managedPolicyArns: ["arn:aws:iam::aws:policy/service-role/AmazonAPIGatewayPushToCloudWatchLogs"],
  });
  accountSettings.push(new aws.apigateway.Account("apigateway-account", { cloudwatchRoleArn: apiGatewayLogsRole.arn }));
}

// Access logs: one JSON line per connect, message and disconnect.
const accessLogs = new aws.cloudwatch.LogGroup("chat-access", {
  name: `/aws/apigateway/${project}-${pulumi.getStack()}/access`,
  retentionInDays: settings.logRetentionDays,
});

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
      loggingLevel: settings.apiLoggingLevel,
      dataTraceEnabled: false, // would log message bodies
      detailedMetricsEnabled: true,
    },
    accessLogSettings: {
      destinationArn: accessLogs.arn,
      format: JSON.stringify({
        requestId: "$context.requestId",
        connectionId: "$context.connectionId",
        eventType: "$context.eventType",
        routeKey: "$context.routeKey",
        status: "$context.status",
        integrationStatus: "$context.integrationStatus",
        integrationError: "$context.integrationErrorMessage",
        error: "$context.error.message",
        sourceIp: "$context.identity.sourceIp",
        requestTimeEpoch: "$context.requestTimeEpoch",
      }),
    },
  },
  { dependsOn: accountSettings },
);

// Stack outputs, under the names `pulumi stack output`, the local stack and the e2e tests share.
export const url = pulumi.interpolate`${api.apiEndpoint}/${chatStage.name}`;
export const connectionsUrl = pulumi.interpolate`${managementEndpoint}/@connections`;
export const tableName = connections.name;
export const stage = chatStage.name;
export { region };
