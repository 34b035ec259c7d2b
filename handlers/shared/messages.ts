/**
 * The message history: every accepted message, persisted before it is fanned out.
 *
 * One table, partitioned by room, with three kinds of item under the sort key `cursor`:
 * - events: `cursor` = the room's sequence number, zero-padded to 16 digits, so cursors are
 *   consecutive, time-ordered and unique per room, and sort as strings. An event is a message, or a
 *   tombstone: a number whose sender died before storing it (see sequence.ts);
 * - the room head `#head`: the counter (`seq`) and the stream's identity (`epoch`);
 * - idempotency claims `#id#<name>#<client id>`: which cursor a client id was stored under;
 * - read markers `#read#<name>`: the last cursor `name` has read in the room (only moves forward).
 * `#` sorts before digits, so event queries use `BETWEEN` over the 16-digit range only.
 *
 * Appending takes a number with one atomic counter step (`UpdateItem … ADD seq 1`, no condition,
 * so concurrent senders never race and never retry), then stores the message under it with a
 * conditional put (with a client id: a transaction of the message and the id's claim, each
 * conditional on being new). A room's capacity is then the head item's write limit (1,000 a
 * second on DynamoDB), not a race. Numbers are taken before they are stored, so a number can be
 * briefly empty, or empty for good when its sender dies: `history` passes over a number only
 * once it is settled (sequence.ts), writing a tombstone there, and a late writer's conditional put
 * then fails and it takes a new number. Clients fill gaps in live delivery from `history`.
 *
 * Events are messages, joins and leaves (presence), edits and deletes. An edit or delete is stored in
 * the same transaction as a conditional update of the message it names (its author, not deleted, the
 * edit window, the edit count): both or neither. A delete also wipes the text of the message and of
 * its edit events, so a deleted text is never replayed; the events themselves stay (history is a log).
 *
 * The epoch names the stream: it is created with the head and changes only when numbering
 * starts again (the head was lost: an in-memory local stack restarted, a table was restored), so a
 * client that sees a new epoch knows its cursor is void. Every event, ack and history-end carries it.
 */
import type { TransactionCanceledException } from "@aws-sdk/client-dynamodb";
import { GetCommand, PutCommand, TransactWriteCommand, UpdateCommand } from "@aws-sdk/lib-dynamodb";
import { randomBytes } from "crypto";
import { createDocumentClient } from "./connections";
import { DocumentClient, isCancellation, isConditionFailure, queryPages, storeUnavailable, tableCalls } from "./dynamodb";
import { ENV, RANGES, requireEnv, requireIntEnv } from "./env";
import { chatError } from "./errors";
import type { EventFrame, EventType, TombstoneFrame } from "./protocol";
import { settlePage } from "./sequence";

export const CURSOR_DIGITS = 16;
export const CURSOR_PATTERN = /^\d{16}$/;
const FIRST_CURSOR = "0".repeat(CURSOR_DIGITS);
const LAST_CURSOR = "9".repeat(CURSOR_DIGITS);
const HEAD = "#head";
/** A room's head outlives its newest message by this much (see takeNumber). */
const HEAD_MARGIN_DAYS = 1;
/** `cursor` is a DynamoDB reserved word: expressions name it through a placeholder. */
const CURSOR_NAME = { "#cursor": "cursor" };
/** A number may be filled only while it is empty, or holds a stale epoch's leftover. */
const FREE_NUMBER = "attribute_not_exists(#cursor) OR epoch <> :epoch";
/** How long an append may take, at most; sendmessage passes its own deadline when shorter. */
export const APPEND_BUDGET_MS = 5_000;
/**
 * History writes at most this many tombstones in a row. A longer run of settled empty numbers is
 * not a crash (one sender leaves one hole) but expired history whose items TTL has deleted: it is
 * passed over without writes.
 */
export const MAX_TOMBSTONE_RUN = 10;

