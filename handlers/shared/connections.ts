/**
 * The connections store: one DynamoDB item per open WebSocket connection, queried by room
 * through a KEYS_ONLY global secondary index. SDK errors are translated here, where the SDK
 * is called, into ChatErrors with code `store_unavailable`.
 */
import { DeleteCommand, GetCommand, PutCommand, QueryCommand, UpdateCommand } from "@aws-sdk/lib-dynamodb";
import { createLeanDocumentClient, DocumentClient, isConditionFailure, storeUnavailable, tableCalls } from "./dynamodb";
import { ENV, requireEnv } from "./env";

/** API Gateway closes every WebSocket connection after 2 hours. */
export const MAX_CONNECTION_SECONDS = 2 * 60 * 60;
/** Slack after the 2 h limit before a record left behind by a missed `$disconnect` may expire. */
export const EXPIRY_MARGIN_SECONDS = 15 * 60;
/**
 * How long after `connectedAt` a 410 may still mean "not open yet" rather than "gone": @connections
 * answers 410 for a connection whose `$connect` is still running (../shared/docs/apigw-websocket.md),
 * and `$connect` has already written the record by then. `connectedAt` is taken when the request
 * arrives, before the authorizer and `$connect` run: each at most 29 s (API Gateway's integration
 * timeout) plus a cold start's init (at most 10 s, Lambda's init limit). So a record older than
 * 90 s that answers 410 is stale; a younger one is kept, and removed by a later 410 or its TTL.
 */
export const CONNECT_GRACE_MS = 90_000;

export interface ConnectionRecord {
  connectionId: string;
  room: string;
  name: string;
  /** Epoch milliseconds, from the event's `requestContext.connectedAt`. */
  connectedAt: number;
  /** Epoch seconds: the table's TTL attribute. DynamoDB TTL only reads seconds. */
  expiresAt: number;
}

export interface RateLimit {
  messages: number;
  windowSeconds: number;
}

export interface StoreConfig {
  tableName: string;
  roomIndexName: string;
}

export interface ConnectionsStore {
  put(record: ConnectionRecord): Promise<void>;
  /** Idempotent: deleting a record that is not there succeeds. */
  remove(connectionId: string): Promise<void>;
  /**
   * Deletes the record of a connection that answered 410, unless it connected less than
   * CONNECT_GRACE_MS before `nowMs` (its `$connect` may still be running). Returns whether a
   * record was deleted; a missing record is not an error.
   */
  removeStale(connectionId: string, nowMs: number): Promise<boolean>;
  get(connectionId: string): Promise<ConnectionRecord | undefined>;
  /**
   * Counts one message against the connection's fixed-window rate limit and returns its record.
   * `record` is undefined for an unknown connection; `allowed` is false over the limit.
   */
  admitMessage(connectionId: string, nowMs: number, limit: RateLimit): Promise<{ record?: ConnectionRecord; allowed: boolean }>;
  /** The connection ids in a room, one DynamoDB page at a time (a Query, never a Scan). */
  roomMembers(room: string, pageSize?: number): AsyncGenerator<string[], void, undefined>;
}

export function expiresAtFor(connectedAtMs: number): number {
  return Math.floor(connectedAtMs / 1000) + MAX_CONNECTION_SECONDS + EXPIRY_MARGIN_SECONDS;
}

export function createDocumentClient(): DocumentClient {
  // Region, credentials and endpoint come from the environment Lambda provides.
  return createLeanDocumentClient();
}

export function createConnectionsStore(doc: DocumentClient, config: StoreConfig): ConnectionsStore {
  const { tableName, roomIndexName } = config;

  const call = tableCalls(tableName);

  const store: ConnectionsStore = {
    async put(record) {
      await call("PutItem", () => doc.send(new PutCommand({ TableName: tableName, Item: record })));
    },

    async remove(connectionId) {
      await call("DeleteItem", () => doc.send(new DeleteCommand({ TableName: tableName, Key: { connectionId } })));
    },

    async removeStale(connectionId, nowMs) {
      return call("DeleteItem", async () => {
        try {
          await doc.send(
            new DeleteCommand({
              TableName: tableName,
              Key: { connectionId },
              ConditionExpression: "connectedAt < :cutoff",
              ExpressionAttributeValues: { ":cutoff": nowMs - CONNECT_GRACE_MS },
            }),
          );
          return true;
        } catch (err) {
          if (isConditionFailure(err)) return false; // too young to call stale, or already gone
          throw err;
        }
      });
    },

    async get(connectionId) {
      const out = await call("GetItem", () =>
        doc.send(new GetCommand({ TableName: tableName, Key: { connectionId }, ConsistentRead: true })),
      );
      return out.Item as ConnectionRecord | undefined;
    },

    async admitMessage(connectionId, nowMs, limit) {
      const window = Math.floor(nowMs / 1000 / limit.windowSeconds);
      const update = (expression: string, condition: string, values: Record<string, unknown>) =>
        doc.send(
          new UpdateCommand({
            TableName: tableName,
            Key: { connectionId },
            UpdateExpression: expression,
            ConditionExpression: `attribute_exists(connectionId) AND (${condition})`,
            ExpressionAttributeValues: values,
            ReturnValues: "ALL_NEW",
          }),
        );
      // Same window and room left: count it. Otherwise a new window: restart the count at 1. When
      // the restart loses to a concurrent message that restarted the window first, count again.
      const count: [string, string, Record<string, unknown>] = ["SET rlCount = rlCount + :one", "rlWindow = :window AND rlCount < :max", { ":one": 1, ":window": window, ":max": limit.messages }];
      const restart: [string, string, Record<string, unknown>] = ["SET rlWindow = :window, rlCount = :one", "attribute_not_exists(rlWindow) OR rlWindow <> :window", { ":one": 1, ":window": window }];
      for (const [expression, condition, values] of [count, restart, count]) {
        try {
          const out = await update(expression, condition, values);
          return { record: out.Attributes as ConnectionRecord, allowed: true };
        } catch (err) {
          if (!isConditionFailure(err)) throw storeUnavailable(tableName, "UpdateItem", err);
        }
      }
      // Every condition failed: the connection is unknown, or this window is used up.
      const record = await store.get(connectionId);
      return { record, allowed: false };
    },

    async *roomMembers(room, pageSize) {
      let startKey: Record<string, unknown> | undefined;
      do {
        const page = await call("Query", () =>
          doc.send(
            new QueryCommand({
              TableName: tableName,
              IndexName: roomIndexName,
              KeyConditionExpression: "#room = :room",
              ExpressionAttributeNames: { "#room": "room" },
              ExpressionAttributeValues: { ":room": room },
              ProjectionExpression: "connectionId",
              ExclusiveStartKey: startKey,
              Limit: pageSize,
            }),
          ),
        );
        yield (page.Items ?? []).map((item) => String(item.connectionId));
        startKey = page.LastEvaluatedKey;
      } while (startKey);
    },
  };
  return store;
}

/**
 * The store as configured by the program's environment variables. Pass `doc` to share one client
 * (and its socket pool) with the message store: building a client is most of a factory's cost.
 */
export function connectionsStoreFromEnv(doc: DocumentClient = createDocumentClient(), env: NodeJS.ProcessEnv = process.env): ConnectionsStore {
  return createConnectionsStore(doc, {
    tableName: requireEnv(ENV.tableName, env),
    roomIndexName: requireEnv(ENV.roomIndexName, env),
  });
}
