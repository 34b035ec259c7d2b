// Types of room-stream.js for the TypeScript clients (tests and benchmarks).
export interface StreamFrame {
  type: string;
  cursor?: string | null;
  epoch?: string | null;
  id?: string;
  more?: boolean;
  retryAfterMs?: number;
  code?: string;
  [key: string]: unknown;
}

export interface HistoryRequest {
  action: "history";
  since?: string;
  limit: number;
  epoch?: string;
}

export interface RoomStreamOptions {
  gapWaitMs?: number;
  historyTimeoutMs?: number;
  maxRetryMs?: number;
  historyLimit?: number;
}

export class RoomStream {
  constructor(hooks: { event(frame: StreamFrame): void; reset(epoch: string): void; history(request: HistoryRequest): void }, options?: RoomStreamOptions);
  epoch: string | null;
  cursor: number | null;
  ahead: Set<number>;
  start(): void;
  frame(frame: StreamFrame): boolean;
  request(): HistoryRequest;
  stop(): void;
}

export interface SendItem {
  id: string;
  message: string;
  extra: Record<string, unknown>;
  resends: number;
  /** The size of its frame (frameBytes) while it is on the wire of the open connection; cleared when that closes. */
  bytes?: number;
}

export interface SenderOptions {
  resendBaseMs?: number;
  resendMaxMs?: number;
  ackTimeoutMs?: number;
  /** A frame over this many bytes (frameBytes) is failed as message_too_large, never sent. */
  maxMessageBytes?: number;
}

export class OrderedSender {
  constructor(
    hooks: {
      /** false: the socket is not open and the frame was not sent. */
      send(frame: Record<string, unknown>): boolean | void;
      acked?(item: SendItem, ack: StreamFrame): void;
      failed?(item: SendItem, error: StreamFrame): void;
      retrying?(item: SendItem, delayMs: number): void;
    },
    options?: SenderOptions,
  );
  options: Required<SenderOptions>;
  inFlight: SendItem | null;
  send(id: string, message: string, extra?: Record<string, unknown>): SendItem;
  resume(): void;
  frame(frame: StreamFrame): boolean;
  /** The connection closed: after a 1009, the message in flight, if sent on that connection, is failed and returned, never resent. */
  closed(code: number): SendItem | null;
  unacknowledged(): SendItem[];
  stop(): void;
}

export function pad(n: number): string;
export const FINAL: string[];
export const DEFAULT_MAX_MESSAGE_BYTES: number;
/** The size rule: the UTF-8 bytes of the frame's JSON, envelope and escapes included. */
export function frameBytes(frame: unknown): number;
/** The frame OrderedSender sends for a message (extra: an edit's or delete's fields). */
export function sendFrame(id: string, message: string, extra?: Record<string, unknown>): Record<string, unknown>;
