/**
 * The connections store: one DynamoDB item per open WebSocket connection, queried by room
 * through a global secondary index keyed by room and name that also projects `expiresAt` (so a
 * Query returns each connection's id and name, sorted by name: the room's members, without a
 * second projection). Every room query skips expired records: a record whose `$disconnect` never
 * came stays until DynamoDB's TTL deletes it, "typically within a few days"
 * (https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/howitworks-ttl.html), and its
 * connection is certainly closed (API Gateway ends every connection within MAX_CONNECTION_SECONDS).
 * SDK errors are translated here, where the SDK is called, into ChatErrors with code `store_unavailable`.
 * How each write here behaves when an attempt's answer is lost: docs/retries.md.
 */
import { DeleteCommand, GetCommand, PutCommand, UpdateCommand } from "@aws-sdk/lib-dynamodb";
import { randomBytes } from "crypto";
import { atMostOnce, createLeanDocumentClient, DocumentClient, isAmbiguous, isConditionFailure, queryPages, storeUnavailable, tableCalls } from "./dynamodb";
import { ENV, RANGES, requireEnv, requireIntEnv } from "./env";

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
  /** The key of the place it holds among its name's (auth on): removing the record frees it. */
  place?: string;
  /** The id of the last budget spend applied to it (admit): how a spend whose answer was lost is read back. */
  rlRequest?: string;
}

/**
 * The per-connection budget: `messages` units per fixed window of `windowSeconds`, shared by every
 * route (a message, an echo or any other `$default` frame costs 1 unit; a history request 1 up
 * front plus what it returns, see handlers/history.ts).
 */

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
  /**
   * Idempotent: deleting a record that is not there succeeds. A record that counted against its
   * name's cap gives its place back.
   */
  remove(connectionId: string): Promise<void>;
  /**
   * Deletes the record of a connection that answered 410, unless it connected less than
   * CONNECT_GRACE_MS before `nowMs` (its `$connect` may still be running). Returns whether a
   * record was deleted; a missing record is not an error.
   */
  removeStale(connectionId: string, nowMs: number): Promise<boolean>;
  get(connectionId: string): Promise<ConnectionRecord | undefined>;
  /**
   * Spends `cost` units of the connection's budget in one conditional write, and returns its
   * record. `record` is undefined for an unknown connection; `allowed` is false when the window's
   * budget cannot cover the cost, and `retryAfterMs` then says when the next window starts.
   */
  admit(connectionId: string, nowMs: number, limit: RateLimit, cost?: number): Promise<Admission>;
  /**
   * Charges `units` more to the current window after the work was done (what a history page
   * returned). Unconditional within the window, so it may overdraw it: later requests wait.
   */
  charge(connectionId: string, nowMs: number, limit: RateLimit, units: number): Promise<void>;
  /**
   * Takes one of `cap` places for `name`, held by `connectionId` until `expiresAt` (epoch s): the
   * place's key, or undefined when every place is held. A place is one item (`#name#<name>#<i>`)
   * written only while free or expired, so a place whose holder vanished without `$disconnect`
   * comes back when that connection would have expired, and nothing can drift.
   */
  takePlace(name: string, connectionId: string, expiresAt: number, nowMs: number, cap: number): Promise<string | undefined>;
  /** Frees a place if `connectionId` still holds it (idempotent). */
  freePlace(place: string, connectionId: string): Promise<void>;
  /**
   * The connection ids in a room (a Query, never a Scan): DynamoDB's own pages, or with `pageSize`
   * pages of `pageSize` ids, each from at most READ_PER_LIVE × `pageSize` records read (a page may
   * then hold fewer, where expired records took the rest).
   */
  roomMembers(room: string, pageSize?: number): AsyncGenerator<string[], void, undefined>;
  /**
   * How many connections the room has. With `upTo`, counting no further than `upTo`, and reading at
   * most READ_PER_LIVE × `upTo` records: where expired records are more than half of those read, the
   * count is short of the room's (a lower bound), and the read stays bounded.
   */
  roomCount(room: string, upTo?: number): Promise<number>;
  /**
   * Up to `maxNames` of the room's names after `after` (sorted), with how many connections each
   * holds; `next` is the last name when more follow.
   */
  roomNames(room: string, after: string | undefined, maxNames: number): Promise<{ members: { name: string; connections: number }[]; next: string | null }>;
  /**
   * Records a typing signal when the connection's last one is at least `intervalMs` old: its record,
   * or undefined when it is too soon (or the connection is unknown).
   */
  allowTyping(connectionId: string, nowMs: number, intervalMs: number): Promise<ConnectionRecord | undefined>;
}

