/** The @connections API's request paths (local/management.ts). */
import assert from "node:assert/strict";
import { managementConnectionId } from "../../local/management";

/** How every path was read before the plain-path shortcut: parsed as a URL, then decoded. */
function byUrlParsing(stage: string, url: string): string | undefined {
  const encoded = new URL(url, "http://local").pathname;
  let pathname = encoded;
  try {
    pathname = decodeURIComponent(encoded);
  } catch {
    // kept raw
  }
  const prefix = `/${stage}/@connections/`;
  return pathname.startsWith(prefix) ? pathname.slice(prefix.length) : undefined;
}

describe("managementConnectionId", () => {
  const paths = [
    "/dev/@connections/AbCdEfGhIjKlMnO%3D", // as the SDK and the functions send an id
    "/dev/@connections/AbCdEfGhIjKlMnO=",
    "/dev/@connections/a/../b",
    "/dev/@connections/%2e%2E/x",
    "/dev/x/../@connections/id",
    "/dev/@connections/./id",
    "//evil/dev/@connections/id",
    "/dev//@connections/id",
    "/dev/@connections/id?x=1",
    "/dev/@connections/id#f",
    "/dev/@connections/a b",
    "/dev/@connections/%FF",
    "/dev/@connections/%zz",
    "/dev/@connections/a%2Fb",
    "/dev/@connections/a\\b",
    "/dev/@connections/é",
    "/dev/@connections/.hidden",
    "/dev/@connections/",
    "/prod/@connections/x",
    "http://host/dev/@connections/id",
  ];
  for (const path of paths) {
    it(`must read ${JSON.stringify(path)} as URL parsing does`, () => {
      assert.equal(managementConnectionId("dev", path), byUrlParsing("dev", path));
    });
  }

  it("must name the id of a plain path, and nothing for another stage or API", () => {
    assert.equal(managementConnectionId("dev", "/dev/@connections/AbCdEfGhIjKlMnO%3D"), "AbCdEfGhIjKlMnO=");
    assert.equal(managementConnectionId("dev", "/prod/@connections/AbCdEfGhIjKlMnO%3D"), undefined);
    assert.equal(managementConnectionId("dev", "/dev/other/x"), undefined);
  });
});
