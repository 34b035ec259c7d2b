/**
 * DynamoDB Streams, the capturing side: runs in the embedded DynamoDB's process and turns every
 * item-level change to a stream-enabled table into a stream record, as DynamoDB Streams writes it.
 * Delivery to functions (the event source mapping's poller) is local/streams.ts, in the stack's
 * process.
 *
 * Where changes are caught: inside dynalite, where each write is applied. Every single-item write
 * (PutItem, UpdateItem, DeleteItem, and BatchWriteItem's puts and deletes, which call the first
 * and third) ends in dynalite's `db.updateIndexes(store, table, oldItem, newItem)` while it holds
 * the item's lock, right before the item is stored: the one place that sees the item as it was
 * and as it will be, for writes only, after every validation and condition, in the order the
 * writes apply to that item. The hook below wraps that export (no dynalite source is changed; the
 * actions call it through the module object). A condition that failed, a DeleteItem of a missing
 * item, a too-large update never get there; a write that changes nothing (the same item put
 * again, an update that sets what is there) gets there but makes no record (`sameItem`).
 * Why not in the proxy (transactions.ts): the proxy sees requests, not items. An UpdateItem's old
 * image would need a read that is not atomic with the write (plain writes run in parallel), and
 * BatchWriteItem returns no images at all.
 *
 * Transactions and the TTL sweep are the proxy's own sequences of single-item writes (a cancelled
 * transaction writes and then restores; a ConditionCheck rewrites the item as it is), so the
 * proxy runs them in `group`: while a group holds an item (the proxy's item queue guarantees no
 * other write touches it meanwhile) its changes are folded into one, and when the group ends each
 * item that really changed gets one record, the TTL's marked as the service's. A cancelled
 * transaction therefore makes no record, as on AWS.
 *
 * Cost on the hot path (every chat message updates its sender's connection item: a MODIFY of a
 * stream table). A write to a table without a stream pays one property read and one Map lookup.
 * A write to a stream table pays the comparison and the record (a UUID, three sizes); the stack
 * gives the DynamoDB process its mappings' filters (`streamReaders`, dynamodb.ts), so a record no
 * mapping takes ends there and costs no IPC message and no parse in the stack's process.
 * Measured (micro-measurement of this code for the budget's MODIFY of a 9-attribute connection
 * item, 200,000 writes, on a busy 2-core machine): 6 µs of CPU per write filtered out as the stack
 * runs it, 15 µs when every record is serialized for IPC (plus the stack's parse); a dynalite
 * UpdateItem costs about 1,000 µs of that process's CPU, so the filtered capture adds under 1 %.
 * End to end (the DynamoDB process over HTTP, 4,000 budget updates, 10 at a time, median of 5
 * runs alternating stream off / on with the presence filters / on unfiltered): 1,125 / 1,020 /
 * 1,110 µs of the DynamoDB process's CPU per write: within the noise of a machine at load 7.
 *
 * Shapes, from the AWS docs:
 * - Record and StreamRecord: https://docs.aws.amazon.com/amazondynamodb/latest/APIReference/API_streams_Record.html
 *   and …/API_streams_StreamRecord.html (ApproximateCreationDateTime in epoch seconds, rounded down
 *   to the second; SequenceNumber a string of 21 to 40 digits; SizeBytes; StreamViewType);
 *   the Lambda event (eventVersion "1.1", eventSource "aws:dynamodb", awsRegion, eventSourceARN):
 *   https://docs.aws.amazon.com/lambda/latest/dg/with-ddb.html (example event).
 * - SizeBytes is the DynamoDB size of Keys plus the images the record carries: the AWS example's
 *   MODIFY of {id:"1", key:"value"} to {id:"1", key:"updated"} is 3 + 13 + 11 = 27 bytes.
 * - TTL deletions: `userIdentity: {type: "Service", principalId: "dynamodb.amazonaws.com"}`
 *   (API_streams_Record.html, userIdentity; developer guide, "DynamoDB Streams and Time to Live").
 * - Order: "for each item that is modified … the stream records appear in the same sequence as the
 *   actual modifications" (https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/Streams.html).
 * - (?) No record for a write that changes no data: as DynamoDB Streams behaves for PutItem and
 *   UpdateItem; the exact wording in the docs was not found here.
 * - (?) SequenceNumber: one counter per stream, 21 digits; AWS's are longer and not contiguous.
 */
import type { AttributeValue } from "@aws-sdk/client-dynamodb";
import { randomUUID } from "crypto";
import { patchDynalite } from "./dynalite-patch";

