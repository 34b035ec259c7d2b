/**
 * Lambda's event filtering (an event source mapping's `filterCriteria`), the part of its pattern
 * syntax the local stack implements: exact values and `exists`. Any other form (prefix, suffix,
 * anything-but, numeric, equals-ignore-case, wildcard, cidr, `$or`) is refused when the stack
 * starts, by name, rather than judged wrongly.
 *
 * The rules, from "Control which events Lambda sends to your function"
 * (https://docs.aws.amazon.com/lambda/latest/dg/invocation-eventfiltering.html) and "Using event
 * filtering with a DynamoDB event source" (…/with-ddb-filtering.html):
 * - a record is sent when it matches at least one of the filters (they are ORed); otherwise it is
 *   discarded, never retried;
 * - a pattern is an object shaped like the record: every field it names must match (AND); a
 *   field's array of values matches when the record's value is any of them (OR);
 * - `{"exists": true}` matches a field that is present and a leaf (a string, number, boolean or
 *   null, never an object): so a DynamoDB attribute is tested at its type, `{"S": [{"exists": true}]}`;
 *   `{"exists": false}` matches a field that is absent, its parents included.
 *
 * Why not a library: the reference implementation, aws/event-ruler, is Java, and no kept
 * JavaScript port of it was found among the npm packages; the subset here is short.
 */

type Leaf = string | number | boolean | null;
type Matcher = { kind: "value"; value: Leaf } | { kind: "exists"; exists: boolean };
export type Pattern = { [field: string]: Pattern | Matcher[] };

const isObject = (v: unknown): v is Record<string, unknown> => typeof v === "object" && v !== null && !Array.isArray(v);

/** One element of a field's array: a value, or `{exists: boolean}`; anything else is refused, by name. */
function matcherOf(element: unknown, path: string, where: string): Matcher {
  if (!isObject(element)) {
    if (Array.isArray(element)) throw new Error(`${where}: ${path} holds an array inside an array, which a filter pattern does not allow`);
    return { kind: "value", value: element as Leaf };
  }
  const [operator, ...others] = Object.keys(element);
  if (operator === "exists" && others.length === 0 && typeof element.exists === "boolean") return { kind: "exists", exists: element.exists };
  throw new Error(
    `${where}: ${path} uses ${JSON.stringify(element)}; the local stack implements exact values and {"exists": true|false} only, not ${JSON.stringify(operator ?? "{}")}`,
  );
}

function compile(node: unknown, path: string, where: string): Pattern {
  if (!isObject(node) || Object.keys(node).length === 0) throw new Error(`${where}: ${path || "the pattern"} must be a non-empty JSON object`);
  const pattern: Pattern = {};
  for (const [field, value] of Object.entries(node)) {
    const at = path ? `${path}.${field}` : field;
    if (field.startsWith("$")) throw new Error(`${where}: ${at}: the local stack does not implement ${field}`);
    if (Array.isArray(value)) {
      if (value.length === 0) throw new Error(`${where}: ${at} is an empty array, which matches nothing`);
      pattern[field] = value.map((element) => matcherOf(element, at, where));
    } else if (isObject(value)) {
      pattern[field] = compile(value, at, where);
    } else {
      throw new Error(`${where}: ${at} must be an array of values or an object, got ${JSON.stringify(value)}`);
    }
  }
  return pattern;
}

/** Parses one filter's `pattern` (a JSON string); throws, naming `where`, on a form not implemented. */
export function compilePattern(json: string, where: string): Pattern {
  let parsed: unknown;
  try {
    parsed = JSON.parse(json);
  } catch (err) {
    throw new Error(`${where}: the filter pattern is not JSON: ${(err as Error).message}`);
  }
  return compile(parsed, "", where);
}

const isLeaf = (v: unknown) => v === null || ["string", "number", "boolean"].includes(typeof v);

function matchesField(matchers: Matcher[], value: unknown): boolean {
  // An array in the record matches when any of its elements does, as in EventBridge patterns.
  const values = Array.isArray(value) ? value : [value];
  return matchers.some((m) => (m.kind === "exists" ? m.exists === (value !== undefined && isLeaf(value)) : values.some((v) => v === m.value)));
}

/** Whether `record` matches `pattern`. */
export function matchesPattern(pattern: Pattern, record: unknown): boolean {
  const fields = isObject(record) ? record : {};
  return Object.entries(pattern).every(([field, rule]) => (Array.isArray(rule) ? matchesField(rule, fields[field]) : matchesPattern(rule, fields[field])));
}

/** Lambda's rule for a mapping's filters: no filters sends everything; otherwise any filter that matches. */
export function passesFilters(patterns: Pattern[], record: unknown): boolean {
  return patterns.length === 0 || patterns.some((p) => matchesPattern(p, record));
}
