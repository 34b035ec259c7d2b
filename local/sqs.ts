/**
 * SQS queues in the local stack, in process: the program's aws.sqs.Queue resources, holding what
 * the stack itself sends them (an event source mapping's records of the batches it gave up,
 * local/streams.ts). There is no SQS endpoint: the functions call no SQS API, and users read a
 * queue through the stack (`LocalStack.queues`) and its log lines.
 *
 * As SQS keeps them: each message has a UUID MessageId, the MD5 of its body (hex) and the time it
 * was sent (SentTimestamp, epoch ms); a message older than the queue's messageRetentionSeconds
 * (default 345,600 s, 4 days) is deleted. Sources:
 * https://docs.aws.amazon.com/AWSSimpleQueueService/latest/APIReference/API_SendMessage.html,
 * https://docs.aws.amazon.com/AWSSimpleQueueService/latest/APIReference/API_SetQueueAttributes.html
 * Not emulated: receiving and deleting (visibility timeouts), FIFO queues, delays, message size
 * limits (a failure record is under 1 KB).
 */
import { createHash, randomUUID } from "crypto";
import type { RecordedResource } from "./program";

export const QUEUE = "aws:sqs/queue:Queue";

/** SQS's default retention (MessageRetentionPeriod), in seconds. */
const DEFAULT_RETENTION_SECONDS = 345_600;

export interface QueueMessage {
  messageId: string;
  md5OfBody: string;
  body: string;
  /** Epoch ms. */
  sentTimestamp: number;
}

export interface QueueSpec {
  name: string;
  arn: string;
  url: string;
  retentionSeconds: number;
}

export interface LocalQueues {
  specs: QueueSpec[];
  /** The queue with this ARN, or undefined when the program declares none. */
  find(arn: string): QueueSpec | undefined;
  /** SendMessage: stores the body in the queue with this ARN. Throws for a queue the program does not declare. */
  send(arn: string, body: string): QueueMessage;
  /** The messages a queue (by name or ARN) holds, oldest first, those past its retention gone. */
  messages(nameOrArn: string): QueueMessage[];
  /** Calls `listener` after each message sent; returns the unsubscribe. */
  onMessage(listener: (queue: QueueSpec, message: QueueMessage) => void): () => void;
}

/** The program's queues, as the mocked provider described them (local/program.ts). */
export function queueSpecs(resources: RecordedResource[]): QueueSpec[] {
  return resources
    .filter((r) => r.type === QUEUE)
    .map((r) => ({ name: String(r.state.name), arn: String(r.state.arn), url: String(r.state.url), retentionSeconds: Number(r.inputs.messageRetentionSeconds ?? DEFAULT_RETENTION_SECONDS) }));
}

export function createLocalQueues(specs: QueueSpec[], now: () => number = Date.now): LocalQueues {
  const held = new Map<string, QueueMessage[]>(specs.map((q) => [q.arn, []]));
  const listeners = new Set<(queue: QueueSpec, message: QueueMessage) => void>();
  const find = (arn: string) => specs.find((q) => q.arn === arn);
  /** The queue's messages with those past its retention removed. */
  const live = (queue: QueueSpec) => {
    const oldest = now() - queue.retentionSeconds * 1000;
    const kept = held.get(queue.arn)!.filter((m) => m.sentTimestamp >= oldest);
    held.set(queue.arn, kept);
    return kept;
  };
  return {
    specs,
    find,
    send(arn, body) {
      const queue = find(arn);
      if (!queue) throw new Error(`AWS.SimpleQueueService.NonExistentQueue: The specified queue does not exist (${arn})`);
      const message = { messageId: randomUUID(), md5OfBody: createHash("md5").update(body).digest("hex"), body, sentTimestamp: now() };
      live(queue).push(message);
      for (const listener of [...listeners]) listener(queue, message);
      return message;
    },
    messages(nameOrArn) {
      const queue = specs.find((q) => q.name === nameOrArn || q.arn === nameOrArn);
      if (!queue) throw new Error(`no queue ${nameOrArn} (queues: ${specs.map((q) => q.name).join(", ") || "none"})`);
      return [...live(queue)];
    },
    onMessage(listener) {
      listeners.add(listener);
      return () => listeners.delete(listener);
    },
  };
}
