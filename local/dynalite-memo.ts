/**
 * dynalite parses every expression of every request with its PEG parsers, and in a busy room that
 * was the embedded DynamoDB's largest single cost: 19 % of its process's CPU at 50 messages a second
 * (`npm run bench -- --only stages` with LOCAL_DYNAMODB_NODE_OPTIONS=--cpu-prof; the condition
 * parser's backtracking over parentheses alone was 14 %). The hot requests repeat the same
 * expressions with the same names and values: a room head's `ADD`, the message's and its claim's
 * `attribute_not_exists`, one room's member Query. So each parser's `parse` is memoized here, by
 * everything the parse reads: the expression, the attribute names and the attribute values.
 *
 * What a parse does besides its result, and how a cached one repeats it:
 * - it removes each name and value it uses from `context.unusedAttrNames`/`unusedAttrVals` (dynalite
 *   then refuses what is left as unused): the names and values one parse removed are kept with its
 *   result and removed again on a hit;
 * - it throws for a bad expression: the error is kept and thrown again (dynalite reads only its
 *   `name` and `message`);
 * - its result is later changed in place (an UpdateItem's SET resolves `section.val` on the AST),
 *   so every caller gets its own deep copy, and the cached one is never handed out.
 * A result that is not plain data (objects with Object's or a null prototype, arrays, primitives) is
 * not cached.
 * Nothing else of the context is read by the parsers (`isReserved` and `compare` are dynalite's own
 * functions, the same on every call).
 *
 * No dynalite source is changed: its validations call `parser.parse` through the module object,
 * which is what is wrapped.
 */
type Context = {
  attrNames?: Record<string, string>;
  attrVals?: Record<string, unknown>;
  unusedAttrNames?: Record<string, boolean>;
  unusedAttrVals?: Record<string, boolean>;
};
type Parse = (input: string, options: { context: Context }) => unknown;
type Entry = { result?: unknown; error?: unknown; usedNames: string[]; usedVals: string[] };

/** Entries kept per parser; the cache starts over when full (a room's hot expressions come back at once). */
const LIMIT = 10_000;

/** Plain data: primitives, arrays, and objects whose prototype is Object's or null (dynalite's path sets). */
function isPlain(value: unknown): boolean {
  if (value === null || typeof value !== "object") return typeof value !== "function" && typeof value !== "symbol" && typeof value !== "bigint";
  if (Array.isArray(value)) return value.every(isPlain);
  const proto = Object.getPrototypeOf(value) as unknown;
  return (proto === Object.prototype || proto === null) && Object.values(value).every(isPlain);
}

/** A deep copy of plain data that keeps each object's prototype (structuredClone would give a null-prototype set one). */
function copy<T>(value: T): T {
  if (value === null || typeof value !== "object") return value;
  if (Array.isArray(value)) return value.map(copy) as T;
  const out = Object.create(Object.getPrototypeOf(value) as object | null) as Record<string, unknown>;
  for (const [k, v] of Object.entries(value)) out[k] = copy(v);
  return out as T;
}

const removed = (before: string[], after: Record<string, boolean> | undefined) => before.filter((k) => !(after && k in after));

/** Returns `parse`, memoized as described above; `stats` counts hits and misses. */
export function memoizedParse(parse: Parse, stats = { hits: 0, misses: 0 }): Parse {
  const cache = new Map<string, Entry>();
  return (input, options) => {
    const context = options.context;
    const key = JSON.stringify([input, context.attrNames ?? null, context.attrVals ?? null]);
    const cached = cache.get(key);
    if (cached) {
      stats.hits++;
      for (const name of cached.usedNames) delete context.unusedAttrNames?.[name];
      for (const value of cached.usedVals) delete context.unusedAttrVals?.[value];
      if ("error" in cached) throw cached.error;
      return copy(cached.result);
    }
    stats.misses++;
    const names = Object.keys(context.unusedAttrNames ?? {});
    const values = Object.keys(context.unusedAttrVals ?? {});
    let entry: Entry;
    try {
      entry = { result: parse(input, options), usedNames: [], usedVals: [] };
    } catch (error) {
      entry = { error, usedNames: [], usedVals: [] };
    }
    entry.usedNames = removed(names, context.unusedAttrNames);
    entry.usedVals = removed(values, context.unusedAttrVals);
    if ("error" in entry || isPlain(entry.result)) {
      if (cache.size >= LIMIT) cache.clear();
      cache.set(key, "error" in entry ? entry : { ...entry, result: copy(entry.result) });
    }
    if ("error" in entry) throw entry.error;
    return entry.result;
  };
}

const PARSERS = ["dynalite/db/conditionParser", "dynalite/db/updateParser", "dynalite/db/projectionParser"];

/** Wraps each of dynalite's expression parsers (once per process). */
export function memoizeDynaliteParsers(): void {
  for (const id of PARSERS) {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const parser = require(id) as { parse: Parse; memoizedByLocalStack?: boolean };
    if (parser.memoizedByLocalStack) continue;
    parser.parse = memoizedParse(parser.parse);
    parser.memoizedByLocalStack = true;
  }
}

memoizeDynaliteParsers();
