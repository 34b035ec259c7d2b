/**
 * Serves the chat page (web/) at `/`, with a `config.json` pointing at this stack's own `url`,
 * exactly the files the program publishes to S3 when `webEnabled` is on, and with the security
 * headers CloudFront adds there (infra/page-headers.ts): the same Content-Security-Policy, naming
 * this stack's ws:// url as the only place the page may connect, so the browser tests run
 * against the real policy.
 */
import * as fs from "fs";
import type { IncomingMessage, ServerResponse } from "http";
import * as path from "path";
import { PageConfig, pageSecurityHeaders, WEB_DIR, WEB_FILES } from "../infra/page-headers";

/** Returns true when the request was for the page (and has been answered). */
export function servePage(config: PageConfig, req: IncomingMessage, res: ServerResponse): boolean {
  if (req.method !== "GET" && req.method !== "HEAD") return false;
  const { pathname } = new URL(req.url ?? "/", "http://local");
  const file = pathname === "/" ? "index.html" : pathname.slice(1);
  // No Strict-Transport-Security: this server speaks plain http, where a server must not send it
  // and browsers ignore it (RFC 6797 §7.2, §8.1); on AWS, CloudFront sends it over https.
  const headers = { "Cache-Control": "no-store", ...pageSecurityHeaders(config.url, { https: false }) };
  if (file === "config.json") {
    res.writeHead(200, { ...headers, "Content-Type": "application/json" });
    res.end(JSON.stringify(config));
    return true;
  }
  const type = WEB_FILES[file];
  if (!type) return false;
  res.writeHead(200, { ...headers, "Content-Type": type });
  res.end(req.method === "HEAD" ? undefined : fs.readFileSync(path.join(WEB_DIR, file)));
  return true;
}