export interface StoredMessage {
  room: string;
  cursor: string;
  /** Absent: a message. Else a presence event (join, leave) or an edit or delete of the message at `target`. */
  type?: Exclude<EventType, "message">;
  /** Server id of the message (API Gateway's messageId). */
  id: string;
  from: { name: string };
  /** The text of a message or edit; absent for other events, and once wiped by a delete. */
  message?: string;
  /** Edit and delete: the cursor of the message they change. */
  target?: string;
  /** A message or edit whose message was deleted: the cursor of the delete event. */
  deleted?: string;
  /** A message: the cursors of its edit events, oldest first. */
  edits?: string[];
  ts: number;
  /** The sender's idempotency id, when it gave one. */
  clientId?: string;
  expiresAt: number;
  /** The stream's epoch (absent on messages stored before epochs existed). */
  epoch?: string;
  /** When the number was taken, epoch ms: bounds when every lower number was taken. */
  numberedAt?: number;
}

export interface StoredTombstone {
  room: string;
  cursor: string;
  type: "tombstone";
  epoch: string;
  numberedAt: number;
  expiresAt: number;
}

export type StoredEvent = StoredMessage | StoredTombstone;

export const isTombstone = (e: StoredEvent): e is StoredTombstone => (e as StoredTombstone).type === "tombstone";

/**
 * The frame a stored event is sent as, live or replayed. Events stored before epochs existed get the
 * room's. A deleted message or edit is sent with `deleted` and no text.
 */
export function eventFrame(event: StoredEvent, epoch: string): EventFrame | TombstoneFrame {
  if (isTombstone(event)) return { type: "tombstone", room: event.room, cursor: event.cursor, epoch: event.epoch };
  const { room, from, ts, id, cursor } = event;
  const stream = { ts, id, cursor, epoch: event.epoch ?? epoch };
  const deleted = event.deleted ? { deleted: true as const } : {};
  switch (event.type) {
    case "join":
    case "leave":
      return { type: event.type, room, from, ...stream };
    case "delete":
      return { type: "delete", room, from, target: String(event.target), ...stream };
    case "edit":
      return { type: "edit", room, from, target: String(event.target), message: event.message ?? "", ...stream, ...deleted };
    default:
      return { type: "message", room, from, message: event.message ?? "", ...stream, ...deleted, ...(event.edits?.length ? { edited: true as const } : {}) };
  }
}

export type NewMessage = Omit<StoredMessage, "cursor" | "expiresAt" | "epoch" | "numberedAt" | "deleted" | "edits">;

/** At most this many edits per message: a delete wipes them all in one transaction (100 items at most). */
export const MAX_EDITS = 20;

/**
 * What an edit or delete requires of the message it names, checked in the same transaction that
 * stores the event. `edits`: the edit cursors the caller read (a delete wipes exactly those).
 */
export interface TargetCheck {
  cursor: string;
  author: string;
  /** An edit: the message must have been sent at or after this (epoch ms). */
  sentSince?: number;
  edits: string[];
}

/** A read marker and what is unread after it. */
export interface ReadMarker {
  cursor: string | null;
  epoch: string | null;
  /** Messages from others after the marker (in the marker's epoch), counted up to UNREAD_SCAN events. */
  unread: number;
  more: boolean;
}

/** Unread counting reads at most this many events after a marker. */
export const UNREAD_SCAN = 1_000;

export interface Appended {
  cursor: string;
  epoch: string;
  /** A client id seen before: `cursor` is where it was stored the first time. */
  duplicate: boolean;
}

export interface HistoryPage {
  /** Messages and tombstones, oldest first. */
  events: StoredEvent[];
  /** The last cursor the page settles (the client's new cursor), or the `since` asked for; null for an empty room. */
  cursor: string | null;
  /** Whether events after `cursor` exist, or may yet be written: ask again from `cursor`. */
  more: boolean;
  /** The stream's epoch; null while the room has no head. */
  epoch: string | null;
  /** Set when the page stopped at a number its sender may still be writing: ask again after this. */
  retryAfterMs?: number;
}

