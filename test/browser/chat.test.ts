/**
 * The chat page in real headless Chromium (the one support.ts finds, driven by playwright-core), against a local
 * stack: two pages in one room and one in another, a dropped connection, the token's keeping, and
 * the delivery rules against a scripted server. The features of issue 13 (presence, typing, edits,
 * read markers, the frame at two widths, screenshots) are in chat-client.test.ts.
 */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { Browser, Page } from "playwright-core";
import { signRequest } from "../../handlers/shared/aws-http";
import { E2EStack, localStack } from "../e2e/stack";
import { Browserish, launch, scriptedServer } from "./support";

describe("the chat page in Chromium", function () {
  this.timeout(120_000);
  let stack: E2EStack;
  let browser: Browser;
  let pageUrl: string;
  const room = `lobby-${Date.now()}`;

  before(async function () {
    browser = await launch(); // first, so a missing browser fails before a stack starts
    stack = await localStack();
    pageUrl = /Chat page: (\S+)/.exec(stack.logs())![1];
  });
  after(async () => {
    await browser?.close();
    await stack?.stop();
  });

  async function join(name: string, roomName: string, query = "", base = pageUrl): Promise<Page> {
    const page = await browser.newPage({ viewport: { width: 900, height: 640 } });
    await page.goto(`${base}?reconnectMs=2500${query}`);
    await page.getByLabel("Name", { exact: true }).fill(name);
    await page.getByLabel("Room", { exact: true }).fill(roomName);
    await page.getByLabel("Room", { exact: true }).press("Enter"); // keyboard only
    await page.getByRole("status").filter({ hasText: `Connected to #${roomName}` }).waitFor();
    return page;
  }

  async function say(page: Page, text: string) {
    await page.getByLabel("Message", { exact: true }).fill(text);
    await page.getByLabel("Message", { exact: true }).press("Enter");
  }

  const lines = (page: Page) => page.locator("#messages li:not(.system) .text").allTextContents();

  it("shows messages only in their room, with who sent them", async () => {
    const ann = await join("ann", room);
    const bo = await join("bo", room);
    const cy = await join("cy", `elsewhere-${Date.now()}`);
    await say(ann, "hello from ann");
    await bo.locator("#messages li", { hasText: "hello from ann" }).waitFor();
    assert.equal(await bo.locator("#messages li", { hasText: "hello from ann" }).locator(".from").textContent(), "ann");
    await say(cy, "only for the other room");
    await ann.locator("#messages li", { hasText: "hello from ann" }).and(ann.locator(":not(.pending)")).waitFor(); // acknowledged
    await bo.waitForTimeout(500);
    assert.deepEqual(await lines(bo), ["hello from ann"]);
    assert.deepEqual(await lines(cy), ["only for the other room"]);
    await cy.close();
  });

  it("must not submit the join form as a navigation while config.json loads: an Enter typed then is held, and joins once the page is ready", async () => {
    const page = await browser.newPage({ viewport: { width: 900, height: 640 } });
    let release!: () => void;
    const released = new Promise<void>((resolve) => (release = resolve));
    await page.route("**/config.json", async (route) => {
      await released;
      await route.continue();
    });
    await page.goto(pageUrl);
    await page.getByLabel("Name", { exact: true }).fill("early");
    await page.getByLabel("Room", { exact: true }).fill(room);
    await page.getByLabel("Room", { exact: true }).press("Enter");
    const address = page.url();
    release();
    await page.getByRole("status").filter({ hasText: `Connected to #${room}` }).waitFor();
    assert.equal(page.url(), address, "no navigation: the typed name, room and token never went into an address");
    assert.doesNotMatch(page.url(), /name=early/);
    await page.close();
  });

  it("tells a page that lost its connection, reconnects, and shows exactly what it missed", async () => {
    const ann = await join("ann2", room);
    const bo = await join("bo2", room);
    await say(ann, "before the drop");
    await bo.locator("#messages li", { hasText: "before the drop" }).waitFor();
    // The server drops bo2 (API Gateway's DeleteConnection, on the local stack's @connections API).
    const dropped = (await stack.scanConnections()).filter((c) => c.name === "bo2");
    assert.equal(dropped.length, 1, "bo2 has one connection");
    // Signed with the operator's key: the local stack checks signatures as AWS does.
    const url = new URL(`${stack.outputs.connectionsUrl}/${encodeURIComponent(String(dropped[0].connectionId))}`);
    const headers = signRequest({ method: "DELETE", url, headers: {}, body: "", service: "execute-api", region: String(stack.outputs.region), credentials: { accessKeyId: "local", secretAccessKey: "local" } });
    const deleted = await fetch(url, { method: "DELETE", headers });
    assert.equal(deleted.status, 204);
    await bo.getByRole("status").filter({ hasText: "Disconnected. Reconnecting" }).waitFor();
    await say(ann, "missed one");
    await say(ann, "missed two");
    await ann.locator("#messages li.mine:not(.pending)", { hasText: "missed two" }).waitFor(); // stored
    await bo.getByRole("status").filter({ hasText: "Connected to" }).waitFor();
    await bo.locator("#messages li[data-replayed]", { hasText: "missed two" }).waitFor();
    const shown = await lines(bo);
    for (const text of ["before the drop", "missed one", "missed two"]) assert.equal(shown.filter((t) => t === text).length, 1, text);
    assert.ok(shown.indexOf("missed one") < shown.indexOf("missed two"), "in order");
    assert.equal(await bo.locator("#messages li[data-replayed]", { hasText: "missed one" }).count(), 1, "came from history");

  });

  it("refuses a too-long message before sending it (an inline error, the counter over the limit, nothing drawn or sent), and the next send clears the error", async () => {
    const ann = await join("ann3", room);
    const sent: string[] = [];
    ann.on("websocket", (ws) => ws.on("framesent", (f) => sent.push(String(f.payload))));
    await ann.getByLabel("Message", { exact: true }).fill("x".repeat(40_000));
    // The limit counts the frame (README, "Protocol"): the dev stack's 32,000 less the 81 bytes of its envelope.
    await ann.locator("#counter.over").filter({ hasText: "40,000 / 31,919 bytes" }).waitFor();
    await ann.getByLabel("Message", { exact: true }).press("Enter");
    await ann.getByRole("alert").filter({ hasText: "That message is too long: 40,000 bytes, and the limit is 31,919" }).waitFor();
    // (The room's earlier messages come from history meanwhile: only this one must not be drawn.)
    assert.equal(await ann.locator("#messages li.message", { hasText: "xxxxxxxxxx" }).count(), 0, "not drawn");
    assert.equal((await ann.getByLabel("Message", { exact: true }).inputValue()).length, 40_000, "kept in the box, to be shortened");
    await say(ann, "short enough");
    await ann.locator("#messages li.mine:not(.pending)", { hasText: "short enough" }).waitFor();
    await ann.getByRole("alert").waitFor({ state: "hidden" });
    assert.ok(!sent.some((f) => f.includes("xxxxxxxxxx")), "never put on the wire");
  });

  it("resends a send refused as 'unavailable' with the same id until it is acknowledged", async () => {
    // First answer to each id: unavailable (nothing stored); the second: the ack.
    const server = await scriptedServer((send, nth) =>
      nth === 1 ? [{ type: "error", code: "unavailable", message: "the message was not stored; send it again", id: send.id }] : [{ type: "ack", id: send.id, cursor: "0000000000000001" }],
    );
    try {
      const page = await join("eve", "busy", "&resendMs=200", server.url);
      await say(page, "through a busy room");
      await page.getByRole("alert").filter({ hasText: "The server is busy" }).waitFor();
      await page.locator("#messages li:not(.pending):not(.failed)", { hasText: "through a busy room" }).waitFor();
      assert.equal(server.sends.length, 2);
      assert.deepEqual(new Set(server.sends.map((x) => `${x.id}/${x.message}`)).size, 1, "the same id and text, so it is stored once");
      assert.equal(await page.getByRole("alert").isHidden(), true, "the notice goes once the message is acknowledged");
    } finally {
      await server.close();
    }
  });

  it("must not resend a message whose frame closed the connection with 1009: it is marked not sent, and the next one goes out after the reconnect", async () => {
    // API Gateway closes a connection with 1009 on a frame over its 32 KB quota. This server does so
    // at 32,000 bytes, below the 32,768 its config.json allows, as AWS would if its KB were 1,000 bytes.
    const big = "x".repeat(32_000);
    const server = await scriptedServer((send, _nth, ws) => {
      if (send.message === big) {
        ws.close(1009, "Message too big");
        return [];
      }
      return [{ type: "ack", id: send.id, cursor: "0000000000000001", epoch: "E1" }];
    });
    try {
      const page = await join("gil", "frames", "&resendMs=50", server.url);
      await say(page, big);
      await page.locator("#messages li.failed", { hasText: "xxxxxxxxxx" }).waitFor();
      await page.getByRole("status").filter({ hasText: "Connected to" }).waitFor();
      await say(page, "after it");
      await page.locator("#messages li:not(.pending):not(.failed)", { hasText: "after it" }).waitFor();
      assert.deepEqual(server.sends.map((s) => (s.message === big ? "big" : s.message)), ["big", "after it"], "sent once, never again after the reconnect");
      assert.ok(server.connections.length >= 2, "the page reconnected");
    } finally {
      await server.close();
    }
  });

  it("sends one message at a time, in the order typed, and marks failed exactly the send a refusal names", async () => {
    // "first" is refused as unavailable once, then finally as rate_limited; "second" is acknowledged.
    const server = await scriptedServer((send, nth) =>
      send.message === "first"
        ? [nth === 1 ? { type: "error", code: "unavailable", message: "busy", id: send.id, retryAfterMs: 50 } : { type: "error", code: "rate_limited", message: "too fast", id: send.id }]
        : [{ type: "ack", id: send.id, cursor: "0000000000000001", epoch: "E1" }],
    );
    try {
      const page = await join("fay", "ids", "&resendMs=50", server.url);
      await say(page, "first");
      await say(page, "second");
      await page.locator("#messages li.failed", { hasText: "first" }).waitFor();
      await page.locator("#messages li:not(.pending):not(.failed)", { hasText: "second" }).waitFor();
      assert.deepEqual(server.sends.map((s) => s.message), ["first", "first", "second"], "second waited until first was answered for good");
    } finally {
      await server.close();
    }
  });

  it("fills a gap in live delivery from history, skips a tombstone, and starts over, saying so, when the room's epoch changes", async () => {
    const msg = (n: number, text: string, epoch = "E1") => ({ type: "message", room: "gaps", from: { name: "gus" }, message: text, ts: 1_700_000_000_000 + n, id: `s-${epoch}-${n}`, cursor: String(n).padStart(16, "0"), epoch });
    const end = (n: number | null, epoch: string | null) => ({ type: "history-end", cursor: n === null ? null : String(n).padStart(16, "0"), more: false, epoch });
    const server = await scriptedServer(
      () => [],
      (request, nth) => {
        if (nth === 1) return [end(null, null)]; // an empty room at first
        if (request.since) return [{ type: "tombstone", room: "gaps", cursor: "0000000000000002", epoch: "E1" }, msg(3, "three"), end(3, "E1")];
        return [msg(1, "fresh", "E2"), end(1, "E2")]; // the latest page of the new stream
      },
    );
    try {
      const page = await join("hal", "gaps", "", server.url);
      await page.getByRole("status").filter({ hasText: "Connected" }).waitFor();
      server.push(msg(1, "one"));
      server.push(msg(3, "three")); // 2 never comes live: the page asks history since 1
      await page.locator('#messages[data-settled="3"]').waitFor({ state: "attached" }); // settled through the tombstone
      assert.deepEqual(await page.locator("#messages li .text").allTextContents(), ["one", "three"], "the tombstone shows nothing, three shows once");
      assert.equal(server.histories[1].since, "0000000000000001", "asked since the last settled cursor");
      server.push(msg(1, "fresh", "E2")); // numbering started again on the server
      await page.getByText("history was reset").waitFor();
      await page.locator("#messages li", { hasText: "fresh" }).waitFor();
      assert.deepEqual(await page.locator("#messages li .text").allTextContents(), ["fresh"], "the old stream's messages are gone");
    } finally {
      await server.close();
    }
  });

  it("asks for a token on a stack with auth on, and explains a refused one", async () => {
    const prod = await localStack([], "prod");
    try {
      const page = await browser.newPage();
      const url = /Chat page: (\S+)/.exec(prod.logs())![1];
      await page.goto(`${url}?token=not-a-valid-token`);
      await page.getByLabel("Token", { exact: true }).waitFor();
      await page.getByLabel("Room", { exact: true }).press("Enter");
      await page.getByRole("alert").filter({ hasText: "the token is missing, expired, or not valid" }).waitFor();
      // Not retried forever: it says so once, with how to get a token, and waits for a new one.
      await page.getByRole("status").filter({ hasText: "Not connected" }).waitFor();
      await page.locator("#token-help", { hasText: "npm run -s token -- --stack prod --local --name <you>" }).waitFor();
      await page.getByLabel("Token", { exact: true }).fill(prod.token({ name: "dana" }));
      await page.getByLabel("Room", { exact: true }).press("Enter");
      await page.getByRole("status").filter({ hasText: "Connected to #general" }).waitFor();
    } finally {
      await prod.stop();
    }
  });
  describe("keeping the token on the page", () => {
    it("must not connect where a link's ?url= points when the site has a config.json: it connects to the config's url and says the link's was ignored", async () => {
      const page = await browser.newPage();
      const sockets: string[] = [];
      page.on("websocket", (ws) => sockets.push(ws.url()));
      await page.goto(`${pageUrl}?url=ws://127.0.0.1:1/evil`);
      const opened = page.waitForEvent("websocket");
      await page.locator("#notice").filter({ hasText: "was ignored" }).waitFor({ timeout: 10_000 }); // also: the page has started
      await page.getByLabel("Room", { exact: true }).fill(`links-${Date.now()}`);
      await page.getByLabel("Room", { exact: true }).press("Enter");
      assert.ok((await opened).url().startsWith(`${stack.outputs.url}?`), `connected to ${(await opened).url()}`);
      await page.getByRole("status").filter({ hasText: "Connected to #links-" }).waitFor();
      assert.deepEqual(sockets.filter((u) => !u.startsWith(`${stack.outputs.url}?`)), [], "no other server was tried");
      assert.match((await page.locator("#notice").textContent())!, new RegExp(`its own chat server, ${new URL(stack.outputs.url).host.replace(/\./g, "\\.")}`));
      await page.close();
    });

    it("must not keep a ?token= in the address bar or send it in a Referer: it is kept for the tab only, and a reload in the tab reconnects with it", async () => {
      const server = await scriptedServer(() => []);
      const token = `tok-${randomBytes(12).toString("hex")}`;
      const context = await browser.newContext();
      try {
        const page = await context.newPage();
        await page.goto(`${server.url}?room=vault&token=${token}`);
        await page.getByLabel("Token", { exact: true }).waitFor(); // shown once the page has started
        assert.equal(await page.evaluate(() => (globalThis as Browserish).location.href), `${server.url}?room=vault`);
        const stored = await page.evaluate(() => Object.values((globalThis as Browserish).sessionStorage) as string[]);
        assert.deepEqual(stored.map((v) => JSON.parse(v)), [{ token, url: server.url.replace(/^http/, "ws").replace(/\/$/, "") }], "kept in sessionStorage, with the server it is for");
        await page.getByLabel("Room", { exact: true }).press("Enter");
        await page.getByRole("status").filter({ hasText: "Connected to #vault" }).waitFor();

        await page.reload();
        await page.getByLabel("Token", { exact: true }).waitFor();
        assert.ok(!page.url().includes(token), "not back in the address bar");
        await page.getByLabel("Room", { exact: true }).press("Enter");
        await page.getByRole("status").filter({ hasText: "Connected to #vault" }).waitFor();
        assert.deepEqual(server.connections.map((u) => new URL(u, "ws://x").searchParams.get("token")), [token, token], "both connections carried it");

        const otherTab = await context.newPage();
        await otherTab.goto(`${server.url}?room=vault`);
        await otherTab.getByLabel("Room", { exact: true }).waitFor();
        assert.deepEqual(await otherTab.evaluate(() => Object.values((globalThis as Browserish).sessionStorage)), [], "a new tab does not have it");
        assert.equal(await otherTab.getByLabel("Token", { exact: true }).isHidden(), true);
        assert.deepEqual(server.referers.filter((r) => r.includes(token)), [], "no request named the tokened address in its Referer");
      } finally {
        await context.close();
        await server.close();
      }
    });

    it("must not let the page connect anywhere but its stack's url: the Content-Security-Policy is served and blocks another server", async () => {
      const page = await browser.newPage();
      const response = (await page.goto(pageUrl))!;
      const headers = response.headers();
      const csp = headers["content-security-policy"];
      assert.ok(csp, "a Content-Security-Policy header");
      const connectSrc = csp.split(";").map((d) => d.trim()).find((d) => d.startsWith("connect-src "));
      assert.equal(connectSrc, `connect-src 'self' ${stack.outputs.url}`);
      assert.deepEqual([headers["x-frame-options"], headers["referrer-policy"], headers["x-content-type-options"]], ["DENY", "no-referrer", "nosniff"]);
      const violation = await page.evaluate(
        () =>
          new Promise<{ directive: string; blocked: string }>((resolve) => {
            const g = globalThis as Browserish;
            g.document.addEventListener("securitypolicyviolation", (e: Browserish) => resolve({ directive: e.effectiveDirective, blocked: e.blockedURI }), { once: true });
            try {
              new g.WebSocket("ws://127.0.0.1:9/x");
            } catch {
              // a browser may also throw SecurityError at once; the violation event is the proof
            }
          }),
      );
      assert.deepEqual(violation, { directive: "connect-src", blocked: "ws://127.0.0.1:9/x" });
      await page.close();
    });

    it("must not hold the token or the socket in any global", async () => {
      const server = await scriptedServer(() => []);
      const token = `tok-${randomBytes(12).toString("hex")}`;
      try {
        const page = await browser.newPage();
        await page.goto(`${server.url}?room=globals&token=${token}`);
        await page.getByLabel("Token", { exact: true }).waitFor();
        await page.getByLabel("Room", { exact: true }).press("Enter");
        await page.getByRole("status").filter({ hasText: "Connected to #globals" }).waitFor();
        // Every own key of window, and two levels into what it holds (a socket's url, a URL's href);
        // not sessionStorage, the one place the token is meant to be.
        const leaks = await page.evaluate((token) => {
          const g = globalThis as Browserish;
          const found: string[] = [];
          const seen = new Set<unknown>();
          const visit = (value: unknown, at: string, depth: number): void => {
            if (typeof value === "string") {
              if (value.includes(token)) found.push(at);
              return;
            }
            if (value === null || (typeof value !== "object" && typeof value !== "function") || seen.has(value) || value === g || value instanceof g.Node || value instanceof g.Storage) return;
            seen.add(value);
            const v = value as Browserish;
            if (value instanceof g.WebSocket) visit(v.url, `${at}.url`, 0);
            if (value instanceof g.URL || value instanceof g.Location) visit(v.href, `${at}.href`, 0);
            if (depth === 0) return;
            for (const key of Object.keys(v)) {
              let inner: unknown;
              try {
                inner = v[key];
              } catch {
                continue;
              }
              visit(inner, `${at}.${key}`, depth - 1);
            }
          };
          for (const key of Object.keys(g)) {
            let value: unknown;
            try {
              value = g[key];
            } catch {
              continue;
            }
            visit(value, key, 2);
          }
          return found;
        }, token);
        assert.deepEqual(leaks, []);
        assert.ok(server.connections.some((u) => u.includes(token)), "the page did use the token");
        await page.close();
      } finally {
        await server.close();
      }
    });
  });
});
