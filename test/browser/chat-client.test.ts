/**
 * The chat page as a chat client (issue 13), in real headless Chromium at 1280 px and at 375 px:
 * against a local stack, two pages see each other join, type, edit, delete and leave; the unread
 * count in the tab title and the "new messages" divider; the message list scrolls inside a fixed
 * frame while the header, the status and the errors stay in view; the name shown is the token's;
 * a guest keeps its name across reconnects; a reconnect after a stack restart shows every message.
 * Against a scripted server: the rules for replayed edits and deletes, refusals, members pages,
 * typing expiry, retry, read markers and dark mode. And the screenshots of both widths (to a
 * temporary folder; `UPDATE_SCREENSHOTS=1` writes docs/screenshots/ instead).
 *
 * Every wait is on an event or a DOM condition, never a fixed sleep.
 */
import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { Browser, Page } from "playwright-core";
import { signRequest } from "../../handlers/shared/aws-http";
import { E2EStack, localStack } from "../e2e/stack";
import { Browserish, cursorOf, event, historyEnd, launch, openPage, screenshotDir, scriptedServer, setVisible, WIDTHS } from "./support";

/** Opens the page, fills the join form (keyboard only) and waits until connected and caught up. */
async function enter(page: Page, base: string, name: string, room: string, options: { query?: string; hidden?: boolean } = {}): Promise<Page> {
  await page.goto(`${base}?${options.query ?? "reconnectMs=1000"}`);
  if (options.hidden) await setVisible(page, false);
  if (name) await page.getByLabel("Name", { exact: true }).fill(name);
  await page.getByLabel("Room", { exact: true }).fill(room);
  await page.getByLabel("Room", { exact: true }).press("Enter");
  await page.getByRole("status").filter({ hasText: `Connected to #${room}` }).waitFor();
  await caughtUp(page);
  return page;
}

const caughtUp = (page: Page) => page.locator("#messages[data-caught-up]").waitFor({ state: "attached", timeout: 60_000 });

const box = (page: Page) => page.getByLabel("Message", { exact: true });

async function say(page: Page, text: string): Promise<void> {
  await box(page).fill(text);
  await box(page).press("Enter");
}

/** Sends and waits for the ack (the line has its cursor); returns the cursor. */
async function sayStored(page: Page, text: string): Promise<string> {
  await say(page, text);
  const cursor = await page.waitForFunction(
    (t) => {
      for (const li of (globalThis as Browserish).document.querySelectorAll("#messages li.message.mine[data-cursor]:not(.pending)")) if (li.querySelector(".text")?.textContent === t) return li.dataset.cursor as string;
      return null;
    },
    text,
    { timeout: 60_000, polling: 100 },
  );
  return (await cursor.jsonValue()) as string;
}

async function title(page: Page, expected: string): Promise<void> {
  await page.waitForFunction((t) => (globalThis as Browserish).document.title === t, expected, { timeout: 30_000, polling: 100 });
}

const memberNames = (page: Page) => page.locator("#members li").evaluateAll((items) => items.map((li) => (li as Browserish).dataset.name as string));
const lines = (page: Page) => page.locator("#messages li.message .text").allTextContents();

interface Rect {
  top: number;
  bottom: number;
  left: number;
  right: number;
  height: number;
}

/** Where the frame's parts are, and how the page and the list scroll. */
function geometry(page: Page) {
  return page.evaluate(() => {
    const g = globalThis as Browserish;
    const d = g.document;
    const rect = (selector: string): Rect | null => {
      const node = d.querySelector(selector);
      if (!node || node.hidden || node.getClientRects().length === 0) return null;
      const r = node.getBoundingClientRect();
      return { top: r.top, bottom: r.bottom, left: r.left, right: r.right, height: r.height };
    };
    const s = d.getElementById("scroller");
    const h1 = d.querySelector("h1");
    return {
      inner: { width: g.innerWidth as number, height: g.innerHeight as number },
      page: { scrollHeight: d.documentElement.scrollHeight as number, scrollWidth: d.documentElement.scrollWidth as number, scrollY: g.scrollY as number },
      header: rect("#top")!,
      status: rect("#status")!,
      error: rect("#error"),
      compose: rect("#compose")!,
      scroller: { ...rect("#scroller")!, scrollTop: s.scrollTop as number, scrollHeight: s.scrollHeight as number, clientHeight: s.clientHeight as number },
      last: rect("#messages li.message:last-of-type"),
      title: { height: h1.getBoundingClientRect().height as number, lineHeight: parseFloat(g.getComputedStyle(h1).lineHeight) as number, overflows: h1.scrollWidth > h1.clientWidth },
    };
  });
}

