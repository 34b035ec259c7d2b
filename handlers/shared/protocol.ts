/**
 * The chat protocol: what clients may send, how it is validated, and every frame the server sends.
 * Pure functions only; the README's protocol reference is written from this file.
 */
import { randomBytes } from "crypto";
import { chatError, ClientErrorCode } from "./errors";

export const DEFAULT_ROOM = "general";
/** Rooms: 1–64 ASCII letters, digits, `_` or `-`. Keeps ids safe in logs, URLs and index keys. */
export const ROOM_PATTERN = /^[A-Za-z0-9_-]{1,64}$/;
/** Names: 1–32 Unicode letters or digits, `_`, `.` or `-`. No spaces, markup or control characters. */
export const NAME_PATTERN = /^[\p{L}\p{N}_.-]{1,32}$/u;
/**
 * API Gateway's WebSocket quotas (https://docs.aws.amazon.com/apigateway/latest/developerguide/apigateway-execution-service-websocket-limits-table.html):
 * a frame holds at most 32 KB, and a message (a frame, or fragments reassembled; a PostToConnection
 * payload) at most 128 KB; a client frame or message over them closes the connection with 1009.
 * Assumed, not confirmed by AWS: KB means 1,024 bytes (32,768 and 131,072), as for the local
 * @connections 413 boundary (../shared/docs/apigw-websocket.md). The stack's own limit
 * (RANGES.maxMessageBytes, handlers/shared/env.ts) stays at or under 32,000, so it holds under a
 * 1,000-byte reading too.
 */
export const API_FRAME_BYTES = 32_768;
export const API_MESSAGE_BYTES = 131_072;

export type Query = Record<string, string | undefined>;
export type MultiQuery = Record<string, string[] | undefined>;

export interface Identity {
  room: string;
  name: string;
}

/**
 * Reads `room` and `name` from the `$connect` query string. A parameter given twice is refused
 * rather than guessed at (API Gateway keeps the last one in `queryStringParameters`).
 */
export function parseIdentity(query: Query | undefined, multi: MultiQuery | undefined, guestSuffix = randomGuestSuffix()): Identity {
  const room = singleParam("room", query, multi);
  const name = singleParam("name", query, multi);
  if (room !== undefined && !ROOM_PATTERN.test(room)) {
    throw chatError("invalid_room", "room must be 1-64 characters of A-Z, a-z, 0-9, _ or -", 400);
  }
  if (name !== undefined && !NAME_PATTERN.test(name)) {
    throw chatError("invalid_name", "name must be 1-32 letters, digits, _, . or -", 400);
  }
  return { room: room ?? DEFAULT_ROOM, name: name ?? `guest-${guestSuffix}` };
}

function singleParam(key: "room" | "name", query: Query | undefined, multi: MultiQuery | undefined): string | undefined {
  const values = multi?.[key];
  if (values && values.length > 1) {
    throw chatError(key === "room" ? "invalid_room" : "invalid_name", `${key} must be given at most once`, 400);
  }
  return values?.[0] ?? query?.[key];
}

export function randomGuestSuffix(): string {
  return randomBytes(2).toString("hex");
}

/** The parsed body of a MESSAGE event: a JSON object, or the reason it is not one. */
export type ParsedBody = { ok: true; value: Record<string, unknown> } | { ok: false; reason: "not_json" | "not_object" };

export function parseBody(body: string | undefined): ParsedBody {
  let value: unknown;
  try {
    value = JSON.parse(body ?? "");
  } catch {
    // Includes RangeError from absurdly deep nesting: still just "not JSON we accept".
    return { ok: false, reason: "not_json" };
  }
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    return { ok: false, reason: "not_object" };
  }
  return { ok: true, value: value as Record<string, unknown> };
}

export function utf8Bytes(text: string): number {
  return Buffer.byteLength(text, "utf8");
}

/**
 * The size rule for `sendmessage` and `edit` (README, "Protocol"): the frame as it arrived, in
 * UTF-8 bytes, envelope and JSON escapes included, is at most `maxBytes`. Counting the frame, not
 * the text, is what keeps every accepted message within API Gateway's frame quota whatever the
 * client escapes; web/room-stream.js (frameBytes) measures the same before sending.
 */
export function validateFrameSize(body: string, maxBytes: number): void {
  const bytes = utf8Bytes(body);
  if (bytes > maxBytes) {
    throw chatError("message_too_large", `the frame is ${bytes} bytes (the message in its JSON envelope); the limit is ${maxBytes}`, 413);
  }
}

/**
 * Validates a `sendmessage` or `edit` text (its size is the frame's, validateFrameSize). Returns
 * it unchanged; throws a ChatError with the code the sender will see. Lone surrogates are refused
 * because they cannot be encoded as UTF-8 and would reach recipients as U+FFFD, silently altering
 * the message.
 */
export function validateMessage(message: unknown): string {
  if (typeof message !== "string") {
    throw chatError("invalid_message", "message must be a string", 400);
  }
  if (message.trim() === "") {
    throw chatError("invalid_message", "message must not be empty", 400);
  }
  if (!message.isWellFormed()) {
    throw chatError("invalid_message", "message must be valid Unicode text", 400);
  }
  return message;
}