export type Item = Record<string, AttributeValue>;
export type StreamViewType = "KEYS_ONLY" | "NEW_IMAGE" | "OLD_IMAGE" | "NEW_AND_OLD_IMAGES";
export const STREAM_VIEW_TYPES: readonly StreamViewType[] = ["KEYS_ONLY", "NEW_IMAGE", "OLD_IMAGE", "NEW_AND_OLD_IMAGES"];

/** A table's stream, as the program declared it. */
export interface TableStream {
  arn: string;
  viewType: StreamViewType;
}

/** Who made a change, when it was not a caller of the API: DynamoDB's TTL. */
export const TTL_IDENTITY = { type: "Service", principalId: "dynamodb.amazonaws.com" } as const;
export type StreamIdentity = typeof TTL_IDENTITY;

/** One stream record, in the shape Lambda hands to a function. */
export interface StreamRecord {
  eventID: string;
  eventName: "INSERT" | "MODIFY" | "REMOVE";
  eventVersion: "1.1";
  eventSource: "aws:dynamodb";
  awsRegion: string;
  eventSourceARN: string;
  dynamodb: {
    ApproximateCreationDateTime: number;
    Keys: Item;
    NewImage?: Item;
    OldImage?: Item;
    SequenceNumber: string;
    SizeBytes: number;
    StreamViewType: StreamViewType;
  };
  userIdentity?: StreamIdentity;
}

/** What the capture needs to know of a stream-enabled table. */
export interface CapturedTable {
  name: string;
  keyNames: string[];
  stream: TableStream;
}

// --- Comparing items ----------------------------------------------------------------------------

type Value = AttributeValue & Record<string, unknown>;

function sameSet(a: unknown[], b: unknown[]): boolean {
  return a.length === b.length && a.every((v) => b.includes(v));
}

/** Equal attribute values, as DynamoDB sees them: maps by name, sets in any order, lists in order. */
function sameValue(a: Value, b: Value): boolean {
  const [type] = Object.keys(a);
  if (!(type in b)) return false;
  const [x, y] = [a[type], b[type]];
  switch (type) {
    case "SS":
    case "NS":
    case "BS":
      return sameSet(x as unknown[], y as unknown[]);
    case "L":
      return (x as Value[]).length === (y as Value[]).length && (x as Value[]).every((v, i) => sameValue(v, (y as Value[])[i]));
    case "M":
      return sameItem(x as Item, y as Item);
    default:
      return x === y;
  }
}

/** The same item (both absent counts as the same): a write from one to the other changed no data. */
export function sameItem(a: Item | undefined, b: Item | undefined): boolean {
  if (!a || !b) return a === b;
  const names = Object.keys(a);
  if (names.length !== Object.keys(b).length) return false;
  return names.every((n) => n in b && sameValue(a[n] as Value, b[n] as Value));
}

// --- Building records ---------------------------------------------------------------------------

/** dynalite's size of an item (local/dynalite-patch.ts makes it count UTF-8 bytes, as DynamoDB does). */
type ItemSize = (item: Item) => number;

/** One change to one item as a record of `table`'s stream; undefined when nothing changed. */
export function streamRecord(table: CapturedTable, region: string, sequence: string, size: ItemSize, before?: Item, after?: Item, identity?: StreamIdentity): StreamRecord | undefined {
  if (sameItem(before, after)) return undefined;
  const item = (after ?? before)!;
  const Keys = Object.fromEntries(table.keyNames.map((k) => [k, item[k]]));
  const view = table.stream.viewType;
  const NewImage = after && (view === "NEW_IMAGE" || view === "NEW_AND_OLD_IMAGES") ? after : undefined;
  const OldImage = before && (view === "OLD_IMAGE" || view === "NEW_AND_OLD_IMAGES") ? before : undefined;
  return {
    eventID: randomUUID().replace(/-/g, ""),
    eventName: !before ? "INSERT" : !after ? "REMOVE" : "MODIFY",
    eventVersion: "1.1",
    eventSource: "aws:dynamodb",
    awsRegion: region,
    eventSourceARN: table.stream.arn,
    dynamodb: {
      ApproximateCreationDateTime: Math.floor(Date.now() / 1000),
      Keys,
      ...(NewImage ? { NewImage } : {}),
      ...(OldImage ? { OldImage } : {}),
      SequenceNumber: sequence,
      SizeBytes: size(Keys) + (NewImage ? size(NewImage) : 0) + (OldImage ? size(OldImage) : 0),
      StreamViewType: view,
    },
    ...(identity ? { userIdentity: identity } : {}),
  };
}

// --- The capture --------------------------------------------------------------------------------