export interface MessageStore {
  /**
   * Persists a message; a client id seen before returns the original cursor with `duplicate`.
   * Fails with `store_unavailable` (503) and nothing stored when DynamoDB fails or `deadline`
   * (epoch ms; default: APPEND_BUDGET_MS from now) passes.
   */
  append(message: NewMessage, deadline?: number, target?: TargetCheck): Promise<Appended>;
  /** The stored event at `cursor` of the room's current epoch, if any (a leftover of an earlier epoch is none). */
  event(room: string, cursor: string): Promise<StoredMessage | undefined>;
  /** Where `name`'s client id was stored, if it was (a resend of an applied request is answered with it). */
  claimed(room: string, name: string, clientId: string): Promise<Appended | undefined>;
  /** `name`'s read marker in the room and what is unread after it. */
  readMarker(room: string, name: string): Promise<ReadMarker>;
  /**
   * Moves `name`'s marker forward to `cursor` (an older one leaves it). Refused with `invalid_read`
   * when `epoch` is not the room's or `cursor` is beyond the room's newest number.
   */
  moveMarker(room: string, name: string, cursor: string, epoch: string): Promise<ReadMarker>;
  /** Events after `since`, oldest first; without `since`, the latest `limit`. */
  /** `epoch`: the stream `since` belongs to; when the room's is another, `since` is void and the latest page is read. */
  history(room: string, since: string | undefined, limit: number, epoch?: string): Promise<HistoryPage>;
}

export interface MessageStoreOptions {
  /** How long after a later number was taken an empty number counts as settled; see sequence.ts. */
  holeGraceMs: number;
  /** How long the wait for an unsettled number is worth before asking again. */
  pendingRetryMs?: number;
}

export function cursorOf(seq: number): string {
  return String(seq).padStart(CURSOR_DIGITS, "0");
}

/** Epochs are 8 characters (6 random bytes, base64url), so a frame's size is known before storing. */
export const EPOCH_LENGTH = 8;
const newEpoch = () => randomBytes((EPOCH_LENGTH * 3) / 4).toString("base64url");

