/**
 * Serves the chat page (web/) at `/`, with a `config.json` pointing at this stack's own `url`,
 * exactly the files the program publishes to S3 when `webEnabled` is on.
 */
import * as fs from "fs";
import type { IncomingMessage, ServerResponse } from "http";
import * as path from "path";
import { WEB_DIR, WEB_FILES } from "../infra/site";

/** Returns true when the request was for the page (and has been answered). */
export function servePage(config: { url: string; authEnabled: boolean }, req: IncomingMessage, res: ServerResponse): boolean {
  if (req.method !== "GET" && req.method !== "HEAD") return false;
  const { pathname } = new URL(req.url ?? "/", "http://local");
  const file = pathname === "/" ? "index.html" : pathname.slice(1);
  const headers = { "Cache-Control": "no-store", "X-Content-Type-Options": "nosniff" };
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
