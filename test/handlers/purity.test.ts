import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as path from "node:path";

const HANDLERS = path.resolve(__dirname, "../../handlers");
const files = (dir: string): string[] =>
  fs.readdirSync(dir, { withFileTypes: true }).flatMap((e) => (e.isDirectory() ? files(path.join(dir, e.name)) : [path.join(dir, e.name)]));

describe("handlers/ (code that Pulumi serializes into Lambdas)", () => {
  for (const file of files(HANDLERS)) {
    const name = path.relative(HANDLERS, file);
    const code = fs.readFileSync(file, "utf8");
    const absent = (pattern: RegExp) => assert.equal(pattern.exec(code)?.[0], undefined, `${name} contains ${pattern}`);
    it(`${name} must not import @pulumi/* or the local stack, nor know where it runs`, () => {
      absent(/from "@pulumi\//);
      absent(/from "\.\.\/(\.\.\/)?local\//);
      absent(/127\.0\.0\.1|localhost|isLocal|LOCAL_/i);
      // The SDKs' standard endpoint variables are read in one place only, as every SDK reads them.
      if (name !== "shared/aws-http.ts") absent(/AWS_ENDPOINT_URL/);
    });
    it(`${name} must use top-level imports only (dynamic imports serialize by value and break)`, () => {
      absent(/await import\(|\brequire\(/);
    });
    it(`${name} must not name a module-level function or constant after a JavaScript global (the serializer calls the global instead)`, () => {
      // Found by the local stack's signature check: a function named `escape` was serialized as a
      // call to the global escape(), and every signed @connections request would have been refused.
      const declared = [...code.matchAll(/^(?:export )?(?:async )?(?:function\*? |const |let |class )([A-Za-z_$][\w$]*)/gm)].map((m) => m[1]);
      assert.deepEqual(declared.filter((id) => id in globalThis), [], `${name} shadows globals`);
    });
    it(`${name} must not hold a Set or Map at module level (the serializer captures it as a plain object)`, () => {
      // Found by the local stack: a module-level Set reached sendmessage as {}, and .has() threw.
      absent(/^(?:export )?(?:const|let) [\w$]+(?::[^=]+)? = new (?:Set|Map|WeakSet|WeakMap)\b/m);
    });
  }
});
