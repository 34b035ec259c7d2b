import { SignatureV4 } from "@smithy/signature-v4";
import assert from "node:assert/strict";
import { createSigner, serviceEndpoint, signRequest } from "../../handlers/shared/aws-http";
import { Sha256 } from "../../local/iam";

const credentials = { accessKeyId: "AKIDEXAMPLE", secretAccessKey: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", sessionToken: "IQoJb3JpZ2luX2VjEXAMPLE//token+=" };
const now = new Date("2026-11-21T10:20:30.456Z");

async function sdkSignature(method: string, url: URL, body: string, service: string, headers: Record<string, string>) {
  const signer = new SignatureV4({ service, region: "eu-west-1", credentials, sha256: Sha256 as never, applyChecksum: false }) // x-amz-content-sha256 is S3's; optional elsewhere;
  const signed = await signer.sign(
    { method, protocol: url.protocol, hostname: url.hostname, port: url.port ? Number(url.port) : undefined, path: url.pathname, query: Object.fromEntries(url.searchParams), headers: { host: url.host, ...headers }, body },
    { signingDate: now },
  );
  return signed.headers.authorization;
}

describe("aws-http: the lean SigV4 signer", () => {
  const cases: [string, string, string, string, Record<string, string>][] = [
    ["a PostToConnection with '=' in the id (double-encoded path)", "POST", "https://a1b2c3d4e5.execute-api.eu-west-1.amazonaws.com/dev/@connections/L0SM9cOFvHcCIhw%3D", "execute-api", {}],
    ["a GetConnection (empty body)", "GET", "https://a1b2c3d4e5.execute-api.eu-west-1.amazonaws.com/prod/@connections/BFaT_fALIAMCKug%3D", "execute-api", {}],
    ["an asynchronous Lambda Invoke", "POST", "https://lambda.eu-west-1.amazonaws.com/2015-03-31/functions/ws-chat-fanout-prod/invocations", "lambda", { "x-amz-invocation-type": "Event", "content-type": "application/json" }],
    ["a request with a query string", "GET", "https://lambda.eu-west-1.amazonaws.com/2015-03-31/functions?Marker=a%2Fb&MaxItems=10", "lambda", {}],
  ];
  for (const [name, method, href, service, headers] of cases) {
    it(`signs ${name} exactly as the SDK's @smithy/signature-v4 does`, async () => {
      const url = new URL(href);
      const body = method === "POST" ? JSON.stringify({ type: "message", message: "héllo ✓ \"quoted\"" }) : "";
      const ours = signRequest({ method, url, headers: { ...headers, "content-length": String(Buffer.byteLength(body)) }, body, service, region: "eu-west-1", credentials, now });
      const theirs = await sdkSignature(method, url, body, service, { ...headers, "content-length": String(Buffer.byteLength(body)) });
      assert.equal(ours.authorization, theirs);
      assert.equal(ours["x-amz-security-token"], credentials.sessionToken);
      assert.equal(ours["x-amz-date"], "20261121T102030Z");
    });
  }

  it("one signer signs as a fresh one does across a second, a day and a step back (its date is kept per second)", () => {
    const sign = createSigner();
    const url = new URL(cases[0][2]);
    const body = "{}";
    const input = (at: string) => ({ method: "POST", url, headers: { "content-length": "2" }, body, service: "execute-api", region: "eu-west-1", credentials, now: new Date(at) });
    for (const at of ["2026-11-21T23:59:59.001Z", "2026-11-21T23:59:59.999Z", "2026-11-22T00:00:00.000Z", "2026-11-22T00:00:00.500Z", "2026-11-21T23:59:59.500Z"]) {
      const ours = sign(input(at));
      assert.deepEqual(ours, signRequest(input(at)), at);
      assert.equal(ours["x-amz-date"], at.replace(/[:-]|\.\d{3}/g, ""), at);
    }
  });

  it("resolves endpoints as the SDKs do: per-service variable, then the global one, then the regional default", () => {
    assert.equal(serviceEndpoint("lambda", "eu-west-1", {}), "https://lambda.eu-west-1.amazonaws.com");
    assert.equal(serviceEndpoint("lambda", "eu-west-1", { AWS_ENDPOINT_URL: "http://127.0.0.1:4566/" }), "http://127.0.0.1:4566");
    assert.equal(serviceEndpoint("lambda", "eu-west-1", { AWS_ENDPOINT_URL: "http://a", AWS_ENDPOINT_URL_LAMBDA: "http://b:1" }), "http://b:1");
  });
});
