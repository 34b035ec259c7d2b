/**
 * BENCHMARK ONLY: the seed's SendMessageHandler (the AWS tutorial "websocket-api-chat-app"),
 * ported to SDK v3 unchanged in substance, so `npm run bench` can measure it beside ours on the
 * same local stack. It is deployed only with the `benchSeedFanout` setting, which the prod stack
 * refuses. What it does, faithfully, including what we fixed elsewhere:
 * - one Scan of the whole connections table, no pagination (a Scan page stops at 1 MB, so in a
 *   large table some connections never get the message), and no room filter;
 * - a client made with the SDK's defaults on every invocation;
 * - every post at once (`Promise.all` over the whole table), failures only logged, so stale
 *   records stay;
 * - the raw `message` text as the frame, nothing persisted.
 */
import { ApiGatewayManagementApiClient, PostToConnectionCommand } from "@aws-sdk/client-apigatewaymanagementapi";
import { DynamoDBClient } from "@aws-sdk/client-dynamodb";
import { DynamoDBDocumentClient, ScanCommand } from "@aws-sdk/lib-dynamodb";
import { ENV, requireEnv } from "./shared/env";
import type { WebSocketEvent, WebSocketHandler } from "./shared/events";

export function seedSendMessageHandlerFactory(): WebSocketHandler<WebSocketEvent> {
  const tableName = requireEnv(ENV.tableName);
  const endpoint = requireEnv(ENV.managementEndpoint);
  const ddb = DynamoDBDocumentClient.from(new DynamoDBClient({}));

  return async (event) => {
    let connectionData;
    try {
      connectionData = await ddb.send(new ScanCommand({ TableName: tableName, ProjectionExpression: "connectionId" }));
    } catch (e) {
      return { statusCode: 500, body: (e as Error).stack };
    }
    const apigwManagementApi = new ApiGatewayManagementApiClient({ endpoint });
    const postData = JSON.parse(event.body ?? "{}").message;
    const postCalls = (connectionData.Items ?? []).map(async ({ connectionId }) => {
      if (connectionId === event.requestContext.connectionId) return;
      try {
        await apigwManagementApi.send(new PostToConnectionCommand({ ConnectionId: connectionId, Data: postData }));
      } catch (e) {
        console.log(e);
      }
    });
    try {
      await Promise.all(postCalls);
    } catch (e) {
      return { statusCode: 500, body: (e as Error).stack };
    }
    return { statusCode: 200, body: "Data sent." };
  };
}
