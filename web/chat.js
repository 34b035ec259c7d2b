// ws-chat in the browser: join a room, see messages live, send with Enter, and never miss one.
// On a dropped connection it reconnects with backoff and asks `history` since the last cursor it
// has, resending (with the same id) anything not yet acknowledged. A send refused as `unavailable`
// (nothing stored: a busy room, a store outage) is resent with the same id after a growing pause,
// until it is acknowledged. No framework, no build step.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const params = new URLSearchParams(location.search);
  const CURSOR_DIGITS = 16;
  const pad = (n) => String(n).padStart(CURSOR_DIGITS, "0");
  const RECONNECT_BASE_MS = Number(params.get("reconnectMs")) || 1000;
  const RECONNECT_MAX_MS = 30000;
  const GAP_WAIT_MS = 1500;
  const RESEND_BASE_MS = Number(params.get("resendMs")) || 1000;
  const RESEND_MAX_MS = 30000;
  /** Refusals that are final for that message: it is marked failed and never resent. */
  const FINAL = ["message_too_large", "rate_limited", "invalid_message"];

  const state = {
    config: null, socket: null, name: "", room: "", leaving: false, opened: false,
    attempts: 0, reconnectTimer: 0, gapTimer: 0,
    /** Highest cursor up to which every message is shown (null: nothing yet). */
    watermark: null,
    seen: new Set(),
    /** Highest cursor shown: a gap exists while it is above the watermark. */
    highest: null,
    /** Sent but not acknowledged, by client id: resent after a reconnect or an `unavailable`. */
    pending: new Map(),
  };

  function setStatus(text, offline) {
    $("status").textContent = text;
    $("status").classList.toggle("offline", Boolean(offline));
  }

  function showError(text) {
    $("error").textContent = text;
    $("error").hidden = !text;
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

  /** Records a cursor as shown; moves the watermark over consecutive cursors; notices gaps. */
  function see(cursor) {
    state.seen.add(cursor);
    if (state.highest === null || cursor > state.highest) state.highest = cursor;
    if (state.watermark === null) state.watermark = pad(Number(cursor) - 1);
    while (state.seen.has(pad(Number(state.watermark) + 1))) state.watermark = pad(Number(state.watermark) + 1);
    clearTimeout(state.gapTimer);
    if (state.highest > state.watermark) {
      // A later message came first: wait a moment for the one in flight, then ask history.
      state.gapTimer = setTimeout(() => requestHistory(state.watermark), GAP_WAIT_MS);
    }
  }

  function send(frame) {
    if (state.socket && state.socket.readyState === WebSocket.OPEN) state.socket.send(JSON.stringify(frame));
  }

  function requestHistory(since) {
    send(since ? { action: "history", since, limit: 100 } : { action: "history", limit: 50 });
  }

  function onFrame(event) {
    let frame;
    try {
      frame = JSON.parse(event.data);
    } catch {
      return system(String(event.data));
    }
    switch (frame.type) {
      case "message":
        if (state.seen.has(frame.cursor)) return;
        render({ cursor: frame.cursor, ts: frame.ts, name: frame.from.name, text: frame.message, mine: frame.from.name === state.name, replayed: state.replaying });
        return see(frame.cursor);
      case "ack": {
        const sent = state.pending.get(frame.id);
        state.pending.delete(frame.id);
        if (sent) {
          clearTimeout(sent.resendTimer);
          if (sent.resends) showError(""); // the "busy" notice is answered
          sent.li.classList.remove("pending");
          sent.li.dataset.cursor = frame.cursor;
          place(sent.li);
        }
        return see(frame.cursor);
      }
      case "history-end":
        if (state.watermark === null) state.watermark = frame.cursor || pad(0);
        if (frame.more) return requestHistory(frame.cursor);
        state.replaying = false;
        return;
      case "error": {
        showError(ERRORS[frame.code] || frame.message);
        // A refusal names the send it answers (`id`); without one, it answers the latest send.
        const sent = frame.id ? state.pending.get(frame.id) : [...state.pending.values()].pop();
        if (!sent) return;
        if (FINAL.includes(frame.code)) {
          sent.li.classList.replace("pending", "failed");
          state.pending.delete(sent.id);
        } else if (frame.code === "unavailable" && frame.id) {
          clearTimeout(sent.resendTimer);
          const delay = Math.min(RESEND_MAX_MS, RESEND_BASE_MS * 2 ** (sent.resends || 0));
          sent.resends = (sent.resends || 0) + 1;
          sent.resendTimer = setTimeout(() => {
            if (state.pending.has(sent.id)) send({ action: "sendmessage", message: sent.text, id: sent.id });
          }, delay);
        }
        return;
      }
      default:
        return; // usage and anything newer: nothing to show
    }
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
      requestHistory(state.watermark);
      for (const { id, text } of state.pending.values()) send({ action: "sendmessage", message: text, id });
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
    if (roomChanged) {
      $("messages").replaceChildren();
      state.seen.clear();
      state.watermark = null;
      state.highest = null;
    }
    $("leave-button").disabled = false;
    connect();
    $("text").focus();
  }

  function leave() {
    state.leaving = true;
    clearTimeout(state.reconnectTimer);
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
    state.pending.set(id, { id, text, li });
    send({ action: "sendmessage", message: text, id });
    $("text").value = "";
  }

  async function start() {
    const response = await fetch("config.json").catch(() => null);
    const fromFile = response && response.ok ? await response.json() : {};
    state.config = { ...fromFile, url: params.get("url") || fromFile.url };
    if (!state.config.url) return showError("No chat URL: open this page with ?url=wss://… or next to a config.json.");
    if (params.get("token")) $("token").value = params.get("token");
    if (params.get("name")) $("name").value = params.get("name");
    if (params.get("room")) $("room").value = params.get("room");
    $("token-field").hidden = !(state.config.authEnabled || params.get("token"));
    $("join").addEventListener("submit", join);
    $("leave-button").addEventListener("click", leave);
    $("compose").addEventListener("submit", submit);
    window.chat = state; // for tests and the curious
  }

  start();
})();
