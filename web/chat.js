// ws-chat in the browser: join a room, see messages live, send with Enter, and never miss one.
// The delivery rules live in room-stream.js (loaded first): the room's sequence is followed and its
// gaps filled from `history` (RoomStream), and sends go one at a time, each after the previous is
// acknowledged, so the server stores them in the order typed (OrderedSender). On a dropped
// connection it reconnects with backoff, asks `history` since the last settled cursor and resends
// the unacknowledged message with the same id. A send refused as `unavailable` (nothing stored: a
// busy room, a store outage) is resent after the server's `retryAfterMs`, or a growing pause. When
// the room's epoch changes (its numbering started again) the page says so and reloads the room.
// Tokens: a `?token=` leaves the address bar at once and is kept for this tab only; nothing global
// holds it or the socket. The server: config.json's `url` when the site has one (a link's `?url=`
// is then ignored, and the Content-Security-Policy refuses any other server anyway); `?url=` only
// where there is no config.json (the page opened from disk or a plain file server).
// No framework, no build step.
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

  const { RoomStream, OrderedSender } = window.RoomStream;
  const RECONNECT_BASE_MS = Number(params.get("reconnectMs")) || 1000;
  const RECONNECT_MAX_MS = 30000;
  const RESEND_BASE_MS = Number(params.get("resendMs")) || 1000;

  const state = {
    config: null, socket: null, name: "", room: "", leaving: false, opened: false,
    attempts: 0, reconnectTimer: 0, replaying: false,
    /** The room's sequence as this page follows it (room-stream.js). */
    stream: null,
    /** Messages typed and not yet acknowledged, one on the wire at a time, each with its line (`li`). */
    sender: null,
  };

  function setStatus(text, offline) {
    $("status").textContent = text;
    $("status").classList.toggle("offline", Boolean(offline));
  }

  function showError(text) {
    $("error").textContent = text;
    $("error").hidden = !text;
  }

  function showNotice(text) {
    $("notice").textContent = text;
    $("notice").hidden = !text;
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
  };

  function timeOf(ts) {
    return new Date(ts).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
  }

  /** Inserts a message line in cursor order (textContent only: no markup from the network). */
  function render({ cursor, ts, name, text, mine, replayed }) {
    const li = document.createElement("li");
    if (cursor) li.dataset.cursor = cursor;
    if (mine) li.classList.add("mine");
    if (replayed) li.dataset.replayed = "true";
    const time = document.createElement("time");
    time.dateTime = new Date(ts).toISOString();
    time.textContent = timeOf(ts);
    const from = document.createElement("strong");
    from.className = "from";
    from.textContent = name;
    const body = document.createElement("span");
    body.className = "text";
    body.textContent = text;
    li.append(time, from, body);
    place(li);
    return li;
  }

  function place(li) {
    const list = $("messages");
    const cursor = li.dataset.cursor;
    const after = cursor && [...list.children].find((other) => other.dataset.cursor && other.dataset.cursor > cursor);
    if (after) list.insertBefore(li, after);
    else list.append(li);
    list.parentElement.scrollTop = list.parentElement.scrollHeight;
  }

  function system(text) {
    const li = document.createElement("li");
    li.className = "system";
    li.textContent = text;
    $("messages").append(li);
  }

  function send(frame) {
    if (state.socket && state.socket.readyState === WebSocket.OPEN) state.socket.send(JSON.stringify(frame));
  }

  /** A fresh follower of the room's sequence, and a fresh sender, for a newly joined room. */
  function follow() {
    if (state.stream) state.stream.stop();
    state.stream = new RoomStream({
      event(frame) {
        if (frame.type !== "message") return; // a tombstone: a number that holds nothing
        render({ cursor: frame.cursor, ts: frame.ts, name: frame.from.name, text: frame.message, mine: frame.from.name === state.name, replayed: state.replaying });
      },
      reset() {
        // Numbering started again (the server lost the room's head): what is shown belongs to the old stream.
        $("messages").replaceChildren();
        system("This room's history was reset on the server (its numbering started again); showing it anew.");
        for (const item of state.sender.unacknowledged()) place(item.li);
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
          if (item.resends) showError(""); // the "busy" notice is answered
          item.li.classList.remove("pending");
          item.li.dataset.cursor = ack.cursor;
          place(item.li);
        },
        failed(item, error) {
          item.li.classList.replace("pending", "failed");
          showError(ERRORS[error.code] || error.message);
        },
        retrying() {
          showError(ERRORS.unavailable);
        },
      },
      { resendBaseMs: RESEND_BASE_MS },
    );
  }

  function onFrame(event) {
    let frame;
    try {
      frame = JSON.parse(event.data);
    } catch {
      return system(String(event.data));
    }
    if (frame.type === "error") {
      // A refusal of a send names it (`id`): the sender decides to resend or fail it.
      // An id-less refusal of a history request is retried by the stream after its hint.
      if (!state.sender.frame(frame) && !state.stream.frame(frame)) showError(ERRORS[frame.code] || frame.message);
      return;
    }
    if (frame.type === "ack") state.sender.frame(frame);
    state.stream.frame(frame);
    showSettled();
    if (frame.type === "history-end" && !frame.more) state.replaying = false;
  }

  function connect() {
    clearTimeout(state.reconnectTimer);
    const url = new URL(state.config.url);
    url.searchParams.set("room", state.room);
    if (state.name) url.searchParams.set("name", state.name);
    const token = $("token").value.trim();
    if (token) url.searchParams.set("token", token);
    state.opened = false;
    const socket = new WebSocket(url);
    state.socket = socket;
    setStatus("Connecting…");

    socket.onopen = () => {
      state.opened = true;
      state.attempts = 0;
      showError("");
      setStatus(`Connected to #${state.room}${state.name ? ` as ${state.name}` : ""}`);
      $("text").disabled = $("send-button").disabled = false;
      if ($("join").contains(document.activeElement)) $("text").focus();
      state.replaying = true;
      state.stream.start();
      state.sender.resume();
    };
    socket.onmessage = onFrame;
    socket.onclose = () => {
      if (socket !== state.socket) return;
      $("text").disabled = $("send-button").disabled = true;
      if (state.leaving) return setStatus("Not connected");
      if (!state.opened && state.attempts === 0) {
        showError(
          state.config.authEnabled || token
            ? "Could not connect: the token is missing, expired, or not valid for this room."
            : "Could not connect: check the name and room (letters, digits, _ . -).",
        );
      }
      const delay = Math.min(RECONNECT_MAX_MS, RECONNECT_BASE_MS * 2 ** state.attempts++);
      setStatus(`Disconnected. Reconnecting in ${Math.round(delay / 1000)} s…`, true);
      state.reconnectTimer = setTimeout(connect, delay);
    };
  }

  function join(event) {
    event.preventDefault();
    if (!$("join").reportValidity()) return;
    state.leaving = false;
    if (state.socket) {
      state.socket.onclose = null;
      state.socket.close(1000);
    }
    const roomChanged = state.room !== $("room").value.trim();
    state.name = $("name").value.trim();
    state.room = $("room").value.trim();
    if (roomChanged || !state.stream) {
      $("messages").replaceChildren();
      follow();
      showSettled();
    }
    saveToken($("token").value.trim(), state.config.url); // what this tab joined with: a reload keeps it
    $("leave-button").disabled = false;
    connect();
    $("text").focus();
  }

  function leave() {
    state.leaving = true;
    clearTimeout(state.reconnectTimer);
    if (state.stream) state.stream.stop();
    if (state.socket) state.socket.close(1000);
    $("leave-button").disabled = true;
  }

  function submit(event) {
    event.preventDefault();
    const text = $("text").value;
    if (!text.trim()) return;
    const id = crypto.randomUUID();
    const li = render({ ts: Date.now(), name: state.name || "me", text, mine: true });
    li.classList.add("pending");
    state.sender.send(id, text).li = li; // answered only later, on a frame: the line is there by then
    $("text").value = "";
  }

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

  async function start() {
    try {
      state.config = await loadConfig();
    } catch (err) {
      return showError(err.message);
    }
    if (!state.config.url) return showError("No chat URL: open this page with ?url=wss://… or next to a config.json.");
    if (!/^wss?:\/\//i.test(state.config.url)) return showError("The chat URL must start with ws:// or wss://.");
    const token = savedToken(state.config.url);
    if (token) {
      $("token").value = token;
      saveToken(token, state.config.url);
    }
    if (params.get("name")) $("name").value = params.get("name");
    if (params.get("room")) $("room").value = params.get("room");
    $("token-field").hidden = !(state.config.authEnabled || token);
    $("join").addEventListener("submit", join);
    $("leave-button").addEventListener("click", leave);
    $("compose").addEventListener("submit", submit);
  }

  start();
})();