describe("the chat page as a chat client (issue 13)", function () {
  this.timeout(180_000);
  let browser: Browser;
  let stack: E2EStack;
  let pageUrl: string;

  before(async function () {
    browser = await launch(); // first, so a missing browser fails before a stack starts
    stack = await localStack();
    pageUrl = /Chat page: (\S+)/.exec(stack.logs())![1];
  });
  after(async () => {
    await browser?.close();
    await stack?.stop();
  });

  for (const size of WIDTHS) {
    describe(`at ${size.width} px`, () => {
      let pages: Page[] = [];
      const open = async () => {
        const page = await openPage(browser, size);
        pages.push(page);
        return page;
      };
      afterEach(async () => {
        await Promise.all(pages.map((p) => p.close().catch(() => undefined)));
        pages = [];
      });

      it("two pages see each other join, type, edit, delete and leave", async () => {
        const room = `pres-${size.width}-${Date.now()}`;
        const amy = await enter(await open(), pageUrl, "amy", room);
        const ben = await enter(await open(), pageUrl, "ben", room);

        // Joins: live on amy's page, replayed on ben's; both member lists.
        await amy.locator('#messages li.presence.join[data-name="ben"]', { hasText: "ben joined" }).waitFor();
        await ben.locator('#messages li.presence.join[data-name="amy"]', { hasText: "amy joined" }).waitFor();
        await amy.locator('#members li[data-name="ben"]').waitFor({ state: "attached" });
        await ben.locator('#members li[data-name="amy"]').waitFor({ state: "attached" });
        assert.deepEqual(await memberNames(ben), ["amy", "ben"]);
        await amy.locator('#members li[data-name="ben"]', { hasText: /^ben$/ }).waitFor({ state: "attached" }); // one connection (a list that raced the join is read again)
        assert.equal(await ben.locator("#member-count").textContent(), "2");

        // Typing: shown on the other page, gone when the message comes.
        await box(ben).fill("hel");
        await amy.locator("#typing", { hasText: "ben is typing…" }).waitFor();
        await box(ben).fill("hello amy");
        await box(ben).press("Enter");
        await amy.locator("#messages li.message", { hasText: "hello amy" }).waitFor();
        await amy.waitForFunction(() => (globalThis as Browserish).document.getElementById("typing").textContent === "", null, { timeout: 2_500, polling: 100 });

        // Shift+Enter makes a new line; links are links; consecutive messages are grouped.
        await box(amy).fill("two lines");
        await box(amy).press("Shift+Enter");
        await box(amy).pressSequentially("see https://example.com/a?b=1.");
        assert.equal(await box(amy).inputValue(), "two lines\nsee https://example.com/a?b=1.");
        await box(amy).press("Enter");
        const firstCursor = await amy.locator("#messages li.message.mine[data-cursor]", { hasText: "two lines" }).getAttribute("data-cursor", { timeout: 60_000 });
        await sayStored(amy, "second in a row");
        const twoLines = ben.locator("#messages li.message", { hasText: "two lines" });
        await twoLines.waitFor();
        assert.equal(await twoLines.locator(".text").textContent(), "two lines\nsee https://example.com/a?b=1.");
        const link = twoLines.locator(".text a");
        assert.deepEqual([await link.getAttribute("href"), await link.getAttribute("rel"), await link.getAttribute("target"), await link.textContent()], ["https://example.com/a?b=1", "noopener noreferrer", "_blank", "https://example.com/a?b=1"]);
        const second = ben.locator("#messages li.message", { hasText: "second in a row" });
        await second.waitFor();
        await ben.locator("#messages li.message.continued", { hasText: "second in a row" }).waitFor();
        assert.equal(await twoLines.evaluate((li) => (li as Browserish).classList.contains("continued")), false, "the first of a group shows the name");
        assert.equal(await ben.locator("#messages li.message:not(.mine) .actions").count(), 0, "no edit or delete on others' messages");

        // Edit, with the keyboard: the Edit button is reachable by focus.
        const mine = amy.locator("#messages li.message.mine", { hasText: "second in a row" });
        await mine.locator(".actions .edit").focus();
        assert.equal(await mine.locator(".actions").evaluate((a) => (globalThis as Browserish).getComputedStyle(a).opacity), "1", "the actions show on focus");
        await amy.keyboard.press("Enter");
        const editor = mine.getByLabel("Edited message");
        await editor.fill("second, edited");
        await editor.press("Enter");
        await ben.locator("#messages li.message.is-edited", { hasText: "second, edited" }).waitFor();
        assert.ok(await ben.locator("#messages li.message.is-edited .edited").isVisible(), "(edited) shown");
        await amy.locator("#messages li.message.is-edited:not(.updating)", { hasText: "second, edited" }).waitFor();

        // Delete, with a confirming second press.
        const doomed = amy.locator(`#messages li.message[data-cursor="${firstCursor}"]`);
        await doomed.locator(".actions .delete").focus();
        await amy.keyboard.press("Enter");
        await doomed.locator(".actions .delete", { hasText: "Delete?" }).waitFor();
        await amy.keyboard.press("Enter");
        await ben.locator(`#messages li.message.deleted[data-cursor="${firstCursor}"]`, { hasText: "message deleted" }).waitFor();
        await amy.locator(`#messages li.message.deleted[data-cursor="${firstCursor}"]`, { hasText: "message deleted" }).waitFor();
        assert.equal(await ben.locator(`#messages li[data-cursor="${firstCursor}"] .text`).count(), 0, "the text is gone");

        // On a phone, the member list opens from the header.
        if (size.width < 768) {
          assert.equal(await amy.locator("#members-panel").isVisible(), false, "folded away at first");
          await amy.locator("#members-button").click();
          await amy.locator("#members-panel").waitFor();
          await amy.locator("#members-button").click();
        } else {
          assert.ok(await amy.locator("#members-panel").isVisible(), "a side panel");
        }

        // Leave: a notice, and the list follows.
        await ben.getByRole("button", { name: "Leave" }).click();
        await ben.getByRole("status").filter({ hasText: "Not connected" }).waitFor();
        assert.ok(await ben.getByLabel("Room", { exact: true }).isVisible(), "the join form is back");
        await amy.locator('#messages li.presence.leave[data-name="ben"]', { hasText: "ben left" }).waitFor();
        await amy.locator('#members li[data-name="ben"]').waitFor({ state: "detached" });
        assert.deepEqual(await memberNames(amy), ["amy"]);
      });

      it("shows the unread count in the tab title and a divider before the first unread message", async () => {
        const room = `unread-${size.width}-${Date.now()}`;
        const una = await enter(await open(), pageUrl, "una", room);
        const vic = await enter(await open(), pageUrl, "vic", room);
        const first = await sayStored(una, "first");
        await vic.locator("#messages li.message", { hasText: "first" }).waitFor();
        // Seen at the end of the list: vic's marker moves there, and nothing is unread.
        await vic.locator(`#messages[data-read="${Number(first)}"]`).waitFor({ state: "attached" });
        await title(vic, "ws-chat");
        await vic.close();
        for (const text of ["two", "three", "four"]) await sayStored(una, text);

        // Back, in a tab not looked at: three unread, and the divider before "two".
        const again = await enter(await open(), pageUrl, "vic", room, { hidden: true });
        await title(again, "(3) ws-chat");
        assert.equal(await again.locator("#unread-divider + li.message .text").textContent(), "two");
        assert.equal(await again.locator("#unread-divider").textContent(), "New messages");
        await sayStored(una, "five");
        await title(again, "(4) ws-chat"); // counted live while not looked at
        // Looked at, at the end: the marker moves forward and the count goes; the divider stays.
        await setVisible(again, true);
        await title(again, "ws-chat");
        assert.ok(Number(await again.locator("#messages").getAttribute("data-read")) > Number(first));
        assert.equal(await again.locator("#unread-divider + li.message .text").textContent(), "two");

        // A third visit finds everything read: no count, no divider.
        const third = await enter(await open(), pageUrl, "vic", room);
        await third.locator('#messages[data-read]:not([data-read=""])').waitFor({ state: "attached" });
        await title(third, "ws-chat");
        assert.equal(await third.locator("#unread-divider").count(), 0);
      });

      it("scrolls the message list inside a fixed frame: the header, the status and the errors stay in view; a 'new messages' button when scrolled up", async () => {
        const room = `frame-${size.width}-${Date.now()}`;
        const amy = await enter(await open(), pageUrl, "amy", room);
        // Joined: the join form folds into "amy in #room" and a Leave button.
        assert.equal(await amy.locator("#join").isVisible(), false);
        assert.equal(await amy.locator("#identity").textContent(), `amy in #${room}`);
        assert.ok(await amy.getByRole("button", { name: "Leave" }).isVisible());
        const tall = Array.from({ length: 30 }, (_, i) => `line ${i + 1}`).join("\n");
        for (let i = 1; i <= 3; i++) await sayStored(amy, `block ${i}\n${tall}`);

        let g = await geometry(amy);
        assert.ok(g.page.scrollHeight <= g.inner.height && g.page.scrollWidth <= g.inner.width, `the page itself does not scroll: ${JSON.stringify(g.page)} in ${JSON.stringify(g.inner)}`);
        assert.ok(g.scroller.scrollHeight > g.scroller.clientHeight * 2, "the list does");
        assert.equal(g.header.top, 0, "header at the top");
        assert.ok(g.header.height <= (size.width < 768 ? 56 : 64), `a compact header: ${g.header.height}px`);
        assert.ok(!g.title.overflows && g.title.height < g.title.lineHeight * 1.5, `the title is one line: ${JSON.stringify(g.title)}`);
        assert.ok(g.status.top >= g.header.bottom - 1 && g.status.bottom <= g.scroller.top + 1, "status between the header and the list");
        assert.ok(Math.abs(g.compose.bottom - g.inner.height) <= 1, `compose pinned at the bottom: ${g.compose.bottom} of ${g.inner.height}`);
        assert.ok(g.last && g.last.bottom <= g.scroller.bottom + 1, "followed to the newest message");

        // Scrolled up, an error: everything stays where it was, the error in view.
        await amy.locator("#scroller").evaluate((s) => ((s as Browserish).scrollTop = 0));
        await box(amy).fill("x".repeat(40_000));
        await box(amy).press("Enter");
        await amy.getByRole("alert").filter({ hasText: "That message is too long" }).waitFor();
        g = await geometry(amy);
        assert.equal(g.header.top, 0);
        assert.ok(g.error && g.error.top >= g.status.bottom - 1 && g.error.bottom <= g.scroller.top + 1 && g.error.height > 0, `the error between status and list: ${JSON.stringify(g.error)}`);
        assert.ok(Math.abs(g.compose.bottom - g.inner.height) <= 1, "compose still pinned");
        assert.ok(g.page.scrollHeight <= g.inner.height && g.page.scrollY === 0, "the page did not scroll");
        assert.equal(g.scroller.scrollTop, 0, "the list stayed where it was");
        assert.equal(await amy.locator("#messages li.message", { hasText: "xxxxxxxxxx" }).count(), 0, "not drawn");

        // Someone writes while amy reads older messages: not pulled down; a button offers the way.
        const ben = await enter(await open(), pageUrl, "ben", room);
        await sayStored(ben, "are you there?");
        await amy.locator("#messages li.message", { hasText: "are you there?" }).waitFor();
        await amy.locator("#jump").waitFor();
        assert.equal((await geometry(amy)).scroller.scrollTop, 0, "no auto-scroll when not at the end");
        await amy.locator("#jump").click();
        await amy.locator("#jump").waitFor({ state: "hidden" });
        g = await geometry(amy);
        assert.ok(g.scroller.scrollHeight - g.scroller.scrollTop - g.scroller.clientHeight <= 48, "at the end");

        // A blank message is refused with a hint; the next success clears the error.
        await box(amy).fill("   ");
        await box(amy).press("Enter");
        await amy.locator("#compose-hint", { hasText: "Nothing to send" }).waitFor();
        await sayStored(amy, "yes");
        await amy.getByRole("alert").waitFor({ state: "hidden" });
        await amy.locator("#compose-hint").filter({ hasText: /^$/ }).waitFor({ state: "attached" });
      });
    });
  }

  it("labels a guest with the name the server knows, kept across reconnects and reloads in the tab", async () => {
    const room = `guests-${Date.now()}`;
    const page = await openPage(browser, WIDTHS[1]);
    const watcher = await enter(await openPage(browser, WIDTHS[0]), pageUrl, "wes", room);
    try {
      const urls: string[] = [];
      page.on("websocket", (ws) => urls.push(ws.url()));
      await enter(page, pageUrl, "", room);
      const guest = (await page.locator("#me").textContent())!;
      assert.match(guest, /^guest-[0-9a-f]{4}$/);
      await sayStored(page, "a guest speaks");
      const seen = watcher.locator("#messages li.message", { hasText: "a guest speaks" });
      await seen.waitFor();
      assert.equal(await seen.locator(".from").textContent(), guest, "others see the same name");
      // The server drops the connection (DeleteConnection, signed with the operator's key).
      const [connection] = (await stack.scanConnections()).filter((c) => c.name === guest);
      const url = new URL(`${stack.outputs.connectionsUrl}/${encodeURIComponent(String(connection.connectionId))}`);
      const headers = signRequest({ method: "DELETE", url, headers: {}, body: "", service: "execute-api", region: String(stack.outputs.region), credentials: { accessKeyId: "local", secretAccessKey: "local" } });
      assert.equal((await fetch(url, { method: "DELETE", headers })).status, 204);
      await page.getByRole("status").filter({ hasText: "Disconnected. Reconnecting" }).waitFor();
      await page.getByRole("status").filter({ hasText: `Connected to #${room} as ${guest}` }).waitFor();
      await page.reload();
      await page.getByLabel("Room", { exact: true }).fill(room);
      await page.getByLabel("Room", { exact: true }).press("Enter");
      await page.getByRole("status").filter({ hasText: `Connected to #${room} as ${guest}` }).waitFor();
      assert.ok(urls.length >= 3, `${urls.length} connections`);
      assert.deepEqual(new Set(urls.map((u) => new URL(u).searchParams.get("name"))), new Set([guest]), "every connection asked for the same name");
      await caughtUp(page);
      assert.ok(await page.locator("#messages li.message.mine", { hasText: "a guest speaks" }).count(), "its replayed message is its own");
    } finally {
      await page.close();
      await watcher.close();
    }
  });

  it("shows the token's name (not a typed one) on a stack with auth on, and says how to get a token when there is none", async () => {
    const prod = await localStack([], "prod");
    const prodUrl = /Chat page: (\S+)/.exec(prod.logs())![1];
    const opened: Page[] = [];
    try {
      // No token: told what to do, and no connection is tried.
      const none = await openPage(browser, WIDTHS[1]);
      opened.push(none);
      const sockets: string[] = [];
      none.on("websocket", (ws) => sockets.push(ws.url()));
      await none.goto(prodUrl);
      await none.locator("#token-help").waitFor();
      assert.match((await none.locator("#token-command").textContent())!, /^npm run -s token -- --stack prod --local --name <you>$/);
      assert.equal(await none.getByLabel("Name", { exact: true }).isVisible(), false, "no name to type: it comes from the token");
      await none.getByLabel("Room", { exact: true }).press("Enter");
      await none.getByRole("alert").filter({ hasText: "This stack needs a token" }).waitFor();
      assert.deepEqual(sockets, []);

      // dana's token, with ?name=notdana in the link: the page says dana, as the server does.
      const dana = await openPage(browser, WIDTHS[0]);
      opened.push(dana);
      await dana.goto(`${prodUrl}?name=notdana&token=${prod.token({ name: "dana" })}`);
      await dana.getByLabel("Room", { exact: true }).press("Enter");
      await dana.getByRole("status").filter({ hasText: "Connected to #general as dana" }).waitFor();
      assert.equal(await dana.locator("#me").textContent(), "dana");
      const erin = await openPage(browser, WIDTHS[1]);
      opened.push(erin);
      await erin.goto(`${prodUrl}?token=${prod.token({ name: "erin" })}`);
      await erin.getByLabel("Room", { exact: true }).press("Enter");
      await erin.getByRole("status").filter({ hasText: "Connected to #general as erin" }).waitFor();
      await caughtUp(erin);
      await sayStored(dana, "signed, dana");
      assert.equal(await dana.locator("#messages li.message.mine", { hasText: "signed, dana" }).locator(".from").textContent(), "dana");
      const seen = erin.locator("#messages li.message", { hasText: "signed, dana" });
      await seen.waitFor();
      assert.equal(await seen.locator(".from").textContent(), "dana");
      await erin.locator('#members li[data-name="dana"]').waitFor({ state: "attached" });
      assert.equal(await erin.locator('#members li[data-name="notdana"]').count(), 0);
    } finally {
      for (const page of opened) await page.close().catch(() => undefined);
      await prod.stop();
    }
  });

  it("shows every message after the stack restarts (with its data kept), including one typed while it was down", async () => {
    const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), "ws-chat-browser-data-"));
    let restartable = await localStack(["--data-dir", dataDir]);
    const port = new URL(restartable.outputs.url).port;
    const base = /Chat page: (\S+)/.exec(restartable.logs())![1];
    const room = `restart-${Date.now()}`;
    const rae = await openPage(browser, WIDTHS[0]);
    const sol = await openPage(browser, WIDTHS[1]);
    try {
      await enter(rae, base, "rae", room, { query: "reconnectMs=500" });
      await enter(sol, base, "sol", room, { query: "reconnectMs=500" });
      await sayStored(rae, "before 1");
      await sayStored(sol, "before 2");
      await rae.locator("#messages li.message", { hasText: "before 2" }).waitFor();
      await restartable.stop();
      await rae.getByRole("status").filter({ hasText: "Disconnected. Reconnecting" }).waitFor();
      await say(rae, "while it was down");
      await rae.locator("#messages li.message.pending", { hasText: "while it was down" }).waitFor();
      restartable = await localStack(["--data-dir", dataDir, "--port", port]);
      await rae.locator("#messages li.message.mine[data-cursor]:not(.pending)", { hasText: "while it was down" }).waitFor({ timeout: 90_000 });
      await sol.getByRole("status").filter({ hasText: `Connected to #${room}` }).waitFor({ timeout: 90_000 });
      await sayStored(sol, "after");
      const expected = ["before 1", "before 2", "while it was down", "after"];
      for (const page of [rae, sol]) {
        await page.locator("#messages li.message", { hasText: "after" }).waitFor();
        await page.locator("#messages li.message", { hasText: "while it was down" }).waitFor();
        assert.deepEqual(await lines(page), expected, "each once, in order");
        assert.equal(await page.getByText("history was reset").count(), 0, "the same stream (its data was kept)");
      }
      // A fresh page replays them all too.
      const later = await enter(await openPage(browser, WIDTHS[1]), base, "tia", room);
      assert.deepEqual(await lines(later), expected);
      await later.close();
    } finally {
      await rae.close();
      await sol.close();
      await restartable.stop();
      fs.rmSync(dataDir, { recursive: true, force: true });
    }
  });

  describe("against a scripted server", () => {
    it("applies replayed edits and deletes only to messages shown and not deleted, and shows joins, leaves and deleted messages", async () => {
      const server = await scriptedServer(
        () => [],
        () => [
          event(1, "message", "zed", { message: "original" }),
          event(2, "edit", "zed", { target: cursorOf(1), message: "improved" }),
          event(3, "message", "zed", { message: "", deleted: true }),
          event(4, "edit", "zed", { target: cursorOf(3), message: "edit of a deleted one" }),
          event(5, "edit", "zed", { target: "0000000000000000", message: "edit of one not loaded" }),
          event(6, "message", "zed", { message: "kept" }),
          event(7, "edit", "zed", { target: cursorOf(6), message: "", deleted: true }),
          event(8, "join", "yan"),
          event(9, "message", "yan", { message: "hi\nthere <b>not bold</b> javascript:alert(1)" }),
          event(10, "leave", "yan"),
          { type: "tombstone", room: "r", cursor: cursorOf(11), epoch: "E1" },
          historyEnd(11, "E1"),
        ],
      );
      try {
        const page = await enter(await openPage(browser, WIDTHS[0]), server.url, "me", "r");
        await page.locator('#messages[data-settled="11"]').waitFor({ state: "attached" });
        assert.deepEqual(await lines(page), ["improved", "kept", "hi\nthere <b>not bold</b> javascript:alert(1)"]);
        assert.ok(await page.locator(`li.message.is-edited[data-cursor="${cursorOf(1)}"] .edited`).isVisible());
        assert.equal(await page.locator(`li.message[data-cursor="${cursorOf(6)}"]`).getAttribute("class").then((c) => c!.includes("is-edited")), false, "an edit with deleted:true changes nothing");
        assert.equal(await page.locator(`li.message.deleted[data-cursor="${cursorOf(3)}"]`).textContent().then((t) => t!.includes("message deleted")), true);
        assert.equal(await page.locator("#messages b, #messages a").count(), 0, "no markup from the network, no javascript: link");
        const notices = await page.locator("#messages li.presence").evaluateAll((items) => items.map((li) => (li as Browserish).textContent.replace((li as Browserish).querySelector("time").textContent, "").trim()));
        assert.deepEqual(notices, ["yan joined", "yan left"]);
        // Live: a delete of a shown message, an edit of one not shown.
        server.push(event(12, "delete", "zed", { target: cursorOf(1) }));
        server.push(event(13, "edit", "zed", { target: cursorOf(99), message: "nothing" }));
        await page.locator('#messages[data-settled="13"]').waitFor({ state: "attached" });
        await page.locator(`li.message.deleted[data-cursor="${cursorOf(1)}"]`).waitFor();
        assert.deepEqual(await lines(page), ["kept", "hi\nthere <b>not bold</b> javascript:alert(1)"]);
      } finally {
        await server.close();
      }
    });

    it("shows an edit's refusal by its code and puts the text back; a failed send gets a Retry button that sends it again", async () => {
      let n = 0;
      const server = await scriptedServer((send, nth) => {
        if (send.action === "edit") return [{ type: "error", code: "not_author", message: "not yours", id: send.id }];
        if (send.message === "flaky" && nth === 1 && !server.sends.slice(0, -1).some((s) => s.message === "flaky")) return [{ type: "error", code: "rate_limited", message: "too fast", id: send.id }];
        return [{ type: "ack", id: send.id, cursor: cursorOf(++n), epoch: "E1" }];
      });
      try {
        const page = await enter(await openPage(browser, WIDTHS[1]), server.url, "me", "r");
        await sayStored(page, "mine");
        const line = page.locator("#messages li.message.mine", { hasText: "mine" });
        await line.locator(".actions .edit").focus();
        await page.keyboard.press("Enter");
        await line.getByLabel("Edited message").fill("changed");
        await line.getByLabel("Edited message").press("Enter");
        await page.getByRole("alert").filter({ hasText: "Not edited: Only its author can edit or delete a message." }).waitFor();
        await page.locator("#messages li.message:not(.updating) .text", { hasText: /^mine$/ }).waitFor();
        assert.equal(await line.evaluate((li) => (li as Browserish).classList.contains("is-edited")), false);

        await say(page, "flaky");
        const failed = page.locator("#messages li.message.failed", { hasText: "flaky" });
        await failed.waitFor();
        await page.getByRole("alert").filter({ hasText: "You are sending too fast" }).waitFor();
        await failed.getByRole("button", { name: "Retry sending this message" }).click();
        await page.locator("#messages li.message.mine[data-cursor]:not(.failed):not(.pending)", { hasText: "flaky" }).waitFor();
        await page.getByRole("alert").waitFor({ state: "hidden" });
        assert.equal(server.sends.filter((s) => s.message === "flaky").length, 2);
        assert.equal(await page.locator("#messages li.message", { hasText: "flaky" }).count(), 1, "one line, sent again");
      } finally {
        await server.close();
      }
    });

    it("reads the member list page by page, shows a count above the presence limit, expires typing, and takes its name and read marker from the read answer", async () => {
      const server = await scriptedServer(
        () => [],
        () => [event(1, "message", "ann", { message: "one" }), event(2, "message", "ann", { message: "two" }), event(3, "message", "ann", { message: "three" }), historyEnd(3, "E1")],
        (frame) => {
          if (frame.action === "members") {
            return frame.after === undefined
              ? [{ type: "members", room: "r", members: [{ name: "ann", connections: 1 }], next: "ann" }]
              : [{ type: "members", room: "r", members: [{ name: "realme", connections: 2 }], next: null }];
          }
          if (frame.action === "read") {
            const cursor = (frame.cursor as string | undefined) ?? cursorOf(1);
            return [{ type: "read", room: "r", name: "realme", cursor, epoch: "E1", unread: frame.cursor ? 0 : 2, more: false }];
          }
          return [];
        },
      );
      try {
        const page = await enter(await openPage(browser, WIDTHS[0]), server.url, "typedname", "r", { hidden: true });
        await page.locator("#me", { hasText: "realme" }).waitFor();
        await title(page, "(2) ws-chat");
        assert.equal(await page.locator("#unread-divider + li.message .text").textContent(), "two");
        await page.locator('#members li[data-name="realme"]').waitFor();
        assert.deepEqual(await memberNames(page), ["ann", "realme"]);
        assert.equal(await page.locator('#members li[data-name="realme"]').textContent(), "realme (you) ×2");
        const asked = server.frames.filter((f) => f.action === "members");
        assert.deepEqual(asked, [{ action: "members" }, { action: "members", after: "ann" }]);

        // Seen: the marker moves to the last settled cursor, once, never backwards.
        await setVisible(page, true);
        await title(page, "ws-chat");
        const moves = server.frames.filter((f) => f.action === "read" && f.cursor);
        assert.deepEqual(moves, [{ action: "read", cursor: cursorOf(3), epoch: "E1" }]);

        server.push({ type: "members", room: "r", members: null, count: 1234, next: null });
        await page.locator("#members-count", { hasText: "1,234 connected" }).waitFor();
        assert.equal(await page.locator("#member-count").textContent(), "1,234");

        server.push({ type: "typing", room: "r", from: { name: "ann" } });
        await page.locator("#typing", { hasText: "ann is typing…" }).waitFor();
        await page.locator("#typing").filter({ hasText: /^$/ }).waitFor({ state: "attached", timeout: 10_000 }); // expired
        server.push({ type: "typing", room: "r", from: { name: "ann" } });
        server.push({ type: "typing", room: "r", from: { name: "bob" } });
        await page.locator("#typing", { hasText: "ann and bob are typing…" }).waitFor();
        server.push(event(4, "message", "ann", { message: "done typing" }));
        await page.locator("#typing", { hasText: /^bob is typing…$/ }).waitFor({ timeout: 2_500 }); // ann's cleared by her message
        server.push({ type: "typing", room: "r", from: { name: "realme" } });
        assert.equal(await page.locator("#typing", { hasText: "realme" }).count(), 0, "not our own");
      } finally {
        await server.close();
      }
    });

    it("follows prefers-color-scheme", async () => {
      const server = await scriptedServer(() => []);
      try {
        const page = await openPage(browser, WIDTHS[1]);
        await page.emulateMedia({ colorScheme: "dark" });
        await page.goto(server.url);
        const dark = await page.evaluate(() => (globalThis as Browserish).getComputedStyle((globalThis as Browserish).document.body).backgroundColor);
        await page.emulateMedia({ colorScheme: "light" });
        const light = await page.evaluate(() => (globalThis as Browserish).getComputedStyle((globalThis as Browserish).document.body).backgroundColor);
        assert.deepEqual([dark, light], ["rgb(21, 23, 26)", "rgb(255, 255, 255)"]);
        await page.close();
      } finally {
        await server.close();
      }
    });

    it("takes the screenshots of both widths (to a temporary folder; UPDATE_SCREENSHOTS=1 writes docs/screenshots/)", async () => {
      // A morning's conversation: yesterday's messages, a join, an edit, a deletion, links, a
      // multi-line message, grouping, the unread divider, the member list and someone typing.
      const today = new Date();
      today.setHours(9, 12, 0, 0);
      const t0 = today.getTime() - 86_400_000;
      const at = (n: number, minutes: number, type: string, name: string, extra: Record<string, unknown> = {}) => event(n, type, name, extra, "E1", t0 + minutes * 60_000);
      const day = 24 * 60;
      const frames = [
        at(1, 0, "join", "ava"),
        at(2, 1, "message", "ava", { message: "Release notes for 2.4 are up: https://example.com/releases/2.4" }),
        at(3, 2, "message", "ava", { message: "Shout if anything reads oddly." }),
        at(4, 9, "message", "ben", { message: "Two things:\n1. the link in step 3 is stale\n2. a typo in the title" }),
        at(5, 11, "message", "dana", { message: "Both fixed, thanks!" }),
        at(6, 12, "edit", "dana", { target: cursorOf(5), message: "Both fixed (and the changelog too), thanks!" }),
        at(7, day + 2, "join", "cy"),
        at(8, day + 3, "message", "cy", { message: "", deleted: true }),
        at(9, day + 4, "message", "cy", { message: "Morning! Is 2.4 going out today?" }),
        at(10, day + 6, "message", "ava", { message: "Yes, at noon: https://example.com/status" }),
        historyEnd(10, "E1"),
      ];
      const server = await scriptedServer(
        () => [],
        () => frames,
        (frame) => {
          if (frame.action === "members") return [{ type: "members", room: "releases", members: ["ava", "ben", "cy", "dana"].map((name) => ({ name, connections: 1 })), next: null }];
          if (frame.action === "read") return [{ type: "read", room: "releases", name: "dana", cursor: cursorOf(6), epoch: "E1", unread: 2, more: false }];
          return [];
        },
      );
      const dir = screenshotDir();
      try {
        for (const size of WIDTHS) {
          const page = await openPage(browser, size);
          const problems: string[] = [];
          page.on("console", (m) => m.type() === "error" && !m.location().url.endsWith("/favicon.ico") && problems.push(m.text()));
          page.on("pageerror", (e) => problems.push(String(e)));
          await enter(page, server.url, "dana", "releases", { hidden: true });
          await page.locator("#unread-divider").waitFor();
          server.push({ type: "typing", room: "releases", from: { name: "ben" } });
          await page.locator("#typing", { hasText: "ben is typing…" }).waitFor();
          await box(page).fill("On my way");
          const file = path.join(dir, `chat-${size.width}.png`);
          await page.screenshot({ path: file });
          assert.ok(fs.statSync(file).size > 10_000);
          assert.deepEqual(problems, [], "no script error and no Content-Security-Policy violation");
          await page.close();
        }
      } finally {
        await server.close();
      }
    });
  });
});
