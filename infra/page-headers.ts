/**
 * The chat page's files and the security headers it is served with, in one place for both places
 * that serve it: the CloudFront distribution (infra/site.ts, as a response headers policy) and
 * the local stack (local/web.ts). No Pulumi import, so the local page server and the tests use it
 * without loading the Pulumi SDK.
 *
 * The Content-Security-Policy is what makes a page served with a stack's config.json unable to
 * send its token anywhere else: the page may connect only to its own origin (config.json) and to
 * the stack's WebSocket `url`, whatever a link's `?url=` or an injected script asks for.
 */
import * as path from "path";

export const WEB_DIR = path.resolve(__dirname, "..", "web");
/** The page's files and their content types (config.json is generated per stack). */
export const WEB_FILES: Record<string, string> = {
  "index.html": "text/html; charset=utf-8",
  "chat.js": "text/javascript; charset=utf-8",
  "room-stream.js": "text/javascript; charset=utf-8",
  "chat.css": "text/css; charset=utf-8",
};

/**
 * CloudFront's quota on the Content-Security-Policy value of a response headers policy (1,783
 * characters; CreateResponseHeadersPolicy fails with TooLongCSPInResponseHeadersPolicy above it).
 * This policy is about 250 characters plus the url; the builder refuses anything longer.
 */
export const CSP_MAX_LENGTH = 1783;
/** Strict-Transport-Security max-age: two years. */
export const HSTS_MAX_AGE_SECONDS = 63_072_000;
export const REFERRER_POLICY = "no-referrer";
export const FRAME_OPTIONS = "DENY";

/**
 * A ws:// or wss:// URL that is one CSP source expression as written: a host name or IPv4
 * address, an optional port, and a path of unreserved characters (API Gateway stage names are
 * `[A-Za-z0-9_-]`). No query, fragment, credentials, wildcards, quotes, `;`, `,` or whitespace:
 * nothing that could end the source list or add a directive.
 */
const CSP_SAFE_WS_URL = /^wss?:\/\/[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?(?::\d{1,5})?(?:\/[A-Za-z0-9._~%-]*)*$/;

/**
 * The page's Content-Security-Policy, naming `url` (the stack's WebSocket URL) as the only place
 * it may connect besides its own origin. What the page needs, and nothing more:
 * - its two scripts and its stylesheet, from its own origin (no inline script or style, no eval);
 * - connect: config.json ('self') and the stack's url (a source with a path matches that path
 *   exactly; the query the page adds, room/name/token, is not part of the match);
 * - img 'self' for the browser's favicon request; everything else (objects, frames, fonts, media,
 *   workers, manifests) falls to default-src 'none';
 * - no <base> (base-uri), no form submission anywhere (form-action: the forms are handled in
 *   script), and no framing by any site (frame-ancestors; X-Frame-Options DENY for old browsers).
 */
export function contentSecurityPolicy(url: string): string {
  if (typeof url !== "string" || !CSP_SAFE_WS_URL.test(url)) {
    throw new Error(`the page's Content-Security-Policy can only name a plain ws:// or wss:// URL (host, port, path); got ${JSON.stringify(url)}`);
  }
  const policy = [
    "default-src 'none'",
    "script-src 'self'",
    "style-src 'self'",
    "img-src 'self'",
    `connect-src 'self' ${url}`,
    "base-uri 'none'",
    "form-action 'none'",
    "frame-ancestors 'none'",
  ].join("; ");
  if (policy.length > CSP_MAX_LENGTH) {
    throw new Error(`the page's Content-Security-Policy is ${policy.length} characters, over CloudFront's ${CSP_MAX_LENGTH}`);
  }
  return policy;
}

/**
 * The headers the page is served with, as the CloudFront policy in infra/site.ts sets them.
 * `https: false` (the local stack, plain http) leaves out Strict-Transport-Security: a server
 * must not send it over plain http and a browser ignores it there (RFC 6797, sections 7.2 and
 * 8.1).
 */
export function pageSecurityHeaders(url: string, options: { https: boolean }): Record<string, string> {
  return {
    "Content-Security-Policy": contentSecurityPolicy(url),
    ...(options.https ? { "Strict-Transport-Security": `max-age=${HSTS_MAX_AGE_SECONDS}; includeSubDomains` } : {}),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": FRAME_OPTIONS,
    "Referrer-Policy": REFERRER_POLICY,
  };
}

/** What the page reads from the config.json published beside it (web/chat.js). */
export interface PageConfig {
  /** The stack's WebSocket URL. */
  url: string;
  /** Whether $connect needs a token. */
  authEnabled: boolean;
  /** The longest message the stack accepts, in UTF-8 bytes: the page's counter and its check before sending. */
  maxMessageBytes: number;
}