/** The kinds of event a room's sequence holds besides tombstones (README, "Protocol"). */
export type EventType = "message" | "join" | "leave" | "edit" | "delete";

/** The frame every other member of a room receives. */
export interface MessageFrame {
  type: "message";
  room: string;
  from: { name: string };
  message: string;
  /** Replayed only: the message was deleted by its author (`message` is then ""). */
  deleted?: true;
  /** Replayed only: edits of it follow in the sequence. */
  edited?: true;
  /** Server receive time, epoch milliseconds. */
  ts: number;
  /** Server-assigned id, unique per accepted message. */
  id: string;
  /** Position in the room's history: consecutive per room; ask `history` since the last one you have. */
  cursor: string;
  /** The room stream's identity: when it changes, numbering started again and old cursors mean nothing. */
  epoch: string;
}

/** Every sequenced event shares these fields with a message (ts, id, cursor, epoch, from). */
type Sequenced = Omit<MessageFrame, "type" | "message" | "deleted" | "edited">;

/** A connection of `from.name` opened (join) or closed (leave: disconnected, found stale or expired). */
export interface PresenceFrame extends Sequenced {
  type: "join" | "leave";
}

/** New text for the message at `target`, by its author. `deleted`: the message was deleted since (replayed with message ""). */
export interface EditFrame extends Sequenced {
  type: "edit";
  target: string;
  message: string;
  deleted?: true;
}

/** The message at `target` was deleted by its author. */
export interface DeleteFrame extends Sequenced {
  type: "delete";
  target: string;
}

export type EventFrame = MessageFrame | PresenceFrame | EditFrame | DeleteFrame;

/** Ephemeral: another member is typing. Never stored, never acknowledged. */
export interface TypingFrame {
  type: "typing";
  room: string;
  from: { name: string };
}

/** The room's members, sorted by name; `next` names where the next page starts. Above the presence limit: `members` null and a `count` of connections. */
export interface MembersFrame {
  type: "members";
  room: string;
  members: { name: string; connections: number }[] | null;
  count?: number;
  next: string | null;
}

/** The caller's read marker in its room, its name as the server knows it, and the messages from others after the marker. */
export interface ReadFrame {
  type: "read";
  room: string;
  name: string;
  cursor: string | null;
  epoch: string | null;
  unread: number;
  /** The count stopped early: at least `unread`. */
  more: boolean;
}

/**
 * A number of the room's sequence that holds no message: its sender died before storing it
 * (handlers/shared/sequence.ts). Sent by `history` only; a client counts it as seen and moves on.
 */
export interface TombstoneFrame {
  type: "tombstone";
  room: string;
  cursor: string;
  epoch: string;
  /** Absent: the number holds nothing. `undeliverable`: it holds a message too large to post (never stored since the size check). */
  reason?: "undeliverable";
}

export interface ErrorFrame {
  type: "error";
  code: ClientErrorCode;
  message: string;
  /** The client's `id` of the sendmessage refused, when it sent a valid one: which send to retry. */
  id?: string;
  /** With `unavailable`: wait at least this long before sending again (milliseconds). */
  retryAfterMs?: number;
}

export function errorFrame(code: ClientErrorCode, message: string, id?: string, retryAfterMs?: number): string {
  const frame: ErrorFrame = { type: "error", code, message, ...(id === undefined ? {} : { id }), ...(retryAfterMs === undefined ? {} : { retryAfterMs }) };
  return JSON.stringify(frame);
}

/** The actions a client can send, with their shapes, as the usage frame lists them. */
export const ACTIONS = {
  sendmessage: { action: "sendmessage", message: "<text>", id: "<optional client id: acknowledged, stored once>" },
  history: { action: "history", since: "<optional cursor>", limit: "<optional 1-100>" },
  echo: { action: "echo", data: "<text>" },
  edit: { action: "edit", cursor: "<cursor of your message>", message: "<new text>", id: "<optional client id>" },
  delete: { action: "delete", cursor: "<cursor of your message>", id: "<optional client id>" },
  typing: { action: "typing" },
  members: { action: "members", after: "<optional: the next of the previous page>" },
  read: { action: "read", cursor: "<optional: move your read marker here>", epoch: "<with cursor: its epoch>" },
} as const;

export type UsageReason = "not_json" | "not_object" | "missing_action" | "unknown_action";

export interface UsageFrame {
  type: "usage";
  reason: UsageReason;
  message: string;
  actions: typeof ACTIONS;
  connection: Record<string, unknown>;
}

export function usageFrame(reason: UsageReason, connection: Record<string, unknown>): string {
  const frame: UsageFrame = {
    type: "usage",
    reason,
    message: "Use the sendmessage route to send a message.",
    actions: ACTIONS,
    connection,
  };
  return JSON.stringify(frame);
}

export function echoText(data: string): string {
  return `Echo: ${data}`;
}

