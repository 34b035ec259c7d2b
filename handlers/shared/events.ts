/**
 * The event and result types of the four WebSocket routes, from @types/aws-lambda, with the
 * fields that package leaves out but API Gateway sends (see ../shared/docs/apigw-websocket.md).
 */
import type {
  APIGatewayEventWebsocketRequestContextV2,
  APIGatewayProxyResultV2,
  APIGatewayProxyStructuredResultV2,
  APIGatewayProxyWebsocketEventV2,
  Context,
} from "aws-lambda";

export type WebSocketEvent = APIGatewayProxyWebsocketEventV2;

export interface WebSocketIdentity {
  sourceIp: string;
  userAgent?: string;
}

/** What the $connect authorizer passed on: `principalId` plus its `context` (strings only). */
export interface AuthorizerContext {
  principalId?: string;
  name?: string;
  rooms?: string;
}

/** `$connect` also carries the client's headers, the identity and, with auth on, the authorizer's context. */
export interface ConnectEvent extends APIGatewayProxyWebsocketEventV2 {
  headers?: Record<string, string | undefined>;
  multiValueHeaders?: Record<string, string[] | undefined>;
  requestContext: APIGatewayEventWebsocketRequestContextV2 & { identity?: WebSocketIdentity; authorizer?: AuthorizerContext };
}

/** `$disconnect` carries the close status and reason. */
export interface DisconnectEvent extends APIGatewayProxyWebsocketEventV2 {
  requestContext: APIGatewayEventWebsocketRequestContextV2 & {
    disconnectStatusCode?: number;
    disconnectReason?: string;
  };
}

export type WebSocketResult = APIGatewayProxyStructuredResultV2;

/** The shape of every handler: `(event, context)`, two parameters, as the nodejs24.x runtime requires. */
export type WebSocketHandler<E extends WebSocketEvent = WebSocketEvent> = (event: E, context: Context) => Promise<WebSocketResult>;

export type { APIGatewayProxyResultV2, Context };

export function ok(): WebSocketResult {
  return { statusCode: 200 };
}
