/**
 * The published chat page's CloudFront distribution (infra/site.ts) under Pulumi mocks: chatSite
 * is called on its own (setMocks first, then the module is loaded), and its resources are
 * checked as registered.
 */
import assert from "node:assert/strict";
import * as pulumi from "@pulumi/pulumi";
import { contentSecurityPolicy } from "../../infra/page-headers";

const STACK_URL = "wss://a1b2c3d4e5.execute-api.eu-west-1.amazonaws.com/prod";

interface Registered {
  type: string;
  name: string;
  id: string;
  inputs: Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any -- resource inputs are untyped JSON
}

describe("the chat page's distribution under mocks", () => {
  const registered: Registered[] = [];
  let webUrl: string;

  before(async () => {
    await pulumi.runtime.setMocks(
      {
        newResource({ type, name, inputs }) {
          const id = `${name}-${type.split(":").pop()}-id`;
          registered.push({ type, name, id, inputs });
          const extra = type === "aws:cloudfront/distribution:Distribution" ? { arn: `arn:aws:cloudfront::123456789012:distribution/${id}`, domainName: "d111111abcdef8.cloudfront.net" } : {};
          return { id, state: { ...inputs, ...extra } };
        },
        call: ({ inputs }) => inputs,
      },
      "ws-chat",
      "prod",
      false,
    );
    const { chatSite } = require("../../infra/site") as typeof import("../../infra/site"); // after setMocks
    webUrl = await new Promise<string>((resolve) => chatSite("web", { url: pulumi.output(STACK_URL), authEnabled: true, maxMessageBytes: 32_768 }).apply(resolve));
  });

  const one = (type: string) => {
    const found = registered.filter((r) => r.type === type);
    assert.equal(found.length, 1, `exactly one ${type}`);
    return found[0];
  };
  const policy = () => one("aws:cloudfront/responseHeadersPolicy:ResponseHeadersPolicy");
  const headers = () => policy().inputs.securityHeadersConfig;

  it("must not serve the page without its security headers: the default cache behaviour uses the policy", () => {
    assert.equal(webUrl, "https://d111111abcdef8.cloudfront.net/");
    const cdn = one("aws:cloudfront/distribution:Distribution");
    assert.equal(cdn.inputs.defaultCacheBehavior.responseHeadersPolicyId, policy().id);
    assert.deepEqual(cdn.inputs.orderedCacheBehaviors ?? [], [], "no other behaviour serves the page without it");
  });

  it("must not let the page connect anywhere but the stack's url (CSP connect-src, overriding the origin)", () => {
    const csp = headers().contentSecurityPolicy;
    assert.equal(csp.override, true);
    assert.equal(csp.contentSecurityPolicy, contentSecurityPolicy(STACK_URL));
    const connectSrc = (csp.contentSecurityPolicy as string).split(";").map((d) => d.trim()).filter((d) => d.startsWith("connect-src"));
    assert.deepEqual(connectSrc, [`connect-src 'self' ${STACK_URL}`]);
    assert.ok((csp.contentSecurityPolicy as string).length <= 1783, "within CloudFront's quota");
  });

  it("must not be framed by any site (frame-ancestors 'none' and X-Frame-Options DENY)", () => {
    assert.match(headers().contentSecurityPolicy.contentSecurityPolicy, /(^|; )frame-ancestors 'none'(;|$)/);
    assert.deepEqual(headers().frameOptions, { frameOption: "DENY", override: true });
  });

  it("must not be reachable over plain http once seen: HSTS for two years, subdomains included, not preloaded", () => {
    assert.deepEqual(headers().strictTransportSecurity, { accessControlMaxAgeSec: 63072000, includeSubdomains: true, preload: false, override: true });
  });

  it("must not let a browser sniff a content type, or send the page's address (and a ?token=) in a Referer", () => {
    assert.deepEqual(headers().contentTypeOptions, { override: true });
    assert.deepEqual(headers().referrerPolicy, { referrerPolicy: "no-referrer", override: true });
  });

  it("must not send any other header it was not asked to (no CORS, no custom headers)", () => {
    assert.deepEqual(Object.keys(headers()).sort(), ["contentSecurityPolicy", "contentTypeOptions", "frameOptions", "referrerPolicy", "strictTransportSecurity"]);
    assert.equal(policy().inputs.corsConfig, undefined);
    assert.equal(policy().inputs.customHeadersConfig, undefined);
    assert.ok(policy().inputs.comment.length <= 128, "CloudFront's limit on a policy comment");
  });
});