/** Client ids for idempotent sends: 1-64 characters of A-Z, a-z, 0-9, `_ . : -`. */
export const CLIENT_ID_PATTERN = /^[A-Za-z0-9_.:-]{1,64}$/;

export function validateClientId(id: unknown): string | undefined {
  if (id === undefined) return undefined;
  if (typeof id !== "string" || !CLIENT_ID_PATTERN.test(id)) {
    throw chatError("invalid_id", "id must be 1-64 characters of A-Z, a-z, 0-9, _, ., : or -", 400);
  }
  return id;
}

// Two constants, not `{ default, max }`: Pulumi's closure serializer mistakes any object with a
// `default` property for an `import * as` result and fails (seen on @pulumi/pulumi 3.270).
export const HISTORY_DEFAULT_LIMIT = 50;
export const HISTORY_MAX_LIMIT = 100;

export interface HistoryRequest {
  since?: string;
  limit: number;
  /** The stream `since` belongs to: when the room's stream is another, `since` is void and the latest page is sent. */
  epoch?: string;
}

/** An epoch as a client may send it back (the server makes 8 base64url characters). */
const EPOCH_PATTERN = /^[A-Za-z0-9_-]{1,32}$/;

/** Validates `{"action":"history","since":…,"limit":…}`. `since` is a cursor from a message or history-end frame. */
export function validateHistoryRequest(body: Record<string, unknown>, cursorPattern: RegExp): HistoryRequest {
  const { since, limit } = body;
  if (since !== undefined && since !== null && (typeof since !== "string" || !cursorPattern.test(since))) {
    throw chatError("invalid_history", "since must be a cursor from a message or history-end frame", 400);
  }
  if (limit !== undefined && (typeof limit !== "number" || !Number.isInteger(limit) || limit < 1)) {
    throw chatError("invalid_history", `limit must be a whole number from 1 to ${HISTORY_MAX_LIMIT}`, 400);
  }
  const { epoch } = body;
  if (epoch !== undefined && epoch !== null && (typeof epoch !== "string" || !EPOCH_PATTERN.test(epoch))) {
    throw chatError("invalid_history", "epoch must be the epoch of a message or history-end frame", 400);
  }
  return {
    ...(typeof since === "string" ? { since } : {}),
    limit: Math.min(typeof limit === "number" ? limit : HISTORY_DEFAULT_LIMIT, HISTORY_MAX_LIMIT),
    ...(typeof epoch === "string" ? { epoch } : {}),
  };
}

export function ackFrame(id: string, cursor: string, epoch: string): string {
  return JSON.stringify({ type: "ack", id, cursor, epoch });
}

export interface HistoryEndFrame {
  type: "history-end";
  /** Every cursor up to this one is settled: replayed, a tombstone, or expired. Ask `since` it next. */
  cursor: string | null;
  /** Events after `cursor` exist, or may yet be stored: ask again. */
  more: boolean;
  /** The room stream's identity; null for a room with no messages yet. */
  epoch: string | null;
  /** Set when the page stopped at a number still being written: ask again after this long (ms). */
  retryAfterMs?: number;
}

export function historyEndFrame(cursor: string | null, more: boolean, epoch: string | null, retryAfterMs?: number): string {
  const frame: HistoryEndFrame = { type: "history-end", cursor, more, epoch, ...(retryAfterMs === undefined ? {} : { retryAfterMs }) };
  return JSON.stringify(frame);
}

/** Validates the `cursor` an edit or delete names: a message's cursor. */
export function validateTarget(cursor: unknown, cursorPattern: RegExp): string {
  if (typeof cursor !== "string" || !cursorPattern.test(cursor)) {
    throw chatError("invalid_target", "cursor must be the cursor of one of your messages", 400);
  }
  return cursor;
}

/** Validates `{"action":"members","after":…}`: `after` is the `next` of a members frame (a name). */
export function validateMembersRequest(body: Record<string, unknown>): { after?: string } {
  const { after } = body;
  if (after === undefined || after === null) return {};
  if (typeof after !== "string" || !NAME_PATTERN.test(after)) throw chatError("invalid_members", "after must be the next of a members frame", 400);
  return { after };
}

/** Validates `{"action":"read"}` (ask) or `{"action":"read","cursor":…,"epoch":…}` (move the marker). */
export function validateReadRequest(body: Record<string, unknown>, cursorPattern: RegExp): { cursor?: string; epoch?: string } {
  const { cursor, epoch } = body;
  if (cursor === undefined || cursor === null) {
    if (epoch !== undefined && epoch !== null) throw chatError("invalid_read", "epoch goes with a cursor", 400);
    return {};
  }
  if (typeof cursor !== "string" || !cursorPattern.test(cursor)) throw chatError("invalid_read", "cursor must be a cursor of this room", 400);
  if (typeof epoch !== "string" || !EPOCH_PATTERN.test(epoch)) throw chatError("invalid_read", "epoch must be the epoch of the cursor", 400);
  return { cursor, epoch };
}

export function typingFrame(room: string, name: string): string {
  const frame: TypingFrame = { type: "typing", room, from: { name } };
  return JSON.stringify(frame);
}
