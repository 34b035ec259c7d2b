/**
 * The $connect REQUEST authorizer: verifies the `token` query parameter (shared/tokens.ts: HMAC-signed
 * name, audience, key id, issue time, expiry, optional rooms) under the current or the previous key,
 * the stack's audience and maximum lifetime, and the requested room against it. API Gateway answers 401 itself when
 * the token is missing; a bad, expired or wrong-room token gets an explicit Deny, which is 403.
 * On Allow, `context.name` is the verified name that $connect stores and every frame carries.
 */
import type { APIGatewayAuthorizerResult, APIGatewayRequestAuthorizerEvent, Context } from "aws-lambda";
import { ENV, RANGES, requireEnv, requireIntEnv } from "./shared/env";
import { log } from "./shared/log";
import { DEFAULT_ROOM } from "./shared/protocol";
import { checkKey, verifyToken } from "./shared/tokens";

export type AuthorizerHandler = (event: APIGatewayRequestAuthorizerEvent, context: Context) => Promise<APIGatewayAuthorizerResult>;

function policy(principalId: string, effect: "Allow" | "Deny", methodArn: string, context?: Record<string, string>): APIGatewayAuthorizerResult {
  return {
    principalId,
    policyDocument: { Version: "2012-10-17", Statement: [{ Action: "execute-api:Invoke", Effect: effect, Resource: methodArn }] },
    ...(context ? { context } : {}),
  };
}

export function authorizerHandlerFactory(): AuthorizerHandler {
  // During a rotation the previous key still verifies the tokens it signed (README: rotating the key).
  const previous = process.env[ENV.tokenPreviousKey];
  const keys = [checkKey(requireEnv(ENV.tokenKey)), ...(previous ? [checkKey(previous)] : [])];
  const audience = requireEnv(ENV.tokenAudience);
  const maxLifetimeSeconds = requireIntEnv(ENV.tokenMaxLifetimeSeconds, RANGES.tokenMaxLifetimeSeconds.min, RANGES.tokenMaxLifetimeSeconds.max);

  return async (event, context) => {
    const query = event.queryStringParameters ?? {};
    const token = query.token;
    if (!token) throw new Error("Unauthorized"); // API Gateway answers 401 before calling us; kept for direct calls
    const connectionId = (event.requestContext as { connectionId?: string } | undefined)?.connectionId;
    const verification = verifyToken(token, { keys, audience, maxLifetimeSeconds });
    const room = query.room ?? DEFAULT_ROOM;
    if (!verification.ok) {
      log("warn", "token refused", { connectionId, requestId: context.awsRequestId, problem: verification.problem });
      return policy("anonymous", "Deny", event.methodArn);
    }
    const { name, rooms } = verification.claims;
    if (rooms && !rooms.includes(room)) {
      log("warn", "token refused", { connectionId, requestId: context.awsRequestId, problem: "wrong_room", name, room });
      return policy(name, "Deny", event.methodArn);
    }
    log("info", "token accepted", { connectionId, name, room, keyId: verification.keyId });
    return policy(name, "Allow", event.methodArn, { name, rooms: (rooms ?? []).join(",") });
  };
}
