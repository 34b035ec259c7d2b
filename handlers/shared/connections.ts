/**
 * The connections store: one DynamoDB item per open WebSocket connection, queried by room
 * through a KEYS_ONLY global secondary index. SDK errors are translated here, where the SDK
 * is called, into ChatErrors with code `store_unavailable`.
 */
import { DynamoDBClient } from "@aws-sdk/client-dynamodb";
import { DeleteCommand, DynamoDBDocumentClient, GetCommand, PutCommand, QueryCommand } from "@aws-sdk/lib-dynamodb";
import { ENV, requireEnv } from "./env";
import { chatError } from "./errors";

/** API Gateway closes every WebSocket connection after 2 hours. */
export const MAX_CONNECTION_SECONDS = 2 * 60 * 60;
/** Slack after the 2 h limit before a record left behind by a missed `$disconnect` may expire. */
export const EXPIRY_MARGIN_SECONDS = 15 * 60;

export interface ConnectionRecord {
  connectionId: string;
  room: string;
  name: string;
  /** Epoch milliseconds, from the event's `requestContext.connectedAt`. */
  connectedAt: number;
  /** Epoch seconds: the table's TTL attribute. DynamoDB TTL only reads seconds. */
  expiresAt: number;
}

export interface StoreConfig {
  tableName: string;
  roomIndexName: string;
}

export interface ConnectionsStore {
  put(record: ConnectionRecord): Promise<void>;
  /** Idempotent: deleting a record that is not there succeeds. */
  remove(connectionId: string): Promise<void>;
  get(connectionId: string): Promise<ConnectionRecord | undefined>;
  /** The connection ids in a room, one DynamoDB page at a time (a Query, never a Scan). */
  roomMembers(room: string, pageSize?: number): AsyncGenerator<string[], void, undefined>;
}

export function expiresAtFor(connectedAtMs: number): number {
  return Math.floor(connectedAtMs / 1000) + MAX_CONNECTION_SECONDS + EXPIRY_MARGIN_SECONDS;
}

export function createDocumentClient(): DynamoDBDocumentClient {
  // Region, credentials and endpoint come from the environment Lambda provides.
  return DynamoDBDocumentClient.from(new DynamoDBClient({}));
}

export function createConnectionsStore(doc: DynamoDBDocumentClient, config: StoreConfig): ConnectionsStore {
  const { tableName, roomIndexName } = config;

  async function call<T>(operation: string, run: () => Promise<T>): Promise<T> {
    try {
      return await run();
    } catch (err) {
      throw chatError("store_unavailable", `DynamoDB ${operation} on ${tableName} failed: ${(err as Error).name}: ${(err as Error).message}`, 500, err);
    }
  }

  return {
    async put(record) {
      await call("PutItem", () => doc.send(new PutCommand({ TableName: tableName, Item: record })));
    },

    async remove(connectionId) {
      await call("DeleteItem", () => doc.send(new DeleteCommand({ TableName: tableName, Key: { connectionId } })));
    },

    async get(connectionId) {
      const out = await call("GetItem", () =>
        doc.send(new GetCommand({ TableName: tableName, Key: { connectionId }, ConsistentRead: true })),
      );
      return out.Item as ConnectionRecord | undefined;
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
}

/** The store as configured by the program's environment variables. */
export function connectionsStoreFromEnv(env: NodeJS.ProcessEnv = process.env): ConnectionsStore {
  return createConnectionsStore(createDocumentClient(), {
    tableName: requireEnv(ENV.tableName, env),
    roomIndexName: requireEnv(ENV.roomIndexName, env),
  });
}