export function createMessageStore(doc: DocumentClient, tableName: string, retentionDays: number, options: MessageStoreOptions): MessageStore {
  const { holeGraceMs, pendingRetryMs = 250 } = options;
  const call = tableCalls(tableName);
  const claimKey = (m: NewMessage) => `#id#${m.from.name}#${m.clientId}`;
  const markerKey = (name: string) => `#read#${name}`;
  const getItem = (room: string, cursor: string) =>
    call("GetItem", async () => (await doc.send(new GetCommand({ TableName: tableName, Key: { room, cursor }, ConsistentRead: true }))).Item);

  /**
   * One atomic step: the next number of the room, and its epoch (created with the head). Retried
   * like any call when an answer is lost: if the lost attempt had applied, the retry takes the next
   * number and the one before is burned. Nobody stores under a burned number, so it is settled as
   * any hole is (sequence.ts): after the grace, history writes a tombstone there. A retry can cost
   * a reader one grace's wait, never a message (docs/retries.md).
   */
  async function takeNumber(room: string): Promise<{ seq: number; epoch: string; numberedAt: number }> {
    const out = await call("UpdateItem", () =>
      doc.send(
        new UpdateCommand({
          TableName: tableName,
          Key: { room, cursor: HEAD },
          // The head expires a day after the room's newest message would: an idle room leaves nothing
          // behind, and when it is used again its new head starts a new epoch, which clients notice.
          UpdateExpression: "SET epoch = if_not_exists(epoch, :epoch), expiresAt = :expires ADD seq :one",
          ExpressionAttributeValues: { ":epoch": newEpoch(), ":one": 1, ":expires": Math.floor(Date.now() / 1000) + (retentionDays + HEAD_MARGIN_DAYS) * 86_400 },
          ReturnValues: "ALL_NEW",
        }),
      ),
    );
    return { seq: Number(out.Attributes?.seq), epoch: String(out.Attributes?.epoch), numberedAt: Date.now() };
  }

  /**
   * Fills an empty number with a tombstone; false when something else is stored there already. A
   * tombstone there already (our own attempt whose answer was lost, or another reader's) counts as ours.
   */
  async function tombstone(room: string, seq: number, epoch: string, numberedAt: number): Promise<boolean> {
    const item: StoredTombstone = { room, cursor: cursorOf(seq), type: "tombstone", epoch, numberedAt, expiresAt: Math.floor(Date.now() / 1000) + retentionDays * 86_400 };
    return call("PutItem", async () => {
      try {
        await doc.send(
          new PutCommand({
            TableName: tableName,
            Item: item,
            ConditionExpression: `${FREE_NUMBER} OR (#type = :tombstone AND epoch = :epoch)`,
            ExpressionAttributeNames: { ...CURSOR_NAME, "#type": "type" },
            ExpressionAttributeValues: { ":epoch": epoch, ":tombstone": "tombstone" },
          }),
        );
        return true;
      } catch (err) {
        if (isConditionFailure(err)) return false;
        throw err;
      }
    });
  }

  /**
   * Stores the event under its number: "stored", "taken" (a tombstone got there first), "duplicate"
   * (the id's claim exists) or "conflict" (the target of an edit or delete no longer passes its check).
   */
  async function store(item: StoredMessage, message: NewMessage, target?: TargetCheck): Promise<"stored" | "taken" | "duplicate" | "conflict"> {
    const put = { TableName: tableName, ConditionExpression: FREE_NUMBER, ExpressionAttributeNames: CURSOR_NAME, ExpressionAttributeValues: { ":epoch": item.epoch } };
    if (!message.clientId && !target) {
      try {
        await doc.send(new PutCommand({ ...put, Item: item }));
        return "stored";
      } catch (err) {
        if (isConditionFailure(err)) return "taken";
        throw err;
      }
    }
    const claim = message.clientId ? { room: item.room, cursor: claimKey(message), messageCursor: item.cursor, epoch: item.epoch, expiresAt: item.expiresAt } : undefined;
    const claimPut = claim ? [{ Put: { TableName: tableName, Item: claim, ConditionExpression: "attribute_not_exists(#cursor)", ExpressionAttributeNames: CURSOR_NAME } }] : [];
    const updates = target ? targetUpdates(item, target) : [];
    try {
      await doc.send(new TransactWriteCommand({ TransactItems: [{ Put: { ...put, Item: item } }, ...claimPut, ...updates] }));
      return "stored";
    } catch (err) {
      if (!isCancellation(err)) throw err;
      const reasons = ((err as TransactionCanceledException).CancellationReasons ?? []).map((r) => r?.Code === "ConditionalCheckFailed");
      if (claim && reasons[1]) return "duplicate";
      if (reasons[0]) return "taken";
      if (reasons.slice(1 + claimPut.length).some(Boolean)) return "conflict";
      throw err; // a TransactionConflict: transient, as the caller treats any other failure
    }
  }

  /**
   * The writes an edit or delete makes beside its event, each conditional: the target is a message
   * of this epoch by `author`, not deleted, with exactly the edits the caller read (an edit: sent within
   * the window). An edit appends its cursor to the target's `edits`; a delete marks the target and its
   * edits deleted and removes their text.
   */
  function targetUpdates(item: StoredMessage, check: TargetCheck) {
    const sameEdits = check.edits.length === 0 ? "attribute_not_exists(#edits)" : "size(#edits) = :editCount";
    const sent = check.sentSince === undefined ? "" : " AND #ts >= :since";
    const condition = `attribute_exists(#cursor) AND attribute_not_exists(#type) AND #from.#name = :author AND attribute_not_exists(#deleted) AND (attribute_not_exists(epoch) OR epoch = :epoch) AND ${sameEdits}`;
    const values = { ":author": check.author, ":epoch": item.epoch, ":editCount": check.edits.length, ":since": check.sentSince, ":none": [], ":mine": [item.cursor], ":by": item.cursor };
    const update = (cursor: string, expression: string, conditionExpression: string) => ({
      Update: { TableName: tableName, Key: { room: item.room, cursor }, UpdateExpression: expression, ConditionExpression: conditionExpression, ...placeholders([expression, conditionExpression], values) },
    });
    if (item.type === "edit") return [update(check.cursor, "SET #edits = list_append(if_not_exists(#edits, :none), :mine)", condition + sent)];
    const wipe = "SET #deleted = :by REMOVE #message";
    return [update(check.cursor, wipe, condition), ...check.edits.map((edit) => update(edit, wipe, "attribute_exists(#cursor)"))];
  }

  async function appendOnce(message: NewMessage, expiresAt: number, target?: TargetCheck): Promise<Appended | "taken"> {
    const { seq, epoch, numberedAt } = await takeNumber(message.room);
    const item: StoredMessage = { ...message, cursor: cursorOf(seq), expiresAt, epoch, numberedAt };
    let outcome;
    try {
      outcome = await store(item, message, target);
    } catch (err) {
      // Our number stays empty: fill it now rather than leave readers waiting out the grace.
      await tombstone(message.room, seq, epoch, numberedAt).catch(() => undefined);
      throw storeUnavailable(tableName, message.clientId ? "TransactWriteItems" : "PutItem", err);
    }
    const ours = { cursor: item.cursor, epoch, duplicate: false };
    if (outcome === "stored") return ours;
    if (outcome === "conflict") {
      // Nothing was written but our number: give it back, and let the caller look at the target again.
      await tombstone(message.room, seq, epoch, numberedAt);
      throw chatError("target_changed", `room ${message.room}: the message at ${target?.cursor} changed while this ${message.type} was being stored`, 409);
    }
    if (outcome === "taken") {
      // Either a reader tombstoned our number first, or an attempt of ours that timed out was
      // applied after all and this retry met it: then the message is stored, under our number.
      const there = await getItem(message.room, item.cursor);
      return there?.id === message.id && there?.epoch === epoch ? ours : "taken";
    }
    const original = await getItem(message.room, claimKey(message));
    if (original?.messageCursor === item.cursor) return ours; // our own earlier attempt, applied
    // A concurrent resend of the same id won: give our number back as a tombstone, answer with the original.
    await tombstone(message.room, seq, epoch, numberedAt);
    return { cursor: String(original?.messageCursor), epoch: String(original?.epoch ?? epoch), duplicate: true };
  }

  return {
    async append(message, deadline = Date.now() + APPEND_BUDGET_MS, target) {
      const started = Date.now();
      const expiresAt = Math.floor(message.ts / 1000) + retentionDays * 86_400;
      // No read of the id's claim first: a repeat is rare (a resend whose ack was lost), and it is
      // caught by the claim's condition in the same write that stores the message.
      for (let attempt = 1; ; attempt++) {
        const appended = await appendOnce(message, expiresAt, target);
        if (appended !== "taken") return appended;
        // Our number was settled as empty before we stored it (we were slower than the grace): take another.
        if (Date.now() >= deadline) {
          throw chatError("store_unavailable", `room ${message.room}: no number could be filled in time (${attempt} attempts in ${Date.now() - started} ms); try again`, 503);
        }
      }
    },

    async event(room, cursor) {
      const [item, head] = await Promise.all([getItem(room, cursor), getItem(room, HEAD)]);
      if (!item || (item.epoch !== undefined && item.epoch !== head?.epoch)) return undefined;
      return item as StoredMessage;
    },

    async claimed(room, name, clientId) {
      const claim = await getItem(room, claimKey({ from: { name }, clientId } as NewMessage));
      return claim ? { cursor: String(claim.messageCursor), epoch: String(claim.epoch), duplicate: true } : undefined;
    },

    readMarker,

    async moveMarker(room, name, cursor, epoch) {
      const head = await getItem(room, HEAD);
      if (!head?.epoch || head.epoch !== epoch) throw chatError("invalid_read", "epoch is not this room's current one: ask history for the latest page", 400);
      if (Number(cursor) > Number(head.seq)) throw chatError("invalid_read", `cursor is beyond the room's newest event (${cursorOf(Number(head.seq))})`, 400);
      await call("UpdateItem", async () => {
        try {
          await doc.send(
            new UpdateCommand({
              TableName: tableName,
              Key: { room, cursor: markerKey(name) },
              UpdateExpression: "SET readCursor = :cursor, epoch = :epoch, expiresAt = :expires",
              // Forward only: an older cursor (a late or repeated request) leaves the marker.
              ConditionExpression: "attribute_not_exists(readCursor) OR epoch <> :epoch OR readCursor < :cursor",
              ExpressionAttributeValues: { ":cursor": cursor, ":epoch": epoch, ":expires": Math.floor(Date.now() / 1000) + (retentionDays + HEAD_MARGIN_DAYS) * 86_400 },
            }),
          );
        } catch (err) {
          if (!isConditionFailure(err)) throw err;
        }
      });
      return readMarker(room, name);
    },

    async history(room, asked, limit, askedEpoch) {
      const head = await getItem(room, HEAD);
      if (!head?.epoch) return { events: [], cursor: asked ?? null, more: false, epoch: null };
      const epoch = String(head.epoch);
      // A cursor of another stream (the client asked before it saw the new epoch) says nothing here.
      const since = askedEpoch !== undefined && askedEpoch !== epoch ? undefined : asked;
      const ofEpoch = (e: StoredEvent) => e.epoch === undefined || e.epoch === epoch;
      // Latest: the newest `limit` events, settled from just before the oldest of them. Since: the
      // page plus one, so the extra item says whether more exist.
      const latest = since === undefined;
      const { items, more: moreStored } = latest
        ? await query(room, LAST_CURSOR, limit, ofEpoch, false)
        : await query(room, cursorOf(Number(since) + 1), limit + 1, ofEpoch, true);
      if (latest) items.reverse();
      const start = latest ? (items.length > 0 ? Number(items[0].cursor) - 1 : 0) : Number(since);
      const page = settlePage(items, start, { limit, nowMs: Date.now(), graceMs: holeGraceMs, maxTombstones: MAX_TOMBSTONE_RUN, numberOf: Number });
      const events: StoredEvent[] = [];
      const answer = (last: number, more: boolean, retryAfterMs?: number): HistoryPage => ({
        events,
        cursor: last > start || since === undefined ? cursorOrNull(last) : since,
        more,
        epoch,
        ...(retryAfterMs === undefined ? {} : { retryAfterMs }),
      });
      for (const step of page.steps) {
        if (step.kind === "item") {
          events.push(step.item);
        } else if (await tombstone(room, step.seq, epoch, step.numberedAt)) {
          events.push({ room, cursor: cursorOf(step.seq), type: "tombstone", epoch, numberedAt: step.numberedAt, expiresAt: 0 });
        } else {
          // Its sender stored it after all, just now: stop before it and let the client ask again.
          return answer(step.seq - 1, true, 0);
        }
      }
      return answer(page.last, page.pending || page.full || (!latest && moreStored), page.pending ? pendingRetryMs : undefined);
    },
  };

  /** See MessageStore.readMarker. */
  async function readMarker(room: string, name: string): Promise<ReadMarker> {
    const [marker, head] = await Promise.all([getItem(room, markerKey(name)), getItem(room, HEAD)]);
    const epoch = head?.epoch === undefined ? null : String(head.epoch);
    // A marker of an earlier stream says nothing about this one.
    if (!marker || epoch === null || marker.epoch !== epoch) return { cursor: null, epoch, unread: 0, more: false };
    return { cursor: String(marker.readCursor), epoch, ...(await countUnread(room, name, String(marker.readCursor), epoch)) };
  }

  /**
   * Messages from others after `after`, not deleted, of `epoch`, reading at most UNREAD_SCAN events
   * (following DynamoDB's 1 MB pages); `more` when events beyond those were not read.
   */
  async function countUnread(room: string, name: string, after: string, epoch: string): Promise<{ unread: number; more: boolean }> {
    const filter = "attribute_not_exists(#type) AND attribute_not_exists(#deleted) AND #from.#name <> :me AND epoch = :epoch";
    const keys = "room = :room AND #cursor BETWEEN :from AND :to";
    const input = { TableName: tableName, KeyConditionExpression: keys, FilterExpression: filter, Select: "COUNT" as const, ConsistentRead: true, ...placeholders([keys, filter], { ":room": room, ":from": cursorOf(Number(after) + 1), ":to": LAST_CURSOR, ":me": name, ":epoch": epoch }) };
    let unread = 0;
    let scanned = 0;
    let startKey: Record<string, unknown> | undefined;
    for await (const page of queryPages(doc, input, () => UNREAD_SCAN - scanned)) {
      unread += page.Count ?? 0;
      scanned += page.ScannedCount ?? 0;
      startKey = page.LastEvaluatedKey;
      if (scanned >= UNREAD_SCAN) break;
    }
    return { unread, more: startKey !== undefined };
  }

  /**
   * Up to `count` events of the current epoch, from `from` on (ascending) or from `from` down
   * (descending), following LastEvaluatedKey past DynamoDB's 1 MB pages; `more` when stored items
   * remain beyond them.
   */
  async function query(room: string, from: string, count: number, keep: (e: StoredEvent) => boolean, ascending: boolean) {
    const items: StoredEvent[] = [];
    const input = {
      TableName: tableName,
      KeyConditionExpression: "#room = :room AND #cursor BETWEEN :from AND :to",
      ExpressionAttributeNames: { "#room": "room", "#cursor": "cursor" },
      ExpressionAttributeValues: { ":room": room, ":from": ascending ? from : FIRST_CURSOR, ":to": ascending ? LAST_CURSOR : from },
      ScanIndexForward: ascending,
      ConsistentRead: true,
    };
    let startKey: Record<string, unknown> | undefined;
    for await (const page of queryPages(doc, input, () => count - items.length)) {
      items.push(...((page.Items ?? []) as StoredEvent[]).filter(keep));
      startKey = page.LastEvaluatedKey;
      if (items.length >= count) break;
    }
    return { items, more: startKey !== undefined };
  }
}

