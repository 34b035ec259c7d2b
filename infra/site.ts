/**
 * The chat page, published with the stack: a private S3 bucket (public access blocked, ACLs
 * disabled) that only this CloudFront distribution may read, through origin access control.
 * The page finds the stack's WebSocket URL in the config.json published beside it.
 */
import * as aws from "@pulumi/aws";
import * as pulumi from "@pulumi/pulumi";
import * as path from "path";

export const WEB_DIR = path.resolve(__dirname, "..", "web");
/** The page's files and their content types (config.json is generated per stack). */
export const WEB_FILES: Record<string, string> = {
  "index.html": "text/html; charset=utf-8",
  "chat.js": "text/javascript; charset=utf-8",
  "room-stream.js": "text/javascript; charset=utf-8",
  "chat.css": "text/css; charset=utf-8",
};
/** AWS's managed cache policy "Managed-CachingOptimized"; objects say no-cache, so new deploys show at once. */
const CACHING_OPTIMIZED = "658327ea-f89d-4fab-a63d-7e88639e58f6";

export function chatSite(name: string, config: { url: pulumi.Input<string>; authEnabled: boolean }): pulumi.Output<string> {
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
    content: pulumi.jsonStringify({ url: config.url, authEnabled: config.authEnabled }),
    contentType: "application/json",
    cacheControl: "no-cache",
  });

  const originAccess = new aws.cloudfront.OriginAccessControl(name, {
    description: "CloudFront reads the chat page from its private bucket",
    originAccessControlOriginType: "s3",
    signingBehavior: "always",
    signingProtocol: "sigv4",
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
