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
  }
});
