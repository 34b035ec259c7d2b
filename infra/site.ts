/**
 * The chat page, published with the stack: a private S3 bucket (public access blocked, ACLs
 * disabled) that only this CloudFront distribution may read, through origin access control.
 * The page finds the stack's WebSocket URL in the config.json published beside it, and every
 * response carries the security headers of infra/page-headers.ts (a response headers policy):
 * a Content-Security-Policy that lets the page connect only to that URL, HSTS, no framing, no
 * Referer.
 */
import * as aws from "@pulumi/aws";
import * as pulumi from "@pulumi/pulumi";
import * as path from "path";
import { contentSecurityPolicy, FRAME_OPTIONS, HSTS_MAX_AGE_SECONDS, PageConfig, REFERRER_POLICY, WEB_DIR, WEB_FILES } from "./page-headers";
/** AWS's managed cache policy "Managed-CachingOptimized"; objects say no-cache, so new deploys show at once. */
const CACHING_OPTIMIZED = "658327ea-f89d-4fab-a63d-7e88639e58f6";

export function chatSite(name: string, config: Omit<PageConfig, "url"> & { url: pulumi.Input<string> }): pulumi.Output<string> {
  const bucket = new aws.s3.Bucket(name, { forceDestroy: true });
  const publicAccess = new aws.s3.BucketPublicAccessBlock(name, {
    bucket: bucket.id,
    blockPublicAcls: true,
    blockPublicPolicy: true,
    ignorePublicAcls: true,
    restrictPublicBuckets: true,
  });
  // BucketOwnerEnforced turns ACLs off entirely: access is by policy only.
  new aws.s3.BucketOwnershipControls(name, { bucket: bucket.id, rule: { objectOwnership: "BucketOwnerEnforced" } });

  for (const [file, contentType] of Object.entries(WEB_FILES)) {
    new aws.s3.BucketObjectv2(`${name}-${file}`, {
      bucket: bucket.id,
      key: file,
      source: new pulumi.asset.FileAsset(path.join(WEB_DIR, file)),
      contentType,
      cacheControl: "no-cache",
    });
  }
  new aws.s3.BucketObjectv2(`${name}-config.json`, {
    bucket: bucket.id,
    key: "config.json",
    content: pulumi.jsonStringify({ url: config.url, authEnabled: config.authEnabled, maxMessageBytes: config.maxMessageBytes }),
    contentType: "application/json",
    cacheControl: "no-cache",
  });

  const originAccess = new aws.cloudfront.OriginAccessControl(name, {
    description: "CloudFront reads the chat page from its private bucket",
    originAccessControlOriginType: "s3",
    signingBehavior: "always",
    signingProtocol: "sigv4",
  });
  // Every property as @pulumi/aws 7.48 types it (cloudfront/responseHeadersPolicy.d.ts,
  // inputs.cloudfront.ResponseHeadersPolicySecurityHeadersConfig). `override: true` throughout:
  // these values win over any header the origin sends. The policy is autonamed, as the OAC is.
  const securityHeaders = new aws.cloudfront.ResponseHeadersPolicy(name, {
    comment: `${pulumi.getProject()} ${pulumi.getStack()} chat page: CSP (connects only to the stack url), HSTS, no framing, no referrer`.slice(0, 128),
    securityHeadersConfig: {
      // Checked against CloudFront's 1,783-character quota by the builder.
      contentSecurityPolicy: { contentSecurityPolicy: pulumi.output(config.url).apply(contentSecurityPolicy), override: true },
      // preload is off: the page lives on a *.cloudfront.net name, which only its owner (AWS) can
      // submit to the browsers' preload list. includeSubDomains covers only names under the
      // page's own host (none on cloudfront.net; on a custom domain, that name's subdomains).
      strictTransportSecurity: { accessControlMaxAgeSec: HSTS_MAX_AGE_SECONDS, includeSubdomains: true, preload: false, override: true },
      contentTypeOptions: { override: true },
      frameOptions: { frameOption: FRAME_OPTIONS, override: true },
      referrerPolicy: { referrerPolicy: REFERRER_POLICY, override: true },
    },
  });
  const distribution = new aws.cloudfront.Distribution(name, {
    enabled: true,
    comment: `${pulumi.getProject()} ${pulumi.getStack()} chat page`,
    defaultRootObject: "index.html",
    priceClass: "PriceClass_100",
    httpVersion: "http2and3",
    origins: [{ originId: "page", domainName: bucket.bucketRegionalDomainName, originAccessControlId: originAccess.id }],
    defaultCacheBehavior: {
      targetOriginId: "page",
      viewerProtocolPolicy: "redirect-to-https",
      allowedMethods: ["GET", "HEAD"],
      cachedMethods: ["GET", "HEAD"],
      compress: true,
      cachePolicyId: CACHING_OPTIMIZED,
      responseHeadersPolicyId: securityHeaders.id,
    },
    restrictions: { geoRestriction: { restrictionType: "none" } },
    viewerCertificate: { cloudfrontDefaultCertificate: true },
  });

  // Only this distribution may read, and only objects: the OAC pattern from the CloudFront
  // developer guide ("Restricting access to an Amazon S3 origin").
  new aws.s3.BucketPolicy(
    name,
    {
      bucket: bucket.id,
      policy: pulumi.jsonStringify({
        Version: "2012-10-17",
        Statement: [
          {
            Sid: "CloudFrontReadsPage",
            Effect: "Allow",
            Principal: { Service: "cloudfront.amazonaws.com" },
            Action: "s3:GetObject",
            Resource: pulumi.interpolate`${bucket.arn}/*`,
            Condition: { StringEquals: { "AWS:SourceArn": distribution.arn } },
          },
        ],
      }),
    },
    { dependsOn: [publicAccess] },
  );

  return pulumi.interpolate`https://${distribution.domainName}/`;
}
