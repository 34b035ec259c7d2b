/**
 * Which Chromium the browser tests drive (support.ts): a CHROMIUM_PATH that points nowhere fails,
 * naming it, instead of quietly testing another browser; without one a Chromium is found and runs.
 */
import assert from "node:assert/strict";
import { findChromium, launch } from "./support";

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
    const browser = await launch();
    try {
      const page = await browser.newPage();
      assert.equal(await page.evaluate(() => 6 * 7), 42);
    } finally {
      await browser.close();
    }
  });
});
