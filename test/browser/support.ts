/**
 * What the browser tests share: a Chromium found without a system package, with the flags these
 * machines need, pages at a given width whose visibility the test controls, and a scripted
 * WebSocket server that serves the real page and plays the chat protocol from a script.
 */
import { execFile } from "node:child_process";
import * as fs from "node:fs";
import * as http from "node:http";
import type { AddressInfo } from "node:net";
import * as os from "node:os";
import * as path from "node:path";
import { promisify } from "node:util";
import { Browser, chromium, Page } from "playwright-core";
import { WebSocket, WebSocketServer } from "ws";
import { servePage } from "../../local/web";
import { PROJECT_DIR } from "../e2e/stack";

// The flags these machines need (../shared/docs/chromium.md): no sandbox as root, no GPU, and no
// background networking, which would flood the closed network with refused connections. Not the
// flags @sparticuz/chromium recommends (`chromium.args`): they include --disable-web-security and
// --single-process, made for Lambda, and would switch off the same-origin and CSP checks the
// page's tests rely on.
export const FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"];

/** Debian's Chromium (`apt-get install chromium`), used when it is there. */
const DEBIAN_CHROMIUM = "/usr/bin/chromium";
/** The npm package that ships a Chromium inside its registry tarball (a devDependency). */
const NPM_CHROMIUM = path.join(PROJECT_DIR, "node_modules", "@sparticuz", "chromium");
/** Where unpackNpmChromium puts it unless told otherwise. */
const NPM_CHROMIUM_CACHE = path.join(PROJECT_DIR, "node_modules", ".cache");

/** A Chromium to launch: its binary, what to add to its environment, and where it came from. */
export interface FoundChromium {
  executablePath: string;
  env: Record<string, string>;
  source: string;
}

/**
 * The Chromium the tests drive, the first of: `CHROMIUM_PATH` (which must exist: a missing one
 * fails, naming it, rather than quietly testing another browser); Debian's /usr/bin/chromium; the
 * one `npm ci` installs from the npm registry, `@sparticuz/chromium` (see unpackNpmChromium).
 * Why that package: the tools' own browser downloads (`npx playwright install`, see
 * https://playwright.dev/docs/browsers; puppeteer's postinstall) fetch from a CDN, not a package
 * registry, and fail on machines that reach only registries, as CI's does; Debian's package needs
 * root. `@sparticuz/chromium` (MIT, https://github.com/Sparticuz/chromium) carries the binary in
 * its registry tarball, so `npm ci` installs it like any package, with no install script. It
 * declares Node ^22.17 (npm warns EBADENGINE on 20) but nothing in its build/ needs more than 20,
 * where this suite runs it.
 */
export async function findChromium(): Promise<FoundChromium> {
  const given = process.env.CHROMIUM_PATH;
  if (given !== undefined && given !== "") {
    if (!fs.existsSync(given)) throw new Error(`CHROMIUM_PATH is ${given}, which does not exist: point it at a Chromium or Chrome binary, or unset it to use ${DEBIAN_CHROMIUM} or the Chromium that npm ci installs (@sparticuz/chromium)`);
    return { executablePath: given, env: {}, source: "CHROMIUM_PATH" };
  }
  if (fs.existsSync(DEBIAN_CHROMIUM)) return { executablePath: DEBIAN_CHROMIUM, env: {}, source: "Debian's chromium" };
  return (unpacked ??= unpackNpmChromium());
}
let unpacked: Promise<FoundChromium> | undefined;

/**
 * Unpacks `@sparticuz/chromium` once per version into `cache`, by default node_modules/.cache/ (so
 * `npm ci`, which empties node_modules, also clears it), about 3 s and 210 MB: the brotli-packed
 * chrome-headless-shell for Linux x64, its software GL libraries, the NSS libraries it links
 * (built for Amazon Linux 2023, used here too, so the binary needs only glibc from the machine)
 * and Open Sans. The package unpacks into `os.tmpdir()` and reuses any /tmp/chromium it finds there,
 * of any version (its README, "Subsequent runs ... will detect that /tmp/chromium exists"), so a
 * child process unpacks it with TMPDIR set to a fresh folder, which is then renamed into place: a
 * run never sees a half-unpacked browser or another version's.
 * Its fonts.conf names Lambda's folders; the one written here reads the machine's fonts where it
 * has a fontconfig setup, and the package's Open Sans always, so text renders on a machine with no
 * fonts at all (Latin only: arrows such as ↓ need a machine font such as Debian's DejaVu).
 */
