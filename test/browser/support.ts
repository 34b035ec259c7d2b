/**
 * What the browser tests share: Debian's Chromium with the flags these machines need, pages at a
 * given width whose visibility the test controls, and a scripted WebSocket server that serves the
 * real page and plays the chat protocol from a script.
 */
import * as fs from "node:fs";
import * as http from "node:http";
import type { AddressInfo } from "node:net";
import * as os from "node:os";
import * as path from "node:path";
import { Browser, chromium, Page } from "playwright-core";
import { WebSocket, WebSocketServer } from "ws";
import { servePage } from "../../local/web";
import { PROJECT_DIR } from "../e2e/stack";

export const CHROMIUM = process.env.CHROMIUM_PATH ?? "/usr/bin/chromium";
// The flags these machines need (../shared/docs/chromium.md): no sandbox as root, no GPU, and no
// background networking, which would flood the closed network with refused connections.
export const FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"];

/** The page's globals as the tests read them (tsconfig has no DOM library). */
export type Browserish = Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any -- browser globals, untyped here

export function launch(): Promise<Browser> {
  return chromium.launch({ executablePath: CHROMIUM, args: FLAGS, headless: true });
}

/** The two widths the page is tested at: a desktop window and a phone. */
export const WIDTHS = [
  { width: 1280, height: 800 },
  { width: 375, height: 667 },
] as const;

/**
 * A page of this size whose `document.visibilityState` the test sets (`setVisible`), so whether
 * the page "is seen" (which moves read markers) does not depend on how headless Chromium reports
 * background tabs. Visible at first.
 */
export async function openPage(browser: Browser, size: { width: number; height: number }): Promise<Page> {
  const page = await browser.newPage({ viewport: size });
  await page.addInitScript(() => {
    const g = globalThis as Browserish;
    let hidden = false;
    Object.defineProperty(g.Document.prototype, "visibilityState", { configurable: true, get: () => (hidden ? "hidden" : "visible") });
    Object.defineProperty(g.Document.prototype, "hidden", { configurable: true, get: () => hidden });
    g.__testSetHidden = (value: boolean) => {
      hidden = value;
      g.document.dispatchEvent(new g.Event("visibilitychange"));
    };
  });
  return page;
}

export async function setVisible(page: Page, visible: boolean): Promise<void> {
  await page.evaluate((hidden) => (globalThis as Browserish).__testSetHidden(hidden), !visible);
}

/** Where screenshots go: docs/screenshots/ with UPDATE_SCREENSHOTS=1, else a temporary folder (so `npm test` changes no tracked file). */
export function screenshotDir(): string {
  if (process.env.UPDATE_SCREENSHOTS === "1") {
    const dir = path.join(PROJECT_DIR, "docs", "screenshots");
    fs.mkdirSync(dir, { recursive: true });
    return dir;
  }
  return fs.mkdtempSync(path.join(os.tmpdir(), "ws-chat-screens-"));
}

export interface Send {
  id: string;
  message: string;
}

export interface Scripted {
  url: string;
  sends: Send[];
  histories: { since?: string }[];
  /** Every frame clients sent, parsed. */
  frames: Record<string, unknown>[];
  connections: string[];
  referers: string[];
  /** Sends a frame to every connected client. */
  push(frame: object): void;
  close(): Promise<void>;
}

/**
 * A WebSocket server on port 0 that serves the page and plays the chat protocol from a script:
 * `answer` gets each sendmessage (and edit and delete) and how many times its id has been sent,
 * and returns the frames to send back. `history` answers history requests (an empty room by
 * default); `other` answers any other action (nothing by default). It records the URL of every
 * WebSocket connection (`connections`) and every Referer header it was sent (`referers`).
 */
export async function scriptedServer(
  answer: (send: Send & Record<string, unknown>, nth: number) => object[],
  history: (request: { since?: string }, nth: number) => object[] = () => [{ type: "history-end", cursor: null, more: false, epoch: null }],
  other: (frame: Record<string, unknown>, ws: WebSocket) => object[] = () => [],
): Promise<Scripted> {
  const sends: Send[] = [];
  const histories: { since?: string }[] = [];
  const frames: Record<string, unknown>[] = [];
  const connections: string[] = [];
  const referers: string[] = [];
  const server = http.createServer((req, res) => {
    if (req.headers.referer) referers.push(req.headers.referer);
    if (!servePage({ url: `ws://127.0.0.1:${(server.address() as AddressInfo).port}`, authEnabled: false, maxMessageBytes: 32_768 }, req, res)) res.writeHead(404).end();
  });
  const wss = new WebSocketServer({ server });
  wss.on("connection", (ws, req) => {
    connections.push(req.url ?? "");
    if (req.headers.referer) referers.push(req.headers.referer);
    ws.on("message", (data) => {
      const frame = JSON.parse(data.toString()) as Record<string, unknown> & Send & { action: string };
      frames.push(frame);
      let replies: object[];
      if (frame.action === "history") {
        histories.push({ since: (frame as { since?: string }).since });
        replies = history(frame as { since?: string }, histories.length);
      } else if (frame.action === "sendmessage" || frame.action === "edit" || frame.action === "delete") {
        sends.push({ id: frame.id, message: frame.message });
        replies = answer(frame, sends.filter((x) => x.id === frame.id).length);
      } else {
        replies = other(frame, ws);
      }
      for (const reply of replies) ws.send(JSON.stringify(reply));
    });
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/`,
    sends,
    histories,
    frames,
    connections,
    referers,
    push: (frame) => wss.clients.forEach((ws) => ws.send(JSON.stringify(frame))),
    async close() {
      for (const ws of wss.clients) ws.terminate();
      wss.close();
      await new Promise((resolve) => server.close(resolve));
    },
  };
}

/** A room's events as the server sends them, for scripted servers. */
export const cursorOf = (n: number) => String(n).padStart(16, "0");
export function event(n: number, type: string, name: string, extra: Record<string, unknown> = {}, epoch = "E1", ts = 1_700_000_000_000 + n * 1000) {
  return { type, room: "r", from: { name }, ts, id: `s-${epoch}-${n}`, cursor: cursorOf(n), epoch, ...extra };
}
export const historyEnd = (n: number | null, epoch: string | null, more = false) => ({ type: "history-end", cursor: n === null ? null : cursorOf(n), more, epoch });
