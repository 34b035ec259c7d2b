/**
 * `read`: read markers. `{"action":"read"}` answers the caller's marker in its room, the name the
 * server knows the caller by, and how many messages from others follow the marker;
 * `{"action":"read","cursor":…,"epoch":…}` first moves the marker forward to `cursor` (never back).
 * Markers are kept per (room, name), so every connection of one name shares them.
 */
import { callerRoute } from "./shared/caller";
import type { WebSocketEvent, WebSocketHandler } from "./shared/events";
import { CURSOR_PATTERN, messageStoreFromEnv } from "./shared/messages";
import { ReadFrame, validateReadRequest } from "./shared/protocol";

export function readHandlerFactory(): WebSocketHandler<WebSocketEvent> {
  return callerRoute("read", ["invalid_read"], (doc) => {
    const messages = messageStoreFromEnv(doc);
    return async (caller, body, time) => {
      const request = validateReadRequest(body, CURSOR_PATTERN);
      const { room, name } = caller;
      const marker = request.cursor
        ? await time.step("moving the marker", messages.moveMarker(room, name, request.cursor, String(request.epoch)))
        : await time.step("reading the marker", messages.readMarker(room, name));
      const frame: ReadFrame = { type: "read", room, name, ...marker };
      return JSON.stringify(frame);
    };
  });
}
