import { GetCommand, PutCommand, UpdateCommand } from "@aws-sdk/lib-dynamodb";
import assert from "node:assert/strict";
import { memoizedParse } from "../../local/dynalite-memo";
import { LocalDynamoDB, startDynamoDB, tableSpec } from "../../local/dynamodb";
import { loadProgram } from "../../local/program";

type Parse = Parameters<typeof memoizedParse>[0];
type Context = Parameters<Parse>[1]["context"];
// The parsers as dynalite ships them (the local stack's import wraps them; these are the originals
// only where this file loads first, so the tests below compare a fresh memo against each other too).
// eslint-disable-next-line @typescript-eslint/no-require-imports
const conditionParser = require("dynalite/db/conditionParser") as { parse: Parse };
// eslint-disable-next-line @typescript-eslint/no-require-imports
const compare = (require("dynalite/db") as { compare: unknown }).compare;

function contextOf(names: Record<string, string>, values: Record<string, unknown>): Context {
  const unused = (o: object) => Object.fromEntries(Object.keys(o).map((k) => [k, true]));
  return { attrNames: names, attrVals: values, unusedAttrNames: unused(names), unusedAttrVals: unused(values), isReserved: () => false, compare } as Context;
}

/** What dynalite sees of one parse: the result (or error message), and the names and values left unused. */
function outcome(parse: Parse, expression: string, names: Record<string, string>, values: Record<string, unknown>) {
  const context = contextOf(names, values);
  let result: unknown;
  try {
    result = parse(expression, { context });
  } catch (err) {
    result = `error: ${(err as Error).message}`;
  }
  return { result, unusedNames: Object.keys(context.unusedAttrNames ?? {}), unusedValues: Object.keys(context.unusedAttrVals ?? {}) };
}

describe("local DynamoDB: dynalite's expression parsers, memoized", () => {
  const cases: [string, Record<string, string>, Record<string, unknown>][] = [
    ["attribute_not_exists(#k) AND (#a = :a OR size(#b) < :n)", { "#k": "k", "#a": "a", "#b": "b", "#spare": "s" }, { ":a": { S: "x" }, ":n": { N: "3" }, ":spare": { S: "y" } }],
    ["#a BETWEEN :hi AND :lo", { "#a": "a" }, { ":hi": { N: "5" }, ":lo": { N: "1" } }],
    ["#a = :undefined", { "#a": "a" }, { ":a": { S: "x" } }],
    ["#a = = :a", { "#a": "a" }, { ":a": { S: "x" } }],
  ];

  it("answers a repeated expression as the parser does: the same result or error, and the same names and values left unused", () => {
    const memo = memoizedParse(conditionParser.parse);
    for (const [expression, names, values] of cases) {
      const direct = outcome(conditionParser.parse, expression, names, values);
      assert.deepEqual(outcome(memo, expression, names, values), direct, `first: ${expression}`);
      assert.deepEqual(outcome(memo, expression, names, values), direct, `repeated: ${expression}`);
    }
  });

  it("parses again when a value differs, since values decide errors (BETWEEN's bounds)", () => {
    const stats = { hits: 0, misses: 0 };
    const memo = memoizedParse(conditionParser.parse, stats);
    const bad = outcome(memo, "#a BETWEEN :lo AND :hi", { "#a": "a" }, { ":lo": { N: "5" }, ":hi": { N: "1" } });
    const good = outcome(memo, "#a BETWEEN :lo AND :hi", { "#a": "a" }, { ":lo": { N: "1" }, ":hi": { N: "5" } });
    assert.match(String(bad.result), /BETWEEN operator requires upper bound/);
    assert.equal(typeof good.result, "object");
    assert.deepEqual(stats, { hits: 0, misses: 2 });
  });

  it("must not share a result between callers: each gets its own copy, with dynalite's null-prototype sets kept", () => {
    const memo = memoizedParse(conditionParser.parse);
    const parse = () => memo("#a = :a", { context: contextOf({ "#a": "a" }, { ":a": { S: "x" } }) }) as { expression: { args: unknown[] }; pathHeads: object };
    for (let i = 0; i < 2; i++) parse().expression.args.push("changed by its caller"); // a miss, then a hit
    const third = parse();
    assert.equal(third.expression.args.length, 2);
    assert.equal(Object.getPrototypeOf(third.pathHeads), null);
  });

  describe("through the local DynamoDB", () => {
    let db: LocalDynamoDB;
    let table: ReturnType<typeof tableSpec>;
    before(async () => {
      const program = await loadProgram({ stack: "dev" });
      table = tableSpec(program.resources.find((r) => r.type === "aws:dynamodb/table:Table" && r.name === "connections")!);
      db = await startDynamoDB({ tables: [table], region: "us-east-1", sweepIntervalMs: 60_000 });
    });
    after(() => db?.close());

    it("applies the same update twice from its own expression (dynalite resolves SET's value on the parsed expression in place)", async () => {
      const Key = { connectionId: `memo-${Date.now()}` };
      await db.client.send(new PutCommand({ TableName: table.name, Item: { ...Key, n: 1 } }));
      const add = () => db.client.send(new UpdateCommand({ TableName: table.name, Key, UpdateExpression: "SET n = n + :one", ExpressionAttributeValues: { ":one": 1 } }));
      await add();
      await add();
      await add();
      assert.equal((await db.client.send(new GetCommand({ TableName: table.name, Key }))).Item?.n, 4);
    });

    it("refuses an unused value every time, not only when the expression is first parsed", async () => {
      const Key = { connectionId: `memo-unused-${Date.now()}` };
      const update = () =>
        db.client.send(new UpdateCommand({ TableName: table.name, Key, UpdateExpression: "SET n = :n", ExpressionAttributeValues: { ":n": 1, ":spare": 2 } }));
      for (let i = 0; i < 2; i++) await assert.rejects(update(), /Value provided in ExpressionAttributeValues unused in expressions: keys: \{:spare\}/);
    });
  });
});