export interface Admission {
  record?: ConnectionRecord;
  allowed: boolean;
  retryAfterMs?: number;
}

/** The key of one of a name's places: API Gateway's connection ids never contain '#'. */
export function placeKey(name: string, index: number): string {
  return `#name#${name}#${index}`;
}

/** The fixed window `nowMs` falls in, and how long until the next one starts. */
function windowOf(nowMs: number, limit: RateLimit): { window: number; retryAfterMs: number } {
  const windowMs = limit.windowSeconds * 1000;
  const window = Math.floor(nowMs / windowMs);
  return { window, retryAfterMs: (window + 1) * windowMs - nowMs };
}

/**
 * Records a capped room read may read per live record it wants. DynamoDB applies a Query's Limit,
 * and charges read units, for the records it reads before the FilterExpression drops expired ones
 * (ScannedCount; Count is what is left): "a Query consumes the same amount of read capacity,
 * regardless of whether a filter expression is present"
 * (https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/Query.FilterExpression.html;
 * Limit: "DynamoDB reads up to six items, and then returns only those that match", Query.Other.html).
 * So caps count records read, not records kept: twice the cap leaves room for expired records
 * (missed `$disconnect`s TTL has not deleted yet) without reading on through a room of them.
 */
export const READ_PER_LIVE = 2;

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
  /** Frees a place (see ConnectionsStore.freePlace). */
  async function freePlace(place: string, connectionId: string): Promise<void> {
    await call("DeleteItem", async () => {
      try {
        await doc.send(new DeleteCommand({ TableName: tableName, Key: { connectionId: place }, ConditionExpression: "holder = :holder", ExpressionAttributeValues: { ":holder": connectionId } }));
      } catch (err) {
        if (!isConditionFailure(err)) throw err; // free already, or taken again after it expired
      }
    });
  }
  const releasePlace = async (old: ConnectionRecord | undefined) => {
    if (old?.place) await freePlace(old.place, old.connectionId);
  };

  /**
   * The room index's pages for `room` (a Query, never a Scan), sorted by name, optionally after a
   * name, without expired records; following LastEvaluatedKey until the caller stops reading.
   * `limit` bounds the records read per page, before the filter: a page may hold fewer.
   */
  function roomPages(room: string, options: { after?: string; projection?: "connectionId" | "#name"; select?: "COUNT"; limit?: () => number | undefined }) {
    const { after, projection, select, limit } = options;
    const byName = after !== undefined || projection === "#name";
    return queryPages(
      doc,
      {
        TableName: tableName,
        IndexName: roomIndexName,
        KeyConditionExpression: after === undefined ? "#room = :room" : "#room = :room AND #name > :after",
        // TTL deletes in the background; until then an expired record is still in the index.
        FilterExpression: "expiresAt > :now",
        ExpressionAttributeNames: { "#room": "room", ...(byName ? { "#name": "name" } : {}) },
        ExpressionAttributeValues: { ":room": room, ":now": Math.floor(Date.now() / 1000), ...(after === undefined ? {} : { ":after": after }) },
        ...(projection ? { ProjectionExpression: projection } : {}),
        ...(select ? { Select: select } : {}),
      },
      limit,
    );
  }

  const store: ConnectionsStore = {
    async put(record) {
      await call("PutItem", () => doc.send(new PutCommand({ TableName: tableName, Item: record })));
    },

    // Both deletes read the record first, for its place: the item a delete returns (ALL_OLD) is lost
    // when the delete's answer is, and a retry that finds nothing would leave the place held.
    async remove(connectionId) {
      const record = await store.get(connectionId);
      if (!record) return;
      await call("DeleteItem", () => doc.send(new DeleteCommand({ TableName: tableName, Key: { connectionId } })));
      await releasePlace(record);
    },

    async removeStale(connectionId, nowMs) {
      const record = await store.get(connectionId);
      // connectedAt never changes: a record too young now stays too young; none is gone already.
      if (!record || record.connectedAt >= nowMs - CONNECT_GRACE_MS) return false;
      await call("DeleteItem", async () => {
        try {
          await doc.send(new DeleteCommand({ TableName: tableName, Key: { connectionId }, ConditionExpression: "connectedAt < :cutoff", ExpressionAttributeValues: { ":cutoff": nowMs - CONNECT_GRACE_MS } }));
        } catch (err) {
          if (!isConditionFailure(err)) throw err; // gone meanwhile: by $disconnect, or by our own attempt whose answer was lost
        }
      });
      await releasePlace(record);
      return true;
    },

    async get(connectionId) {
      const out = await call("GetItem", () =>
        doc.send(new GetCommand({ TableName: tableName, Key: { connectionId }, ConsistentRead: true })),
      );
      return out.Item as ConnectionRecord | undefined;
    },

    async admit(connectionId, nowMs, limit, cost = 1) {
      const { window, retryAfterMs } = windowOf(nowMs, limit);
      // A spend is sent at most once: a retry after an attempt that applied would charge twice, and
      // a condition cannot tell our own earlier attempt from another request of the connection
      // that landed between the two. Each spend records this call's id instead, so an attempt whose
      // answer was lost is read back: applied (admitted, charged once) or not known (unavailable).
      const request = randomBytes(9).toString("base64url");
      const update = (expression: string, condition: string, values: Record<string, unknown>) =>
        doc.send(
          atMostOnce(
            new UpdateCommand({
              TableName: tableName,
              Key: { connectionId },
              UpdateExpression: `${expression}, rlRequest = :request`,
              ConditionExpression: `attribute_exists(connectionId) AND (${condition})`,
              ExpressionAttributeValues: { ...values, ":request": request },
              ReturnValues: "ALL_NEW",
            }),
          ),
        );
      // Condition expressions have no arithmetic: the limits are computed here.
      const max = limit.messages;
      const attempts: [string, string, Record<string, unknown>][] = [
        // This window, with enough left: spend it.
        ["SET rlCount = rlCount + :cost", "rlWindow = :window AND rlCount <= :left", { ":cost": cost, ":window": window, ":left": max - cost }],
        // A new window after a window within budget, or after an idle one: start the count at the cost.
        ["SET rlWindow = :window, rlCount = :cost", "attribute_not_exists(rlWindow) OR rlWindow < :previous OR (rlWindow = :previous AND rlCount <= :max)", { ":cost": cost, ":window": window, ":previous": window - 1, ":max": max }],
        // A new window right after an overdrawn one (a history page charged after the fact): the debt
        // carries over, once; admitted only if the window can still cover the cost.
        ["SET rlWindow = :window, rlCount = rlCount - :credit", "rlWindow = :previous AND rlCount > :max AND rlCount <= :carry", { ":window": window, ":previous": window - 1, ":max": max, ":credit": max - cost, ":carry": 2 * max - cost }],
      ];
      if (cost <= max) {
        // Each attempt fails on its condition unless its case holds; a concurrent request that
        // started the window first makes the spend succeed on the second pass.
        for (const [expression, condition, values] of [...attempts, attempts[0]]) {
          try {
            const out = await update(expression, condition, values);
            return { record: out.Attributes as ConnectionRecord, allowed: true };
          } catch (err) {
            if (isAmbiguous(err)) {
              // The answer never came: admitted if the record carries this call's id (the spend
              // applied), else unavailable (it did not apply, or still may: charged at most once).
              const record = await store.get(connectionId);
              if (record?.rlRequest === request) return { record, allowed: true };
              throw storeUnavailable(tableName, "UpdateItem", err);
            }
            if (!isConditionFailure(err)) throw storeUnavailable(tableName, "UpdateItem", err);
          }
        }
      }
      // Every condition failed: the connection is unknown, or this window's budget is spent.
      const record = await store.get(connectionId);
      return { record, allowed: false, ...(record ? { retryAfterMs } : {}) };
    },

    async charge(connectionId, nowMs, limit, units) {
      if (units <= 0) return;
      const { window } = windowOf(nowMs, limit);
      await call("UpdateItem", async () => {
        try {
          // At most once, as a spend (admit): a lost answer fails the charge rather than doubling it.
          await doc.send(
            atMostOnce(new UpdateCommand({
              TableName: tableName,
              Key: { connectionId },
              UpdateExpression: "SET rlCount = rlCount + :units",
              ConditionExpression: "attribute_exists(connectionId) AND rlWindow = :window",
              ExpressionAttributeValues: { ":units": units, ":window": window },
            })),
          );
        } catch (err) {
          if (!isConditionFailure(err)) throw err; // a new window began, or the connection is gone: nothing to charge
        }
      });
    },

    async takePlace(name, connectionId, expiresAt, nowMs, cap) {
      // From a random place on, so that a burst of one name's connects spreads over the places.
      const first = Math.floor(Math.random() * cap);
      for (let k = 0; k < cap; k++) {
        const place = placeKey(name, (first + k) % cap);
        const taken = await call("PutItem", async () => {
          try {
            await doc.send(
              new PutCommand({
                TableName: tableName,
                Item: { connectionId: place, holder: connectionId, expiresAt },
                // Held by this connection already: our own attempt whose answer was lost, met by the retry.
                ConditionExpression: "attribute_not_exists(connectionId) OR expiresAt <= :now OR holder = :holder",
                ExpressionAttributeValues: { ":now": Math.floor(nowMs / 1000), ":holder": connectionId },
              }),
            );
            return true;
          } catch (err) {
            if (isConditionFailure(err)) return false;
            throw err;
          }
        });
        if (taken) return place;
      }
      return undefined;
    },

    freePlace,

    async roomCount(room, upTo) {
      let count = 0;
      let read = 0;
      const readCap = READ_PER_LIVE * (upTo ?? 0);
      const limit = () => (upTo === undefined ? undefined : Math.min(upTo - count, readCap - read));
      for await (const page of roomPages(room, { select: "COUNT", limit })) {
        count += page.Count ?? 0;
        read += page.ScannedCount ?? 0;
        if (upTo !== undefined && (count >= upTo || read >= readCap)) break;
      }
      return count;
    },

    async roomNames(room, after, maxNames) {
      const members: { name: string; connections: number }[] = [];
      for await (const page of roomPages(room, { after, projection: "#name" })) {
        for (const item of page.Items ?? []) {
          const name = String(item.name);
          const last = members[members.length - 1];
          if (last?.name === name) {
            last.connections++;
          } else if (members.length === maxNames) {
            return { members, next: last.name }; // a further name: this page is full
          } else {
            members.push({ name, connections: 1 });
          }
        }
      }
      return { members, next: null };
    },

    async allowTyping(connectionId, nowMs, intervalMs) {
      return call("UpdateItem", async () => {
        try {
          const out = await doc.send(
            new UpdateCommand({
              TableName: tableName,
              Key: { connectionId },
              UpdateExpression: "SET typingAt = :now",
              // `typingAt = :now`: our own attempt whose answer was lost, met by the retry.
              ConditionExpression: "attribute_exists(connectionId) AND (attribute_not_exists(typingAt) OR typingAt <= :cutoff OR typingAt = :now)",
              ExpressionAttributeValues: { ":now": nowMs, ":cutoff": nowMs - intervalMs },
              ReturnValues: "ALL_NEW",
            }),
          );
          return out.Attributes as ConnectionRecord;
        } catch (err) {
          if (isConditionFailure(err)) return undefined;
          throw err;
        }
      });
    },

    async *roomMembers(room, pageSize) {
      // Expired records are filtered out of a page after it is read: refill to `pageSize` across
      // pages, so a caller that reads one page (typing) still sees up to `pageSize` members, reading
      // at most READ_PER_LIVE × `pageSize` records for it.
      const readCap = READ_PER_LIVE * (pageSize ?? 0);
      let ids: string[] = [];
      let read = 0;
      let yielded = false;
      const limit = () => (pageSize === undefined ? undefined : Math.min(pageSize - ids.length, readCap - read));
      for await (const page of roomPages(room, { projection: "connectionId", limit })) {
        ids.push(...(page.Items ?? []).map((item) => String(item.connectionId)));
        read += page.ScannedCount ?? 0;
        if (pageSize === undefined || ids.length >= pageSize || read >= readCap) {
          yield ids;
          [ids, read, yielded] = [[], 0, true];
        }
      }
      if (ids.length > 0 || !yielded) yield ids;
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

/** The per-connection budget as the program configures it (every route a client can call spends it). */
export function budgetFromEnv(env: NodeJS.ProcessEnv = process.env): RateLimit {
  return {
    messages: requireIntEnv(ENV.rateLimitMessages, RANGES.rateLimitMessages.min, RANGES.rateLimitMessages.max, env),
    windowSeconds: requireIntEnv(ENV.rateLimitWindowSeconds, RANGES.rateLimitWindowSeconds.min, RANGES.rateLimitWindowSeconds.max, env),
  };
}

/** The text of a `rate_limited` refusal of a request other than a message. */
export function budgetSpent(limit: RateLimit): string {
  return `this connection used its ${limit.messages} requests for ${limit.windowSeconds} s; ask again after retryAfterMs`;
}
