/**
 * Which Chromium the browser tests drive (support.ts): a CHROMIUM_PATH that points nowhere fails,
 * naming it, instead of quietly testing another browser; without one a Chromium is found and runs;
 * the one npm ci installs (@sparticuz/chromium) unpacks and runs on any machine, also one whose
 * /usr/bin/chromium findChromium would pick first.
 */
import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import type { Browser } from "playwright-core";
import { findChromium, FoundChromium, launch, unpackNpmChromium } from "./support";

/** Launches `found` (or findChromium's), opens a page and runs its script. */
async function runsAPage(found?: FoundChromium): Promise<void> {
  const browser: Browser = await launch(found);
  try {
    const page = await browser.newPage();
    await page.setContent("<p id=answer>forty-two</p><script>document.body.dataset.answer = String(6 * 7)</script>");
    assert.equal(await page.locator("body").getAttribute("data-answer"), "42", "the page's script ran");
    assert.ok(((await page.locator("#answer").boundingBox())?.width ?? 0) > 0, "its text was laid out in a font");
  } finally {
    await browser.close();
  }
}

describe("finding the tests' Chromium", function () {
  this.timeout(60_000);
  const saved = process.env.CHROMIUM_PATH;
  afterEach(() => {
    if (saved === undefined) delete process.env.CHROMIUM_PATH;
    else process.env.CHROMIUM_PATH = saved;
  });

  it("fails, naming it, when CHROMIUM_PATH points nowhere", async () => {
    process.env.CHROMIUM_PATH = "/nonexistent/chromium";
    await assert.rejects(findChromium(), /CHROMIUM_PATH is \/nonexistent\/chromium, which does not exist/);
  });

  it("finds one that starts and runs a page's script when CHROMIUM_PATH is not set", async function () {
    if (saved !== undefined) this.skip(); // the machine chose its own: the other suites drive it
    await runsAPage();
  });

  it("unpacks the npm-installed Chromium (@sparticuz/chromium) into an empty cache, finds it there and runs a page", async function () {
    this.timeout(120_000);
    // A fresh cache: the unpacking runs here even where node_modules/.cache holds a copy already or
    // where findChromium would take /usr/bin/chromium, so neither hides a broken npm path.
    const cache = fs.mkdtempSync(path.join(os.tmpdir(), "find-chromium-"));
    try {
      const found = await unpackNpmChromium(cache);
      assert.match(found.source, /^@sparticuz\/chromium \d/);
      assert.ok(found.executablePath.startsWith(cache + path.sep), `${found.executablePath} is in ${cache}`);
      assert.ok(fs.statSync(found.executablePath).mode & 0o111, "the binary is executable");
      assert.deepEqual(fs.readdirSync(cache), [path.basename(path.dirname(found.executablePath))], "no staging folder left behind");
      await runsAPage(found);
      assert.deepEqual(await unpackNpmChromium(cache), found, "a second call finds the unpacked copy");
    } finally {
      fs.rmSync(cache, { recursive: true, force: true });
    }
  });
});
