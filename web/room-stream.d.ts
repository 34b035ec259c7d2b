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
}

export class OrderedSender {
  constructor(
    hooks: {
      send(frame: Record<string, unknown>): void;
      acked?(item: SendItem, ack: StreamFrame): void;
      failed?(item: SendItem, error: StreamFrame): void;
      retrying?(item: SendItem, delayMs: number): void;
    },
    options?: { resendBaseMs?: number; resendMaxMs?: number; ackTimeoutMs?: number },
  );
  send(id: string, message: string, extra?: Record<string, unknown>): SendItem;
  resume(): void;
  frame(frame: StreamFrame): boolean;
  unacknowledged(): SendItem[];
  stop(): void;
}

export function pad(n: number): string;
export const FINAL: string[];