export async function unpackNpmChromium(cache = NPM_CHROMIUM_CACHE): Promise<FoundChromium> {
  if (process.platform !== "linux" || process.arch !== "x64" || !fs.existsSync(NPM_CHROMIUM)) {
    throw new Error(`no Chromium: ${DEBIAN_CHROMIUM} is missing and @sparticuz/chromium (Linux x64 only) is not installed here (run npm ci), so set CHROMIUM_PATH to a Chromium or Chrome binary`);
  }
  const version = (JSON.parse(fs.readFileSync(path.join(NPM_CHROMIUM, "package.json"), "utf8")) as { version: string }).version;
  const dir = path.join(cache, `ws-chat-chromium-${version}`);
  const found = { executablePath: path.join(dir, "chromium"), env: { LD_LIBRARY_PATH: [path.join(dir, "al2023", "lib"), process.env.LD_LIBRARY_PATH].filter(Boolean).join(":"), FONTCONFIG_FILE: path.join(dir, "fonts.conf") }, source: `@sparticuz/chromium ${version}` };
  if (fs.existsSync(dir)) return found;
  fs.mkdirSync(cache, { recursive: true });
  const staging = fs.mkdtempSync(`${dir}.unpacking-`);
  try {
    const bin = path.join(NPM_CHROMIUM, "bin");
    // The package is ESM only: a child imports it, and prints where it unpacked the binary.
    const script = `import("@sparticuz/chromium").then(async ({ default: c, inflate }) => { const exe = await c.executablePath(${JSON.stringify(bin)}); await inflate(${JSON.stringify(path.join(bin, "al2023.tar.br"))}); process.stdout.write(exe); }).catch((e) => { console.error(e); process.exit(1); })`;
    const { stdout } = await promisify(execFile)(process.execPath, ["-e", script], { cwd: PROJECT_DIR, env: { ...process.env, TMPDIR: staging } });
    if (stdout !== path.join(staging, "chromium")) throw new Error(`@sparticuz/chromium unpacked to ${stdout}, not into ${staging}: its layout changed`);
    fs.writeFileSync(path.join(staging, "fonts.conf"), fontsConf(dir));
    fs.renameSync(staging, dir);
  } catch (error) {
    fs.rmSync(staging, { recursive: true, force: true });
    // Another test process renamed its copy into place first: use that one.
    if (!fs.existsSync(dir)) throw error;
  }
  return found;
}

/** A fontconfig file: the machine's setup where there is one, then the package's Open Sans. */
function fontsConf(dir: string): string {
  return [
    `<?xml version="1.0"?>`,
    `<!DOCTYPE fontconfig SYSTEM "urn:fontconfig:fonts.dtd">`,
    `<fontconfig>`,
    `  <include ignore_missing="yes">/etc/fonts/fonts.conf</include>`,
    `  <dir>${path.join(dir, "fonts", "fonts")}</dir>`,
    `  <cachedir>${path.join(dir, "fonts-cache")}</cachedir>`,
    `</fontconfig>`,
    ``,
  ].join("\n");
}

/** The page's globals as the tests read them (tsconfig has no DOM library). */
export type Browserish = Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any -- browser globals, untyped here

/** Launches a Chromium (by default the one findChromium finds), headless, and says once which one it is. */
export async function launch(chosen?: FoundChromium): Promise<Browser> {
  const found = chosen ?? (await findChromium());
  const browser = await chromium.launch({ executablePath: found.executablePath, args: FLAGS, headless: true, env: { ...process.env, ...found.env } });
  if (!announced) console.log(`      (Chromium ${browser.version()}, ${found.source}: ${found.executablePath})`);
  announced = true;
  return browser;
}
let announced = false;

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
 * `answer` gets each sendmessage (and edit and delete), how many times its id has been sent and
 * its socket (to close it as API Gateway would), and returns the frames to send back. `history` answers history requests (an empty room by
 * default); `other` answers any other action (nothing by default). It records the URL of every
 * WebSocket connection (`connections`) and every Referer header it was sent (`referers`).
 */
export async function scriptedServer(
  answer: (send: Send & Record<string, unknown>, nth: number, ws: WebSocket) => object[],
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
        replies = answer(frame, sends.filter((x) => x.id === frame.id).length, ws);
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
