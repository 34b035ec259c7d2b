// ws-chat in the browser: a chat page that follows one room, with presence, typing, edits and
// deletes, read markers and unread counts. No framework, no build step.
//
// Delivery (room-stream.js, loaded first): the room's sequence is followed and its gaps filled from
// `history` (RoomStream); sends, edits and deletes go one at a time, each after the previous is
// acknowledged, so the server stores them in the order made (OrderedSender). On a dropped
// connection the page reconnects with backoff, asks `history` since the last settled cursor and
// resends what was not acknowledged, with the same id. A send refused as `unavailable` is resent
// after the server's `retryAfterMs`, or a growing pause. When the room's epoch changes (its
// numbering started again) the page says so and reloads the room.
//
// Identity: the page connects with the name it will be known by, so it can label its own messages
// before any answer: a token's name (the server takes the name from the token and ignores `?name=`;
// the page reads the same claim and sends it as `?name=` too, so a stack without auth agrees), else
// the name typed, else a guest name the page picks once per tab (`guest-xxxx`, as the server would,
// kept in sessionStorage and sent as `?name=` on every reconnect). The `read` answer, asked on every
// connect, carries the name as the server knows it: the page adopts it if it differs.
//
// Tokens: a `?token=` leaves the address bar at once and is kept for this tab only; nothing global
// holds it or the socket. The server: config.json's `url` when the site has one (a link's `?url=`
// is then ignored, and the Content-Security-Policy refuses any other server anyway); `?url=` only
// where there is no config.json (the page opened from disk or a plain file server).
//
// Everything from the network is drawn with textContent and createElement (links are <a> elements
// built from the parsed URL), never as markup.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const params = new URLSearchParams(location.search);

  // First, before any request of this script: take the token out of the address (and so out of
  // the history, bookmarks, shared links and Referer headers) and keep it in sessionStorage, which
  // a reload of this tab keeps and a new tab does not have. The meta referrer in index.html and
  // the Referrer-Policy header cover the requests made before this runs.
  // The token is kept with the server it is for: a later `?url=` (possible only where there is no
  // config.json) cannot make this tab send it to another server.
  const TOKEN_KEY = "ws-chat.token";
  let tokenForThisLoad = "{}"; // where sessionStorage is unavailable (storage blocked): this load only
  function savedToken(url) {
    let saved = {};
    try {
      saved = JSON.parse(sessionStorage.getItem(TOKEN_KEY) || "{}");
    } catch {
      saved = JSON.parse(tokenForThisLoad);
    }
    return saved && typeof saved.token === "string" && (!saved.url || saved.url === url) ? saved.token : "";
  }
  function saveToken(token, url) {
    tokenForThisLoad = JSON.stringify(token ? { token, url } : {});
    try {
      if (token) sessionStorage.setItem(TOKEN_KEY, tokenForThisLoad);
      else sessionStorage.removeItem(TOKEN_KEY);
    } catch {
      // storage blocked: the token lasts until the page is left
    }
  }
  if (params.has("token")) {
    saveToken(params.get("token").trim(), null); // bound to the server once the config names it
    params.delete("token");
    const clean = new URL(location.href);
    clean.search = params.toString();
    history.replaceState(history.state, "", clean);
  }

  const { RoomStream, OrderedSender, pad, frameBytes, sendFrame, DEFAULT_MAX_MESSAGE_BYTES } = window.RoomStream;
  const RECONNECT_BASE_MS = Number(params.get("reconnectMs")) || 1000;
  const RECONNECT_MAX_MS = 30000;
  const RESEND_BASE_MS = Number(params.get("resendMs")) || 1000;
  /** Typing frames: at most one per this long (the server drops surplus anyway). */
  const TYPING_EVERY_MS = 2000;
  /** Someone's "is typing…" goes after this long without another typing frame. */
  const TYPING_SHOWN_MS = 3000;
  /**
   * The read marker moves at most once per this long. Each move spends one unit of the
   * connection's budget, the one messages spend (10 per 10 s on prod): a reader in a busy room
   * spends at most 2 of them per 10 s on it.
   */
  const READ_EVERY_MS = 5000;
  /** Consecutive messages of one sender closer than this share one name line. */
  const GROUP_GAP_MS = 5 * 60 * 1000;
  /** Within this many pixels of the end counts as "at the bottom". */
  const BOTTOM_SLACK_PX = 48;
  const TITLE = "ws-chat";
  const NAME_PATTERN = /^[\p{L}\p{N}_.-]{1,32}$/u;
  const CURSOR_PATTERN = /^\d{16}$/;
  const GUEST_KEY = "ws-chat.guest";

  const state = {
    config: null, socket: null, name: "", room: "", joined: false, leaving: false, opened: false, everOpened: false,
    attempts: 0, reconnectTimer: 0, replaying: false,
    /** The largest frame a message or edit may go out in (frameBytes, room-stream.js): config.json's maxMessageBytes. */
    maxFrameBytes: DEFAULT_MAX_MESSAGE_BYTES,
    /** The room's sequence as this page follows it (room-stream.js). */
    stream: null,
    /** Messages, edits and deletes not yet acknowledged, one on the wire at a time (item.kind, item.li). */
    sender: null,
    /** Whether the list follows its end (the user has not scrolled up). */
    stick: true,
    /** Members by name → connections; `count` instead when the room is above the presence limit. */
    members: { map: null, count: null, loading: null, dirty: false, asked: false, resync: 0 },
    typers: new Map(),
    lastTypingAt: 0,
    /**
     * The read marker: `marker` the server's (a number, null: none yet), `known` once this
     * connection's first answer came, `divider` the marker the "new messages" line follows (set
     * once per join), `unread`/`more` the server's count, `sent` the highest cursor asked for.
     */
    read: { marker: null, known: false, divider: undefined, unread: 0, more: false, sent: 0, lastAt: 0, timer: 0, asked: "", toDivider: false },
    passTimer: 0,
    errorKind: "",
  };

  // ---------------------------------------------------------------- small helpers

  const fmt = (n) => n.toLocaleString("en-US");

  function newId() {
    if (crypto.randomUUID) return crypto.randomUUID();
    return [...crypto.getRandomValues(new Uint8Array(16))].map((b) => b.toString(16).padStart(2, "0")).join("");
  }

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function setStatus(text, offline) {
    $("status").textContent = text;
    $("status").classList.toggle("offline", Boolean(offline));
  }

  /** The error banner; `kind` names what it is about, so that thing's fix can clear it. */
  function showError(text, kind) {
    $("error").textContent = text;
    $("error").hidden = !text;
    state.errorKind = text ? kind || "" : "";
  }

  function showNotice(text) {
    $("notice").textContent = text;
    $("notice").hidden = !text;
  }

  function hint(text) {
    $("compose-hint").textContent = text;
  }

  /** Every cursor up to this one is settled: a fact tests and the curious can read from the DOM. */
  function showSettled() {
    $("messages").dataset.settled = state.stream && state.stream.cursor !== null ? String(state.stream.cursor) : "";
  }

  const ERRORS = {
    message_too_large: "That message is too long.",
    rate_limited: "You are sending too fast; that message was not sent.",
    invalid_message: "Empty messages cannot be sent.",
    unknown_connection: "The server lost this connection; reconnecting.",
    unavailable: "The server is busy; your message will be sent again shortly.",
    invalid_target: "That message cannot be changed.",
    not_found: "That message is no longer in this room.",
    not_author: "Only its author can edit or delete a message.",
    edit_window_passed: "That message is too old to edit now.",
    message_deleted: "That message was deleted.",
    too_many_edits: "That message has been edited too many times.",
  };
  /** Refusals of an edit or delete: final for that request (room-stream.js's FINAL lists sendmessage's). */
  const CHANGE_REFUSALS = ["invalid_target", "not_found", "not_author", "edit_window_passed", "message_deleted", "too_many_edits", "invalid_message", "message_too_large", "rate_limited"];

  function describe(error) {
    return ERRORS[error.code] || error.message || "The server refused that.";
  }

  // ---------------------------------------------------------------- identity

  /** The name a v2 token proves (its payload's `n`), or "" when it is not one. Read, not verified: the server verifies. */
  function tokenName(token) {
    const match = /^v2\.([A-Za-z0-9_-]+)\./.exec(token || "");
    if (!match) return "";
    try {
      const b64 = match[1].replace(/-/g, "+").replace(/_/g, "/");
      const binary = atob(b64 + "=".repeat((4 - (b64.length % 4)) % 4));
      const payload = JSON.parse(new TextDecoder().decode(Uint8Array.from(binary, (c) => c.charCodeAt(0))));
      return payload && typeof payload.n === "string" && NAME_PATTERN.test(payload.n) ? payload.n : "";
    } catch {
      return "";
    }
  }

  let guestForThisLoad = "";
  function storedGuest() {
    let name = guestForThisLoad;
    try {
      name = sessionStorage.getItem(GUEST_KEY) || name;
    } catch {
      // storage blocked: this load only
    }
    return /^guest-[0-9a-f]{4}$/.test(name) ? name : "";
  }
  /** This tab's guest name: picked once, kept across reconnects and reloads of the tab. */
  function guestName() {
    let name = storedGuest();
    if (!name) name = `guest-${[...crypto.getRandomValues(new Uint8Array(2))].map((b) => b.toString(16).padStart(2, "0")).join("")}`;
    guestForThisLoad = name;
    try {
      sessionStorage.setItem(GUEST_KEY, name);
    } catch {
      // storage blocked: this load only
    }
    return name;
  }

  function showIdentity() {
    $("me").textContent = state.name;
    $("here").textContent = `#${state.room}`;
  }

  /** The server knows us by another name than the one we connected with: label by that one. */
  function adoptName(name) {
    if (!NAME_PATTERN.test(name) || name === state.name) return;
    state.name = name;
    showIdentity();
    if (state.opened) setStatus(`Connected to #${state.room} as ${state.name}`);
    for (const li of $("messages").querySelectorAll("li.message")) {
      if (!li.dataset.cursor && li.classList.contains("mine")) li.dataset.from = name; // a pending line of ours
      const mine = li.dataset.from === name;
      li.classList.toggle("mine", mine);
      li.querySelector(".from").textContent = li.dataset.from;
      if (mine) ensureActions(li);
    }
    renderMembers();
    schedulePass();
  }

  // ---------------------------------------------------------------- the message list

  const scroller = () => $("scroller");
  const atEnd = () => {
    const s = scroller();
    return s.scrollHeight - s.scrollTop - s.clientHeight <= BOTTOM_SLACK_PX;
  };
  function toBottom() {
    const s = scroller();
    s.scrollTop = s.scrollHeight;
    state.stick = true;
    $("jump").hidden = true;
  }
  /** After the list grew: follow it when at the end, else offer the jump (for others' events). */
  function grew(fromOthers) {
    if (state.stick) scroller().scrollTop = scroller().scrollHeight;
    else if (fromOthers) $("jump").hidden = false;
    schedulePass();
  }

  /** Inserts a line with a cursor in cursor order; lines without one (pending sends) stay last. */
  function place(li) {
    const list = $("messages");
    const cursor = li.dataset.cursor;
    if (!cursor) {
      list.append(li);
      return;
    }
    for (let other = list.lastElementChild; other; other = other.previousElementSibling) {
      if (other !== li && other.dataset.cursor && other.dataset.cursor < cursor) {
        list.insertBefore(li, other.nextElementSibling);
        return;
      }
    }
    list.prepend(li);
  }

  /** The message line at `cursor`, if it is shown. */
  function messageAt(cursor) {
    if (typeof cursor !== "string" || !CURSOR_PATTERN.test(cursor)) return null;
    return $("messages").querySelector(`li.message[data-cursor="${cursor}"]`);
  }

  const LINK = /\bhttps?:\/\/[^\s<>"'`]+/gi;
  /** Text with its http(s) links as <a> elements; every part set with textContent. */
  function fillText(node, text) {
    node.replaceChildren();
    let at = 0;
    for (const match of text.matchAll(LINK)) {
      let url = match[0];
      for (;;) {
        const last = url.slice(-1);
        if (".,;:!?'\"]}*_".includes(last)) url = url.slice(0, -1);
        else if (last === ")" && url.split(")").length > url.split("(").length) url = url.slice(0, -1);
        else break;
      }
      let href = "";
      try {
        const parsed = new URL(url);
        if (parsed.protocol === "http:" || parsed.protocol === "https:") href = parsed.href;
      } catch {
        href = "";
      }
      if (!href) continue;
      if (match.index > at) node.append(text.slice(at, match.index));
      const a = el("a", "", url);
      a.href = href;
      a.target = "_blank";
      a.rel = "noopener noreferrer";
      node.append(a);
      at = match.index + url.length;
    }
    if (at < text.length) node.append(text.slice(at));
  }

  /** A frame's `ts` as a time to show (now, if it is not a number). */
  const when = (ts) => (Number.isFinite(Number(ts)) && Number(ts) > 0 ? Number(ts) : Date.now());

  function timeElement(ts) {
    const time = el("time");
    const date = new Date(when(ts));
    time.dateTime = date.toISOString();
    time.textContent = date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
    time.title = date.toLocaleString([], { dateStyle: "full", timeStyle: "medium" });
    return time;
  }

  /** A message line (textContent only: no markup from the network). */
  function renderMessage({ cursor, ts, name, text, mine, replayed, edited, deleted }) {
    const li = el("li", "message");
    if (cursor) li.dataset.cursor = cursor;
    li.dataset.ts = String(when(ts));
    li.dataset.from = name;
    if (mine) li.classList.add("mine");
    if (replayed) li.dataset.replayed = "true";
    const meta = el("div", "meta");
    meta.append(el("strong", "from", name), timeElement(ts));
    const body = el("div", "body");
    const span = el("span", "text");
    fillText(span, text);
    body.append(span, el("span", "edited", " (edited)"));
    li.append(meta, body);
    if (edited) li.classList.add("is-edited");
    if (mine) ensureActions(li);
    if (deleted) markDeleted(li);
    place(li);
    return li;
  }

  function ensureActions(li) {
    if (li.querySelector(".actions")) return;
    const actions = el("div", "actions");
    const edit = el("button", "edit", "Edit");
    edit.type = "button";
    edit.setAttribute("aria-label", "Edit message");
    const del = el("button", "delete", "Delete");
    del.type = "button";
    del.setAttribute("aria-label", "Delete message");
    actions.append(edit, del);
    li.append(actions);
  }

  function setText(li, text) {
    const span = li.querySelector(".text");
    if (span) fillText(span, text);
  }

  function markDeleted(li) {
    li.classList.add("deleted");
    li.classList.remove("is-edited", "editing", "updating");
    const body = li.querySelector(".body");
    body.replaceChildren(el("span", "deleted-note", "message deleted"));
    for (const node of li.querySelectorAll(".actions, .edit-box")) node.remove();
  }

  function system(text) {
    const li = el("li", "system", text);
    $("messages").append(li);
    grew(false);
    return li;
  }

  // ---------------------------------------------------------------- events of the room's sequence

  function onEvent(frame) {
    const from = frame.from && typeof frame.from.name === "string" ? frame.from.name : "";
    switch (frame.type) {
      case "message": {
        const mine = from === state.name;
        // Ours, replayed, while its send is still waiting for the ack (a resend after a reconnect):
        // the ack will find this line by its cursor and drop the pending one.
        renderMessage({ cursor: frame.cursor, ts: frame.ts, name: from, text: frame.deleted ? "" : String(frame.message), mine, replayed: state.replaying, edited: frame.edited, deleted: frame.deleted });
        stopTyping(from);
        grew(!mine);
        return;
      }
      case "join":
      case "leave": {
        const li = el("li", `system presence ${frame.type}`);
        li.dataset.cursor = frame.cursor;
        li.dataset.ts = String(when(frame.ts));
        li.dataset.name = from;
        if (state.replaying) li.dataset.replayed = "true";
        li.append(el("span", "who", from), ` ${frame.type === "join" ? "joined" : "left"} `, timeElement(frame.ts));
        place(li);
        if (frame.type === "leave") stopTyping(from);
        presenceChanged(frame.type, from);
        grew(from !== state.name);
        return;
      }
      case "edit": {
        // An edit with deleted:true (the message went later), or of a deleted message, changes nothing.
        const li = messageAt(frame.target);
        if (!li || frame.deleted || li.classList.contains("deleted")) return;
        setText(li, String(frame.message));
        li.classList.add("is-edited");
        grew(false);
        return;
      }
      case "delete": {
        const li = messageAt(frame.target);
        if (li) markDeleted(li);
        grew(false);
        return;
      }
      default:
      // a tombstone: a number that holds nothing
    }
  }

  // ---------------------------------------------------------------- the pass: days, groups, divider, unread

  function schedulePass() {
    if (!state.passTimer) state.passTimer = setTimeout(pass, 16);
  }

  const dayLines = new Map();
  function dayKey(ts) {
    const d = new Date(ts);
    return `${d.getFullYear()}-${d.getMonth() + 1}-${d.getDate()}`;
  }
  function dayLabel(ts) {
    const start = (t) => {
      const d = new Date(t);
      d.setHours(0, 0, 0, 0);
      return d.getTime();
    };
    const days = Math.round((start(Date.now()) - start(ts)) / 86400000);
    if (days === 0) return "Today";
    if (days === 1) return "Yesterday";
    const d = new Date(ts);
    return d.toLocaleDateString([], { weekday: "long", day: "numeric", month: "long", ...(d.getFullYear() === new Date().getFullYear() ? {} : { year: "numeric" }) });
  }

  function pass() {
    state.passTimer = 0;
    const list = $("messages");
    placeDivider(list);
    // Day lines before the first item of each day, and groups of one sender's consecutive messages.
    const used = new Set();
    let day = null;
    let previous = null;
    for (const li of [...list.children]) {
      if (li.classList.contains("day")) continue;
      if (li.classList.contains("divider")) {
        previous = null;
        continue;
      }
      const ts = Number(li.dataset.ts);
      if (!ts) {
        previous = null;
        continue;
      }
      const key = dayKey(ts);
      if (key !== day) {
        day = key;
        used.add(key);
        let line = dayLines.get(key);
        if (!line) {
          line = el("li", "day");
          line.append(el("time"));
          dayLines.set(key, line);
        }
        const time = line.firstChild;
        time.dateTime = key;
        time.textContent = dayLabel(ts);
        const before = li.previousElementSibling && li.previousElementSibling.classList.contains("divider") ? li.previousElementSibling : li;
        if (before.previousElementSibling !== line) list.insertBefore(line, before);
        previous = null;
      }
      if (li.classList.contains("message")) {
        const continued = previous !== null && previous.dataset.from === li.dataset.from && ts - Number(previous.dataset.ts) < GROUP_GAP_MS;
        li.classList.toggle("continued", continued);
        previous = li;
      } else {
        previous = null;
      }
    }
    for (const [key, line] of dayLines) {
      if (!used.has(key)) {
        line.remove();
        dayLines.delete(key);
      }
    }
    showUnread(list);
    if (state.stick) scroller().scrollTop = scroller().scrollHeight;
    if (state.read.toDivider && state.read.known && list.dataset.caughtUp) showDivider();
    scheduleRead();
  }

  /** Once per join, after the catch-up: a divider above the last screenful is scrolled to the top. */
  function showDivider() {
    state.read.toDivider = false;
    const divider = $("unread-divider");
    if (!divider) return;
    const s = scroller();
    const top = divider.getBoundingClientRect().top - s.getBoundingClientRect().top + s.scrollTop;
    if (top >= s.scrollHeight - s.clientHeight) return; // in view at the end anyway
    s.scrollTop = Math.max(0, top - 40); // below the sticky day line
    state.stick = atEnd();
    $("jump").hidden = state.stick;
  }

  /** The "new messages" line: before the first message from others after the marker this join found. */
  function placeDivider(list) {
    let divider = $("unread-divider");
    const marker = state.read.divider;
    if (marker === undefined || marker === null) {
      if (divider) divider.remove();
      return;
    }
    let first = null;
    for (const li of list.querySelectorAll("li.message[data-cursor]:not(.mine)")) {
      if (Number(li.dataset.cursor) > marker) {
        first = li;
        break;
      }
    }
    if (!first) {
      if (divider) divider.remove();
      return;
    }
    if (!divider) {
      divider = el("li", "divider");
      divider.id = "unread-divider";
      divider.append(el("span", "", "New messages"));
    }
    if (divider.nextElementSibling !== first) list.insertBefore(divider, first);
  }

  /** The unread count (the server's, or what is shown after the marker if more) in the tab title. */
  function showUnread(list) {
    let unread = 0;
    let more = false;
    if (state.joined) {
      let local = 0;
      if (state.read.marker !== null) {
        for (const li of list.querySelectorAll("li.message[data-cursor]:not(.mine):not(.deleted)")) if (Number(li.dataset.cursor) > state.read.marker) local++;
      }
      unread = Math.max(state.read.unread, local);
      more = state.read.more && unread === state.read.unread;
    }
    const title = unread > 0 ? `(${unread}${more ? "+" : ""}) ${TITLE}` : TITLE;
    if (document.title !== title) document.title = title;
    $("messages").dataset.unread = String(unread);
  }

  // ---------------------------------------------------------------- read markers

  function askRead() {
    state.read.asked = "ask";
    send({ action: "read" });
  }

  function onRead(frame) {
    state.read.asked = "";
    if (typeof frame.name === "string" && frame.name) adoptName(frame.name);
    const cursor = typeof frame.cursor === "string" && CURSOR_PATTERN.test(frame.cursor) ? Number(frame.cursor) : null;
    const sameEpoch = !frame.epoch || !state.stream.epoch || frame.epoch === state.stream.epoch;
    if (cursor === null || state.read.marker === null || cursor >= state.read.marker || !sameEpoch) state.read.marker = cursor;
    $("messages").dataset.read = state.read.marker === null ? "" : String(state.read.marker); // for tests
    state.read.unread = Number(frame.unread) || 0;
    state.read.more = Boolean(frame.more);
    if (!state.read.known) {
      state.read.known = true;
      if (state.read.divider === undefined) state.read.divider = cursor !== null && state.read.unread > 0 ? cursor : null;
    }
    schedulePass();
  }

  /** Moves the marker to the last settled cursor when the page is seen at its end: debounced, forward only. */
  function scheduleRead() {
    if (state.read.timer) return;
    const wait = Math.max(0, state.read.lastAt + READ_EVERY_MS - Date.now());
    state.read.timer = setTimeout(() => {
      state.read.timer = 0;
      markRead();
    }, wait);
  }

  function markRead() {
    const stream = state.stream;
    if (!state.joined || !state.read.known || state.replaying || !stream || stream.epoch === null || stream.cursor === null) return;
    if (document.visibilityState !== "visible" || !state.stick || !atEnd()) return;
    if (!state.socket || state.socket.readyState !== WebSocket.OPEN) return;
    const cursor = stream.cursor;
    if (cursor <= 0 || (state.read.marker !== null && cursor <= state.read.marker) || cursor <= state.read.sent) return;
    state.read.sent = cursor;
    state.read.lastAt = Date.now();
    state.read.asked = "move";
    send({ action: "read", cursor: pad(cursor), epoch: stream.epoch });
  }

  // ---------------------------------------------------------------- presence

  function askMembers(after) {
    const m = state.members;
    if (!after) {
      m.loading = new Map();
      m.dirty = false;
    }
    m.asked = true;
    send(after ? { action: "members", after } : { action: "members" });
  }

  function onMembers(frame) {
    const m = state.members;
    m.asked = false;
    if (frame.members === null) {
      m.loading = null;
      m.map = null;
      m.count = Number(frame.count) || 0;
      return renderMembers();
    }
    if (!Array.isArray(frame.members)) return;
    if (!m.loading) m.loading = new Map();
    for (const member of frame.members) if (member && typeof member.name === "string") m.loading.set(member.name, Number(member.connections) || 1);
    if (typeof frame.next === "string" && frame.next) return askMembers(frame.next);
    m.map = m.loading;
    m.loading = null;
    m.count = null;
    renderMembers();
    // Presence changed while the pages were read: they may or may not hold it; read them again.
    if (m.dirty) askMembers();
  }

  /** A live join or leave: the list follows it (replayed ones are in the list asked after the catch-up). */
  function presenceChanged(type, name) {
    const m = state.members;
    if (state.replaying) return;
    if (m.loading) {
      m.dirty = true;
      return;
    }
    if (!m.map) return;
    const before = m.map.get(name) || 0;
    const n = before + (type === "join" ? 1 : -1);
    if (n > 0) m.map.set(name, n);
    else m.map.delete(name);
    renderMembers();
    // The list has no cursor: a join that raced the list's read may be counted twice (in the list
    // and as an event). Where that matters (a name with more than one connection, so a leave would
    // leave a ghost), read the list again, once things settle; single connections cost nothing.
    if ((type === "join" && before > 0) || (type === "leave" && n > 0)) {
      clearTimeout(m.resync);
      m.resync = setTimeout(() => {
        if (state.joined && !m.loading) askMembers();
      }, 1500);
    }
  }

  function renderMembers() {
    const m = state.members;
    const list = $("members");
    list.replaceChildren();
    let total = "";
    if (m.map) {
      for (const name of [...m.map.keys()].sort()) {
        const li = el("li");
        li.dataset.name = name;
        const connections = m.map.get(name);
        li.append(el("span", "member-name", name));
        if (name === state.name) li.append(el("span", "you", " (you)"));
        if (connections > 1) li.append(el("span", "connections", ` ×${connections}`));
        list.append(li);
      }
      total = String(m.map.size);
    }
    $("members-count").hidden = m.count === null;
    if (m.count !== null) {
      $("members-count").textContent = `${fmt(m.count)} connected: too many to list.`;
      total = fmt(m.count);
    }
    $("member-count").textContent = total;
    $("members-total").textContent = total ? `(${total})` : "";
  }

  function resetMembers() {
    clearTimeout(state.members.resync);
    Object.assign(state.members, { map: null, count: null, loading: null, dirty: false, asked: false, resync: 0 });
    renderMembers();
  }

  // ---------------------------------------------------------------- typing

  function onTyping(frame) {
    const name = frame.from && typeof frame.from.name === "string" ? frame.from.name : "";
    if (!name || name === state.name) return;
    clearTimeout(state.typers.get(name));
    state.typers.set(name, setTimeout(() => stopTyping(name), TYPING_SHOWN_MS));
    renderTyping();
  }

  function stopTyping(name) {
    if (!state.typers.has(name)) return;
    clearTimeout(state.typers.get(name));
    state.typers.delete(name);
    renderTyping();
  }

  function clearTyping() {
    for (const timer of state.typers.values()) clearTimeout(timer);
    state.typers.clear();
    renderTyping();
  }

  function renderTyping() {
    const names = [...state.typers.keys()];
    $("typing").textContent =
      names.length === 0 ? "" : names.length === 1 ? `${names[0]} is typing…` : names.length === 2 ? `${names[0]} and ${names[1]} are typing…` : `${names.length} people are typing…`;
  }

  function typed() {
    const now = Date.now();
    if (!$("text").value.trim() || now - state.lastTypingAt < TYPING_EVERY_MS) return;
    if (!state.socket || state.socket.readyState !== WebSocket.OPEN) return;
    state.lastTypingAt = now;
    send({ action: "typing" });
  }

  // ---------------------------------------------------------------- the connection

  /** Puts a frame on the socket; false when it is not open (OrderedSender then knows it was not sent). */
  function send(frame) {
    if (!state.socket || state.socket.readyState !== WebSocket.OPEN) return false;
    state.socket.send(JSON.stringify(frame));
    return true;
  }

  /** A fresh follower of the room's sequence, and a fresh sender, for a newly joined room. */
  function follow() {
    if (state.stream) state.stream.stop();
    state.stream = new RoomStream({
      event: onEvent,
      reset() {
        // Numbering started again (the server lost the room's head): what is shown belongs to the old stream.
        $("messages").replaceChildren();
        dayLines.clear();
        system("This room's history was reset on the server (its numbering started again); showing it anew.");
        for (const item of state.sender.unacknowledged()) if (item.kind === "message") place(item.li);
        Object.assign(state.read, { marker: null, divider: null, unread: 0, more: false, sent: 0 });
        askRead();
        schedulePass();
      },
      history(request) {
        send(request);
      },
    });
    if (state.sender) state.sender.stop();
    state.sender = new OrderedSender(
      {
        send,
        acked(item, ack) {
          showError(""); // the next success clears what went wrong before
          if (item.kind === "edit") {
            item.li.classList.remove("updating");
            if (!item.li.classList.contains("deleted")) item.li.classList.add("is-edited");
          } else if (item.kind === "delete") {
            markDeleted(item.li);
          } else {
            const shown = messageAt(ack.cursor); // already replayed from history (a resend after a reconnect)
            if (shown && shown !== item.li) {
              item.li.remove();
              item.li = shown;
            } else {
              item.li.classList.remove("pending");
              item.li.dataset.cursor = ack.cursor;
              place(item.li);
            }
          }
          schedulePass();
        },
        failed: failed,
        retrying() {
          showError(ERRORS.unavailable, "busy");
        },
      },
      { resendBaseMs: RESEND_BASE_MS, maxMessageBytes: state.maxFrameBytes },
    );
  }

  function failed(item, error) {
    if (error.code === "message_too_large") {
      // The server's limit, or the lower one a 1009 close taught the sender.
      const limit = /limit is (\d+)/.exec(error.message || "");
      if (limit) state.maxFrameBytes = state.sender.options.maxMessageBytes = Number(limit[1]);
      updateCounter();
    }
    if (item.kind === "edit") {
      item.li.classList.remove("updating");
      if (!item.li.classList.contains("deleted")) setText(item.li, item.previous);
      showError(`Not edited: ${describe(error)}`, "change");
    } else if (item.kind === "delete") {
      item.li.classList.remove("updating");
      showError(`Not deleted: ${describe(error)}`, "change");
    } else {
      item.li.classList.remove("pending");
      item.li.classList.add("failed");
      if (!item.li.querySelector(".retry")) {
        const retry = el("button", "retry", "Retry");
        retry.type = "button";
        retry.setAttribute("aria-label", "Retry sending this message");
        item.li.append(retry);
      }
      showError(describe(error), "send");
    }
  }

  /** An edit or delete refused for good (codes OrderedSender does not know as final): fail it here. */
  function failInFlight(frame) {
    const sender = state.sender;
    const item = sender.inFlight;
    if (!item || item.kind === "message" || frame.id !== item.id || !CHANGE_REFUSALS.includes(frame.code)) return false;
    sender.finish();
    failed(item, frame);
    sender.next();
    return true;
  }

  /** An id-less refusal of a read or members request (rate_limited, unavailable): ask again after the hint. */
  function retryAsks(frame) {
    if (frame.id !== undefined || (frame.code !== "rate_limited" && frame.code !== "unavailable")) return false;
    const again = { read: state.read.asked, members: state.members.asked };
    state.read.asked = "";
    setTimeout(() => {
      if (!state.joined) return;
      if (again.read === "ask") askRead();
      if (again.read === "move") {
        state.read.sent = 0; // not moved: try again
        scheduleRead();
      }
      if (again.members) askMembers();
    }, Math.max(500, Number(frame.retryAfterMs) || 1000));
    return true;
  }

  function onFrame(event) {
    let frame;
    try {
      frame = JSON.parse(event.data);
    } catch {
      return system(String(event.data));
    }
    if (!frame || typeof frame !== "object") return;
    switch (frame.type) {
      case "error":
        // A refusal of a send names it (`id`): the sender decides to resend or fail it.
        // An id-less refusal of a history request is retried by the stream after its hint.
        if (state.sender.frame(frame) || failInFlight(frame) || state.stream.frame(frame)) return;
        if (frame.code === "invalid_read" || frame.code === "invalid_members") return; // a request made for a stream since replaced
        if (retryAsks(frame)) return;
        return showError(describe(frame));
      case "typing":
        return onTyping(frame);
      case "members":
        return onMembers(frame);
      case "read":
        return onRead(frame);
      case "usage":
        return; // an action this server does not know (an older backend): nothing to show
      default:
    }
    if (frame.type === "ack") state.sender.frame(frame);
    state.stream.frame(frame);
    showSettled();
    if (frame.type === "history-end" && !frame.more && state.replaying) {
      state.replaying = false;
      $("messages").dataset.caughtUp = "true"; // for tests: this connection's catch-up is done
      askMembers(); // after the catch-up: the list and the live joins and leaves that follow it agree
      schedulePass();
    }
  }

  function setJoined(joined) {
    state.joined = joined;
    document.body.classList.toggle("joined", joined);
    $("join").hidden = joined;
    $("identity").hidden = !joined;
    $("leave-button").hidden = !joined;
    $("members-button").hidden = !joined;
    $("text").disabled = $("send-button").disabled = !joined;
    if (joined) $("token-help").hidden = true;
    if (!joined) {
      document.body.classList.remove("members-open");
      $("members-button").setAttribute("aria-expanded", "false");
    }
    schedulePass();
  }

  function connect() {
    clearTimeout(state.reconnectTimer);
    const url = new URL(state.config.url);
    url.searchParams.set("room", state.room);
    url.searchParams.set("name", state.name);
    const token = $("token").value.trim();
    if (token) url.searchParams.set("token", token);
    state.opened = false;
    const socket = new WebSocket(url);
    state.socket = socket;
    setStatus("Connecting…");

    socket.onopen = () => {
      state.opened = state.everOpened = true;
      state.attempts = 0;
      if (state.errorKind === "connect") showError("");
      setStatus(`Connected to #${state.room} as ${state.name}`);
      const wasJoined = state.joined;
      setJoined(true);
      if (!wasJoined && ($("join").contains(document.activeElement) || document.activeElement === document.body)) $("text").focus();
      state.replaying = true;
      delete $("messages").dataset.caughtUp;
      state.read.known = false;
      state.read.sent = 0;
      askRead();
      state.stream.start();
      state.sender.resume();
    };
    socket.onmessage = onFrame;
    socket.onclose = (event) => {
      if (socket !== state.socket) return;
      // 1009: the message on the wire was too big for the gateway. It is failed, not resent.
      state.sender.closed(event.code);
      clearTyping();
      resetMembers();
      if (state.leaving) return setStatus("Not connected");
      if (!state.everOpened && state.attempts === 0) {
        if (state.config.authEnabled) {
          // A refused token does not get better by retrying: say so, and how to get one.
          showError("Could not connect: the token is missing, expired, or not valid for this room.", "connect");
          $("token-help").hidden = false;
          setStatus("Not connected", true);
          state.stream.stop();
          return;
        }
        showError(token ? "Could not connect: the token is missing, expired, or not valid for this room." : "Could not connect: check the name and room (letters, digits, _ . -).", "connect");
      }
      if (state.everOpened && state.attempts === 3 && state.config.authEnabled) {
        showError("Still cannot reconnect. If this goes on, your token may have expired: get a new one (see below) and join again.", "connect");
        $("token-help").hidden = false;
      }
      const delay = Math.min(RECONNECT_MAX_MS, RECONNECT_BASE_MS * 2 ** state.attempts++);
      setStatus(`Disconnected. Reconnecting in ${Math.round(delay / 1000)} s…`, true);
      state.reconnectTimer = setTimeout(connect, delay);
    };
  }

  function join(event) {
    event.preventDefault();
    if (!$("join").reportValidity()) return;
    const token = $("token").value.trim();
    if (state.config.authEnabled && !token) {
      $("token-help").hidden = false;
      showError("This stack needs a token: see below how to get one.", "connect");
      $("token").focus();
      return;
    }
    state.leaving = false;
    if (state.socket) {
      state.socket.onclose = null;
      state.socket.close(1000);
    }
    clearTimeout(state.reconnectTimer);
    const room = $("room").value.trim();
    const roomChanged = state.room !== room;
    state.name = tokenName(token) || (state.config.authEnabled ? "" : $("name").value.trim()) || guestName();
    state.room = room;
    if (roomChanged || !state.stream) {
      $("messages").replaceChildren();
      dayLines.clear();
      follow();
      showSettled();
    }
    Object.assign(state.read, { marker: null, known: false, divider: undefined, unread: 0, more: false, sent: 0, toDivider: true });
    state.attempts = 0;
    state.everOpened = false;
    state.stick = true;
    resetMembers();
    showIdentity();
    if (state.errorKind === "connect") showError("");
    saveToken(token, state.config.url); // what this tab joined with: a reload keeps it
    connect();
  }

  function leave() {
    state.leaving = true;
    clearTimeout(state.reconnectTimer);
    if (state.stream) state.stream.stop();
    if (state.socket) state.socket.close(1000);
    setStatus("Not connected");
    clearTyping();
    resetMembers();
    setJoined(false);
    $("room").focus();
  }

  // ---------------------------------------------------------------- composing

  /** An id as long as newId()'s: the counter measures a draft's frame before it has its id. */
  const DRAFT_ID = "0".repeat(36);

  /**
   * What a text costs against the limit (README, "Protocol"): the bytes it adds to its frame,
   * escapes included, against what the frame's envelope leaves of maxMessageBytes.
   */
  function measure(text, id, extra) {
    const envelope = frameBytes(sendFrame(id, "", extra));
    return { bytes: frameBytes(sendFrame(id, text, extra)) - envelope, limit: state.maxFrameBytes - envelope };
  }

  function updateCounter() {
    const text = $("text").value;
    const { bytes, limit } = measure(text, DRAFT_ID);
    const over = bytes > limit;
    $("counter").textContent = bytes === 0 ? "" : over ? `${fmt(bytes)} / ${fmt(limit)} bytes: ${fmt(bytes - limit)} too many` : `${fmt(bytes)} / ${fmt(limit)}`;
    $("counter").classList.toggle("over", over);
    $("counter").classList.toggle("near", !over && bytes > limit * 0.9);
    $("text").setAttribute("aria-invalid", String(over));
    if (!over && state.errorKind === "too-long") showError("");
  }

  /** The textarea grows with its lines, up to what CSS allows (rows: an attribute, not a style). */
  function fitRows() {
    const lines = $("text").value.split("\n").length;
    $("text").rows = Math.min(8, Math.max(1, lines));
  }

  /** What may be sent as a message or an edit (its frame: id, extra): null when fine, else why not (shown). */
  function refusal(text, id, extra) {
    if (!text.trim()) return "blank";
    const { bytes, limit } = measure(text, id, extra);
    if (bytes > limit) return `That message is too long: ${fmt(bytes)} bytes, and the limit is ${fmt(limit)}. Shorten it; it was not sent.`;
    if (text.isWellFormed && !text.isWellFormed()) return "That message holds characters that are not valid text; it was not sent.";
    return null;
  }

  function submit(event) {
    event.preventDefault();
    const text = $("text").value;
    const id = newId();
    const problem = refusal(text, id);
    if (problem === "blank") {
      hint("Nothing to send: type a message first.");
      $("text").focus();
      return;
    }
    if (problem) return showError(problem, "too-long");
    hint("");
    if (state.errorKind === "too-long") showError("");
    sendText(text, undefined, id);
    $("text").value = "";
    updateCounter();
    fitRows();
    $("text").focus();
  }

  function sendText(text, li, id = newId()) {
    if (!li) li = renderMessage({ ts: Date.now(), name: state.name, text, mine: true });
    li.classList.add("pending");
    const item = state.sender.send(id, text); // answered only later, on a frame: the line is there by then
    item.kind = "message";
    item.li = li;
    toBottom();
    schedulePass();
  }

  function retry(li) {
    const text = li.querySelector(".text").textContent;
    li.classList.remove("failed");
    li.querySelector(".retry").remove();
    li.dataset.ts = String(Date.now());
    $("messages").append(li); // after every stored line: it gets its cursor when acknowledged
    sendText(text, li);
  }

  function startEdit(li) {
    if (li.classList.contains("editing") || li.classList.contains("deleted") || !li.dataset.cursor) return;
    li.classList.add("editing");
    const box = el("form", "edit-box");
    box.setAttribute("aria-label", "Edit message");
    const area = el("textarea");
    area.value = li.querySelector(".text").textContent;
    area.rows = Math.min(8, area.value.split("\n").length);
    area.setAttribute("aria-label", "Edited message");
    const save = el("button", "save", "Save");
    save.type = "submit";
    const cancel = el("button", "cancel", "Cancel");
    cancel.type = "button";
    const note = el("span", "edit-hint", "Enter saves, Escape cancels");
    box.append(area, save, cancel, note);
    li.querySelector(".body").after(box);
    const close = () => {
      box.remove();
      li.classList.remove("editing");
      const button = li.querySelector(".actions .edit");
      if (button) button.focus();
    };
    area.addEventListener("keydown", (e) => {
      if (e.key === "Escape") {
        e.preventDefault();
        close();
      } else if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
        e.preventDefault();
        box.requestSubmit();
      }
    });
    cancel.addEventListener("click", close);
    box.addEventListener("submit", (e) => {
      e.preventDefault();
      const text = area.value;
      const previous = li.querySelector(".text").textContent;
      if (text === previous) return close();
      const id = newId();
      const extra = { action: "edit", cursor: li.dataset.cursor };
      const problem = refusal(text, id, extra);
      if (problem === "blank") {
        note.textContent = "A message cannot be empty: delete it instead.";
        return;
      }
      if (problem) return showError(problem, "too-long");
      box.remove();
      li.classList.remove("editing");
      li.classList.add("updating");
      setText(li, text);
      const item = state.sender.send(id, text, extra);
      Object.assign(item, { kind: "edit", li, previous });
      const button = li.querySelector(".actions .edit");
      if (button) button.focus();
    });
    area.focus();
    area.setSelectionRange(area.value.length, area.value.length);
  }

  function askDelete(li, button) {
    if (!button.classList.contains("armed")) {
      button.classList.add("armed");
      button.textContent = "Delete?";
      button.setAttribute("aria-label", "Confirm: delete this message");
      return;
    }
    disarm(button);
    li.classList.add("updating");
    const item = state.sender.send(newId(), "", { action: "delete", cursor: li.dataset.cursor, message: undefined });
    Object.assign(item, { kind: "delete", li });
  }

  function disarm(button) {
    button.classList.remove("armed");
    button.textContent = "Delete";
    button.setAttribute("aria-label", "Delete message");
  }

  // ---------------------------------------------------------------- start

  /**
   * The server to connect to. A site that publishes a config.json with a `url` (every stack's page,
   * on CloudFront and locally) connects there and nowhere else: a link's `?url=` is ignored, with a
   * notice, so a link to the genuine page cannot send its token to another server. `?url=` is for a
   * page with no config.json: opened from disk (fetch has no file: scheme) or from a server that
   * answers 404. Any other failure to read config.json stops here rather than trust the link.
   */
  async function loadConfig() {
    const fromLink = params.get("url");
    let response = null;
    try {
      response = await fetch("config.json");
    } catch {
      if (location.protocol !== "file:") throw new Error("Could not load this page's config.json; reload to try again.");
    }
    if (response && !response.ok && response.status !== 404) throw new Error(`Could not load this page's config.json (HTTP ${response.status}); reload to try again.`);
    let fromFile = null;
    if (response && response.ok) {
      try {
        fromFile = await response.json();
      } catch {
        throw new Error("This page's config.json is not valid JSON.");
      }
    }
    if (fromFile && fromFile.url) {
      if (fromLink !== null && fromLink !== fromFile.url) {
        showNotice(`The "url" in the link that opened this page was ignored: this page connects only to its own chat server, ${new URL(fromFile.url).host}.`);
      }
      return fromFile;
    }
    return { ...(fromFile || {}), url: fromLink };
  }

  function wire() {
    $("join").addEventListener("submit", join);
    $("leave-button").addEventListener("click", leave);
    $("compose").addEventListener("submit", submit);
    const text = $("text");
    text.addEventListener("keydown", (e) => {
      // Enter sends; Shift+Enter is a new line; an IME's Enter confirms its text.
      if (e.key === "Enter" && !e.shiftKey && !e.isComposing && !e.altKey) {
        e.preventDefault();
        $("compose").requestSubmit();
      }
    });
    text.addEventListener("input", () => {
      hint("");
      updateCounter();
      fitRows();
      typed();
    });
    scroller().addEventListener("scroll", () => {
      state.stick = atEnd();
      if (state.stick) {
        $("jump").hidden = true;
        scheduleRead();
      }
    });
    // The frame changes size (a window resize, a growing textarea, a phone's keyboard): keep the end in view.
    new ResizeObserver(() => {
      if (state.stick) scroller().scrollTop = scroller().scrollHeight;
    }).observe(scroller());
    $("jump").addEventListener("click", () => {
      toBottom();
      scheduleRead();
      $("text").focus();
    });
    document.addEventListener("visibilitychange", () => {
      schedulePass();
      scheduleRead();
    });
    $("members-button").addEventListener("click", () => {
      const open = document.body.classList.toggle("members-open");
      $("members-button").setAttribute("aria-expanded", String(open));
    });
    $("messages").addEventListener("click", (e) => {
      const button = e.target.closest("button");
      const li = button && button.closest("li.message");
      if (!li) return;
      if (button.classList.contains("retry")) retry(li);
      else if (button.classList.contains("edit")) startEdit(li);
      else if (button.classList.contains("delete")) askDelete(li, button);
    });
    $("messages").addEventListener("focusout", (e) => {
      if (e.target.classList && e.target.classList.contains("armed")) disarm(e.target);
    });
  }

  async function start() {
    // Until the page is wired (config.json can take a while), a submit of the join form, such as
    // an Enter typed meanwhile, must not be the browser's own: that is a navigation carrying the
    // typed name, room and token in its address. It is held, and joined once the page is ready;
    // if the page never gets ready (no config), it stays held and the error says why.
    let held = false;
    const hold = (e) => {
      e.preventDefault();
      held = true;
    };
    $("join").addEventListener("submit", hold);
    try {
      state.config = await loadConfig();
    } catch (err) {
      return showError(err.message);
    }
    if (!state.config.url) return showError("No chat URL: open this page with ?url=wss://… or next to a config.json.");
    if (!/^wss?:\/\//i.test(state.config.url)) return showError("The chat URL must start with ws:// or wss://.");
    state.maxFrameBytes = Number(state.config.maxMessageBytes) > 0 ? Number(state.config.maxMessageBytes) : DEFAULT_MAX_MESSAGE_BYTES;
    const token = savedToken(state.config.url);
    if (token) {
      $("token").value = token;
      saveToken(token, state.config.url);
    }
    if (params.get("name")) $("name").value = params.get("name");
    if (params.get("room")) $("room").value = params.get("room");
    const guest = storedGuest();
    if (guest) $("name").placeholder = guest;
    $("token-field").hidden = !(state.config.authEnabled || token);
    // With auth on, the name is the token's: a typed one would be ignored by the server.
    $("name-field").hidden = Boolean(state.config.authEnabled);
    if (state.config.authEnabled) {
      // The local stack's stage is its stack's name (dev, prod): the command to mint a token there.
      const stage = new URL(state.config.url).pathname.split("/").filter(Boolean).pop() || "prod";
      $("token-command").textContent = `npm run -s token -- --stack ${stage} --local --name <you>`;
      if (!token) $("token-help").hidden = false;
    }
    wire();
    updateCounter();
    $("join").removeEventListener("submit", hold);
    if (held) $("join").requestSubmit();
  }

  start();
})();