/** An item held by a group: its image before the group's first write, and after its last. */
interface Held {
  table: CapturedTable;
  touched: boolean;
  before?: Item;
  after?: Item;
  identity?: StreamIdentity;
}

export interface StreamCapture {
  /** Whether changes to this table are captured (its stream is enabled). */
  captures(tableName: string): boolean;
  /** One applied change (dynalite's hook): recorded now, or folded into the group holding the item. */
  changed(tableName: string, before: Item | undefined, after: Item | undefined): void;
  /**
   * Runs `work` (a transaction, a TTL deletion) with these items held: each item's changes make
   * at most one record, emitted when `work` settles. The caller guarantees that nothing else
   * writes these items meanwhile (transactions.ts queues them exclusively).
   */
  group<T>(targets: { table: string; key: Item }[], identity: StreamIdentity | undefined, work: () => Promise<T>): Promise<T>;
}

/**
 * Captures the changes to `tables`, and hands the records that `accept` takes to `emit` in
 * batches: every record made in one turn of the event loop goes in one call, so a busy table
 * costs one message per turn.
 */
export function createStreamCapture(tables: CapturedTable[], region: string, emit: (records: StreamRecord[]) => void, accept: (record: StreamRecord) => boolean = () => true): StreamCapture {
  const byName = new Map(tables.map((t) => [t.name, t]));
  const sequences = new Map<string, number>();
  const held = new Map<string, Held>();
  const size = dynaliteDb().itemSize;
  let pending: StreamRecord[] = [];
  const flush = () => {
    const records = pending;
    pending = [];
    emit(records);
  };
  const idOf = (table: CapturedTable, item: Item) => `${table.name}\u0000${JSON.stringify(table.keyNames.map((k) => item[k]))}`;
  const record = (table: CapturedTable, before?: Item, after?: Item, identity?: StreamIdentity) => {
    const n = (sequences.get(table.name) ?? 0) + 1;
    const made = streamRecord(table, region, `1${String(n).padStart(20, "0")}`, size, before, after, identity);
    if (!made) return;
    sequences.set(table.name, n);
    if (!accept(made)) return;
    if (pending.length === 0) setImmediate(flush);
    pending.push(made);
  };
  return {
    captures: (name) => byName.has(name),
    changed(name, before, after) {
      const table = byName.get(name);
      if (!table) return;
      const hold = held.size > 0 ? held.get(idOf(table, (after ?? before)!)) : undefined;
      if (!hold) return record(table, before, after);
      if (!hold.touched) Object.assign(hold, { touched: true, before });
      hold.after = after;
    },
    async group(targets, identity, work) {
      const mine: [string, Held][] = [];
      for (const { table: name, key } of targets) {
        const table = byName.get(name);
        if (!table) continue;
        const id = idOf(table, key);
        const hold: Held = { table, touched: false, identity };
        held.set(id, hold);
        mine.push([id, hold]);
      }
      try {
        return await work();
      } finally {
        for (const [id, hold] of mine) {
          held.delete(id);
          if (hold.touched) record(hold.table, hold.before, hold.after, hold.identity);
        }
      }
    },
  };
}

// --- The hook in dynalite -----------------------------------------------------------------------

type Callback = (err?: Error | null) => void;
interface DynaliteStore {
  options: { localStreams?: StreamCapture };
}
interface DynaliteDb {
  updateIndexes(store: DynaliteStore, table: { TableName: string }, before: Item | null | undefined, after: Item | null | undefined, cb: Callback): void;
  itemSize: ItemSize;
  localStreamsHooked?: boolean;
}

/** dynalite's db module, with local/dynalite-patch.ts's fixes. */
function dynaliteDb(): DynaliteDb {
  patchDynalite();
  return require("dynalite/db/index.js") as DynaliteDb;
}

/**
 * Wraps dynalite's `updateIndexes` so that a dynalite started with `{localStreams: capture}` in
 * its options reports each change to a captured table once its indexes are updated (the item is
 * stored right after, under the same lock). Other tables and other dynalites pay one property
 * read and one Map lookup per write.
 */
export function hookDynalite(): void {
  const db = dynaliteDb();
  if (db.localStreamsHooked) return;
  const original = db.updateIndexes;
  db.updateIndexes = (store, table, before, after, cb) => {
    const capture = store.options.localStreams;
    if (!capture?.captures(table.TableName)) return original(store, table, before, after, cb);
    original(store, table, before, after, (err) => {
      if (!err) capture.changed(table.TableName, before ?? undefined, after ?? undefined);
      cb(err);
    });
  };
  db.localStreamsHooked = true;
}