const cursorOrNull = (seq: number) => (seq > 0 ? cursorOf(seq) : null);

/** Attribute names the events' expressions use: each through a placeholder (several are reserved words). */
const ATTRIBUTE_NAMES: Record<string, string> = { "#cursor": "cursor", "#type": "type", "#from": "from", "#name": "name", "#deleted": "deleted", "#edits": "edits", "#message": "message", "#ts": "ts" };

/**
 * The ExpressionAttributeNames and Values that `expressions` use, and only those: DynamoDB refuses
 * a request that declares a placeholder it does not use.
 */
function placeholders(expressions: string[], values: Record<string, unknown>) {
  const text = expressions.join(" ");
  const used = (pattern: RegExp) => [...new Set(text.match(pattern) ?? [])];
  return {
    ExpressionAttributeNames: Object.fromEntries(used(/#\w+/g).map((n) => [n, ATTRIBUTE_NAMES[n]])),
    ExpressionAttributeValues: Object.fromEntries(used(/:\w+/g).map((v) => [v, values[v]])),
  };
}

/** The message store as configured by the program's environment variables. */
export function messageStoreFromEnv(doc: DocumentClient = createDocumentClient(), env: NodeJS.ProcessEnv = process.env): MessageStore {
  return createMessageStore(
    doc,
    requireEnv(ENV.messagesTable, env),
    requireIntEnv(ENV.historyRetentionDays, RANGES.historyRetentionDays.min, RANGES.historyRetentionDays.max, env),
    { holeGraceMs: requireIntEnv(ENV.holeGraceMs, RANGES.holeGraceMs.min, RANGES.holeGraceMs.max, env) },
  );
}
