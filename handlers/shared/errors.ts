/**
 * The small error vocabulary every handler speaks.
 *
 * Errors are plain `Error` objects with a stable `code`, made by factory functions rather than
 * `class … extends Error`: Pulumi's closure serializer turns a subclass of a built-in into a
 * function that calls `Error.call(this, message)`, which drops the message and breaks
 * `instanceof` (seen on @pulumi/pulumi 3.270). Plain objects serialize exactly.
 */

/** Codes sent to clients in `{"type":"error","code":…}` frames. Stable: clients may switch on them. */
export type ClientErrorCode =
  | "invalid_json"
  | "invalid_message"
  | "message_too_large"
  | "invalid_data"
  | "unknown_connection"
  | "invalid_id"
  | "invalid_history"
  | "invalid_target"
  | "not_found"
  | "not_author"
  | "edit_window_passed"
  | "message_deleted"
  | "too_many_edits"
  | "invalid_members"
  | "invalid_read"
  | "rate_limited"
  | "unavailable";

/** A request the client got wrong, or a service we depend on that failed: both answered, never thrown to API Gateway. */
export interface ChatError extends Error {
  readonly name: "ChatError";
  readonly code: ClientErrorCode | "invalid_room" | "invalid_name" | "room_not_allowed" | "too_many_connections" | "store_unavailable" | "deadline" | "config" | "target_changed";
  /** The HTTP status used where an error refuses a handshake. */
  readonly status: number;
}

export function chatError(code: ChatError["code"], message: string, status = 400, cause?: unknown): ChatError {
  const err = new Error(message, cause === undefined ? undefined : { cause }) as Error & {
    name: string;
    code: string;
    status: number;
  };
  err.name = "ChatError";
  err.code = code;
  err.status = status;
  return err as ChatError;
}

export function isChatError(err: unknown): err is ChatError {
  return err instanceof Error && err.name === "ChatError" && typeof (err as ChatError).code === "string";
}

/** A short, log-safe description of any thrown value. */
export function describeError(err: unknown): { name: string; message: string; code?: string; status?: number } {
  if (err instanceof Error) {
    const meta = (err as { $metadata?: { httpStatusCode?: number } }).$metadata;
    return {
      name: err.name,
      message: err.message,
      code: (err as { code?: string }).code,
      status: (err as { status?: number }).status ?? meta?.httpStatusCode,
    };
  }
  return { name: typeof err, message: String(err) };
}
