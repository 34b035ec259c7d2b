/**
 * Fixes for dynalite 4.0.0, applied in memory when the local stack loads it (node_modules is not
 * touched): dynalite's db module is compiled from its own source with the lines below replaced,
 * and put in the require cache before dynalite asks for it. Each replaced line must occur exactly
 * once, or loading fails, so that a changed dynalite is reviewed rather than silently unpatched.
 *
 * 1. Unique index keys. dynalite keys a global secondary index entry by the index key plus only 6
 *    hex digits (24 bits) of an md5 of the item's table key (its own TODO says so). Two items with
 *    the same index key whose digests share those 6 digits get the same entry, and one silently
 *    disappears from the index: in one room of 19,000 members, 7 were missing from the room's
 *    Query, so they never received a message. The patched key appends the item's full table key,
 *    which is unique. Index entries written by an unpatched dynalite into a --data-dir are keyed
 *    differently: delete such a directory once.
 *
 * 2. Sizes in UTF-8 bytes. DynamoDB sizes a string, and every attribute name, by its UTF-8 bytes
 *    ("The size of a string is (number of UTF-8-encoded bytes of attribute name) + (number of
 *    UTF-8-encoded bytes)": https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/CapacityUnitCalculations.html),
 *    and key length limits are in bytes too (partition key 2048, sort key 1024:
 *    https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/ServiceQuotas.html#limits-partition-sort-keys).
 *    dynalite used JavaScript's `.length`, UTF-16 units, so a message in Korean (3 bytes a
 *    character) counted a third of its size: Query/Scan pages (1 MB), the item limit (400 KB),
 *    key limits and consumed capacity all let through up to three times what AWS does. Numbers,
 *    binary, lists and maps were already sized as DynamoDB documents them.
 *    Why the source and not a wrapper around dynalite's exported `itemSize`: the export is only
 *    what actions and validations call (the 400 KB checks); the 1 MB page cut and the consumed
 *    capacity in the same module (queryTable, capacityUnits) and valSize's own recursion call the
 *    module's local functions, which no replacement of the export reaches. So the two
 *    `.length`s that count UTF-16 units (a string value, an attribute name) and the key-size
 *    check are replaced where they are, which fixes every caller at once.
 */
import * as fs from "fs";
import Module = require("module");
import * as path from "path";

const FIXES: { why: string; needle: string; patched: string }[] = [
  {
    why: "unique index keys",
    needle: "return createKey(item, table, keySchema) + hashPrefix.apply(this, tableKeyPieces)",
    patched: "return createKey(item, table, keySchema) + uniqueIndexSuffix.apply(this, tableKeyPieces)",
  },
  {
    why: "string values in UTF-8 bytes (valSize)",
    needle: "case 'S':\n    return val.length\n",
    patched: "case 'S':\n    return Buffer.byteLength(val, 'utf8')\n",
  },
  {
    why: "attribute names in UTF-8 bytes (itemSize)",
    needle: "return sum + size + (compress ? 1 : attr.length)",
    patched: "return sum + size + (compress ? 1 : Buffer.byteLength(attr, 'utf8'))",
  },
  {
    why: "string keys in UTF-8 bytes (checkKeySize)",
    needle: "if (type == 'B') keyPiece = Buffer.from(keyPiece, 'base64')",
    patched: "keyPiece = Buffer.from(keyPiece, type == 'B' ? 'base64' : 'utf8')",
  },
];
const SUFFIX = `
function uniqueIndexSuffix (hashKey, hashType, rangeKey, rangeType) {
  return hashPrefix(hashKey, hashType, rangeKey, rangeType) + '/' + toLexiStr(hashKey, hashType) + '/' + toLexiStr(rangeKey, rangeType)
}
`;

type CompilableModule = Module & { _compile(code: string, filename: string): void; paths: string[]; loaded: boolean };
type PatchedModule = Module & { patchedByLocalStack?: boolean };

/** Loads dynalite's db module, with the fixes above, into the require cache (once). */
export function patchDynalite(): void {
  const file = require.resolve("dynalite/db/index.js");
  if (require.cache[file]) {
    if ((require.cache[file] as PatchedModule).patchedByLocalStack) return;
    throw new Error("dynalite's db module was loaded before local/dynalite-patch.ts could fix it");
  }
  let source = fs.readFileSync(file, "utf8");
  for (const fix of FIXES) {
    if (source.split(fix.needle).length !== 2) throw new Error(`dynalite's ${file} changed: review the fix for ${fix.why} in local/dynalite-patch.ts`);
    source = source.replace(fix.needle, fix.patched);
  }
  const mod = new Module(file, module) as CompilableModule;
  mod.filename = file;
  mod.paths = (Module as unknown as { _nodeModulePaths(dir: string): string[] })._nodeModulePaths(path.dirname(file));
  mod._compile(source + SUFFIX, file);
  mod.loaded = true;
  (mod as PatchedModule).patchedByLocalStack = true;
  require.cache[file] = mod;
}

patchDynalite();
