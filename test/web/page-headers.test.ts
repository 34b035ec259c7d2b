/**
 * The page's security headers (infra/page-headers.ts), as CloudFront and the local stack send
 * them: the Content-Security-Policy names exactly the stack's WebSocket url, and nothing a url
 * holds can widen it.
 */
import assert from "node:assert/strict";
import { contentSecurityPolicy, CSP_MAX_LENGTH, pageSecurityHeaders } from "../../infra/page-headers";

const STACK_URL = "wss://a1b2c3d4e5.execute-api.eu-west-1.amazonaws.com/prod";

/** directive → its source list. */
function directives(policy: string): Map<string, string[]> {
  const map = new Map<string, string[]>();
  for (const part of policy.split(";")) {
    const [name, ...sources] = part.trim().split(/\s+/);
    assert.ok(!map.has(name), `${name} appears once`);
    map.set(name, sources);
  }
  return map;
}

describe("the page's Content-Security-Policy", () => {
  it("must not let the page connect anywhere but its own origin and the stack's url", () => {
    assert.deepEqual(directives(contentSecurityPolicy(STACK_URL)).get("connect-src"), ["'self'", STACK_URL]);
    assert.deepEqual(directives(contentSecurityPolicy("ws://127.0.0.1:8080/dev")).get("connect-src"), ["'self'", "ws://127.0.0.1:8080/dev"]);
  });

  it("must not allow inline or evaluated script, other origins' scripts or styles, plugins, <base>, form posts or framing", () => {
    const d = directives(contentSecurityPolicy(STACK_URL));
    assert.deepEqual(d.get("default-src"), ["'none'"]); // objects, frames, fonts, media, workers
    assert.deepEqual(d.get("script-src"), ["'self'"]);
    assert.deepEqual(d.get("style-src"), ["'self'"]);
    assert.deepEqual(d.get("img-src"), ["'self'"]);
    assert.deepEqual(d.get("base-uri"), ["'none'"]);
    assert.deepEqual(d.get("form-action"), ["'none'"]);
    assert.deepEqual(d.get("frame-ancestors"), ["'none'"]);
    assert.doesNotMatch(contentSecurityPolicy(STACK_URL), /unsafe-|\*|data:|https?:/);
  });

  it("must not accept a url that is not a plain ws:// or wss:// URL", () => {
    for (const url of [
      "https://a1b2c3d4e5.execute-api.eu-west-1.amazonaws.com/prod",
      "http://127.0.0.1:8080/dev",
      "javascript:alert(1)",
      "wss://*.amazonaws.com",
      "wss://user:secret@example.com/prod",
      "wss://example.com/prod?token=x",
      "wss://example.com/prod#x",
      "",
      undefined as unknown as string,
    ]) {
      assert.throws(() => contentSecurityPolicy(url), /can only name a plain ws:\/\/ or wss:\/\/ URL/, String(url));
    }
  });

  it("must not let a url add a source or a directive (no ';', ',', quote or whitespace gets through)", () => {
    for (const url of [
      "wss://example.com/prod; script-src *",
      "wss://example.com/prod;script-src",
      "wss://example.com/prod,wss://evil.example",
      "wss://example.com/prod wss://evil.example",
      "wss://example.com/prod\twss://evil.example",
      "wss://example.com/prod\nwss://evil.example",
      "wss://example.com/'unsafe-inline'",
      "wss://example.com/prod 'unsafe-eval'",
    ]) {
      assert.throws(() => contentSecurityPolicy(url), /can only name a plain ws:\/\/ or wss:\/\/ URL/, JSON.stringify(url));
    }
  });

  it("must not exceed CloudFront's 1,783-character quota on the policy", () => {
    assert.ok(contentSecurityPolicy(STACK_URL).length < CSP_MAX_LENGTH);
    assert.throws(() => contentSecurityPolicy(`wss://example.com/${"a".repeat(CSP_MAX_LENGTH)}`), /over CloudFront's 1783/);
  });
});

describe("the page's security headers", () => {
  it("must not be framed, sniffed or leak its address in a Referer, on http or https", () => {
    for (const https of [false, true]) {
      const h = pageSecurityHeaders(STACK_URL, { https });
      assert.equal(h["Content-Security-Policy"], contentSecurityPolicy(STACK_URL));
      assert.equal(h["X-Frame-Options"], "DENY");
      assert.equal(h["X-Content-Type-Options"], "nosniff");
      assert.equal(h["Referrer-Policy"], "no-referrer");
    }
  });

  it("must not send Strict-Transport-Security over plain http (browsers ignore it there), and sends it for two years over https", () => {
    assert.equal(pageSecurityHeaders("ws://127.0.0.1:8080/dev", { https: false })["Strict-Transport-Security"], undefined);
    assert.equal(pageSecurityHeaders(STACK_URL, { https: true })["Strict-Transport-Security"], "max-age=63072000; includeSubDomains");
  });
});
