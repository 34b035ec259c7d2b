/**
 * A fix for dynalite 4.0.0, applied in memory when the local stack loads it (node_modules is not
 * touched). dynalite keys a global secondary index entry by the index key plus only 6 hex digits
 * (24 bits) of an md5 of the item's table key (its own TODO says so). Two items with the same
 * index key whose digests share those 6 digits get the same entry, and one silently disappears
 * from the index: in one room of 19,000 members, 7 were missing from the room's Query, so they
 * never received a message. The patched key appends the item's full table key, which is unique.
 * Index entries written by an unpatched dynalite into a --data-dir are keyed differently: delete
 * such a directory once.
 */
import * as fs from "fs";
import Module = require("module");
import * as path from "path";

const NEEDLE = "return createKey(item, table, keySchema) + hashPrefix.apply(this, tableKeyPieces)";
const PATCHED = "return createKey(item, table, keySchema) + uniqueIndexSuffix.apply(this, tableKeyPieces)";
const SUFFIX = `
function uniqueIndexSuffix (hashKey, hashType, rangeKey, rangeType) {
  return hashPrefix(hashKey, hashType, rangeKey, rangeType) + '/' + toLexiStr(hashKey, hashType) + '/' + toLexiStr(rangeKey, rangeType)
}
`;

type CompilableModule = Module & { _compile(code: string, filename: string): void; paths: string[]; loaded: boolean };

/** Loads dynalite's db module with unique index keys into the require cache (once). */
export function patchDynalite(): void {
  const file = require.resolve("dynalite/db/index.js");
  if (require.cache[file]) {
    if ((require.cache[file] as Module & { patchedIndexKeys?: boolean }).patchedIndexKeys) return;
    throw new Error("dynalite's db module was loaded before local/dynalite-patch.ts could fix its index keys");
  }
  const source = fs.readFileSync(file, "utf8");
  if (!source.includes(NEEDLE)) throw new Error(`dynalite's ${file} changed: review the index-key fix in local/dynalite-patch.ts`);
  const mod = new Module(file, module) as CompilableModule;
  mod.filename = file;
  mod.paths = (Module as unknown as { _nodeModulePaths(dir: string): string[] })._nodeModulePaths(path.dirname(file));
  mod._compile(source.replace(NEEDLE, PATCHED) + SUFFIX, file);
  mod.loaded = true;
  (mod as Module & { patchedIndexKeys?: boolean }).patchedIndexKeys = true;
  require.cache[file] = mod;
}

patchDynalite();
