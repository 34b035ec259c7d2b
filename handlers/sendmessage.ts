/**
 * `sendmessage`: validates the text, then delivers it to every other member of the sender's room.
 * Members come from a paginated Query on the room index (never a Scan); posts go out with bounded
 * concurrency over a keep-alive pool; 429/5xx are retried; a 410 removes that member's record.
 * Problems the sender can act on come back as `{"type":"error",…}` frames, never as API
 * Gateway's "Internal server error".
 */
import { randomUUID } from "crypto";
import { broadcast, deliver, FanoutStats } from "./shared/broadcaster";
import { connectionsStoreFromEnv } from "./shared/connections";
import { ENV, RANGES, requireEnv, requireIntEnv } from "./shared/env";
import { ClientErrorCode, describeError, isChatError } from "./shared/errors";
import type { WebSocketEvent, WebSocketHandler, WebSocketResult } from "./shared/events";
import { log } from "./shared/log";
import { createManagement, createManagementClient } from "./shared/management";
import { MAX_FRAME_BYTES, MessageFrame, errorFrame, parseBody, utf8Bytes, validateMessage } from "./shared/protocol";

export function sendMessageHandlerFactory(): WebSocketHandler<WebSocketEvent> {
  const maxMessageBytes = requireIntEnv(ENV.maxMessageBytes, RANGES.maxMessageBytes.min, RANGES.maxMessageBytes.max);
  const concurrency = requireIntEnv(ENV.fanoutConcurrency, RANGES.fanoutConcurrency.min, RANGES.fanoutConcurrency.max);
  const store = connectionsStoreFromEnv();
  const management = createManagement(createManagementClient(requireEnv(ENV.managementEndpoint), concurrency));

  return async (event, context) => {
    const started = Date.now();
    const { connectionId: senderId, messageId, requestTimeEpoch } = event.requestContext;
    const requestId = context.awsRequestId;

    async function refuse(code: ClientErrorCode, message: string): Promise<WebSocketResult> {
      const delivery = await deliver(management, senderId, errorFrame(code, message));
      log("warn", "message refused", { connectionId: senderId, requestId, code, reason: message, reply: delivery.outcome });
      return { statusCode: 200 };
    }

    const parsed = parseBody(event.body);
    if (!parsed.ok) return refuse("invalid_json", "the body must be a JSON object");

    let text: string;
    try {
      text = validateMessage(parsed.value.message, maxMessageBytes);
    } catch (err) {
      if (!isChatError(err)) throw err;
      return refuse(err.code as ClientErrorCode, err.message);
    }

    let sender;
    try {
      sender = await store.get(senderId);
    } catch (err) {
      log("error", "sender lookup failed", { connectionId: senderId, requestId, error: describeError(err) });
      return refuse("unavailable", "the message could not be sent; try again");
    }
    if (!sender) return refuse("unknown_connection", "this connection is not registered; reconnect");

    const frame: MessageFrame = {
      type: "message",
      room: sender.room,
      from: { name: sender.name },
      message: text,
      ts: requestTimeEpoch ?? started,
      id: messageId ?? randomUUID(),
    };
    const data = JSON.stringify(frame);
    if (utf8Bytes(data) > MAX_FRAME_BYTES) {
      return refuse("message_too_large", `the message does not fit in one ${MAX_FRAME_BYTES}-byte frame once wrapped`);
    }

    let stats: FanoutStats;
    try {
      stats = await broadcast({
        pages: store.roomMembers(sender.room),
        exclude: senderId,
        data,
        concurrency,
        management,
        async onGone(connectionId) {
          try {
            await store.remove(connectionId);
          } catch (err) {
            log("warn", "stale record not removed", { connectionId, error: describeError(err) });
          }
        },
        onFailed(connectionId, delivery) {
          log("warn", "delivery failed", { connectionId, attempts: delivery.attempts, failure: delivery.failure, error: delivery.error });
        },
      });
    } catch (err) {
      log("error", "fan-out aborted", { connectionId: senderId, requestId, room: sender.room, id: frame.id, error: describeError(err) });
      return refuse("unavailable", "the message may not have reached everyone; try again");
    }

    log("info", "message", {
      connectionId: senderId,
      requestId,
      room: sender.room,
      id: frame.id,
      ...stats,
      ms: Date.now() - started,
    });
    return { statusCode: 200 };
  };
}
