// kubechat: the chat page of one bot. Plain JavaScript, no build step, no dependencies.
// It talks to this bot only, with relative URLs (so it also works under a path prefix): GET info,
// POST chat with "stream": true (Server-Sent Events), DELETE sessions/{id}.
// Text from the user or the bot only ever goes into the page as textContent: a reply is data, never HTML.
"use strict";

const $ = (id) => document.getElementById(id);
const log = $("log");
const empty = $("empty");
const input = $("input");
const send = $("send");
const newChat = $("new-chat");
const statusLine = $("status");
const tokensLine = $("tokens");

// Keyboard hints mean nothing on a touch screen.
const IDLE_STATUS = matchMedia("(pointer: coarse)").matches ? "" : "Enter to send · Shift+Enter for a new line";
const state = { sessionId: null, tokens: 0, busy: false, name: "kubechat", authRequired: false };

// -- the caller's key --------------------------------------------------------------------------------
// A bot with spec.access wants "Authorization: Bearer <key>". The key is asked for once and kept in
// sessionStorage: for this tab only, gone when it closes, never in localStorage or a cookie.
const KEY_ITEM = "kubechat-api-key";

function authHeaders() {
  const key = sessionStorage.getItem(KEY_ITEM);
  return key ? { Authorization: `Bearer ${key}` } : {};
}

function askKey(reason) {
  const key = (window.prompt(`${reason} It is kept for this tab only.`) || "").trim();
  if (key) sessionStorage.setItem(KEY_ITEM, key);
  else sessionStorage.removeItem(KEY_ITEM);
  return Boolean(key);
}

// -- rendering ---------------------------------------------------------------------------------

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

// Follow the conversation only if the reader is already at the bottom: don't yank them away from
// something they scrolled up to read.
function atBottom() {
  return log.scrollHeight - log.scrollTop - log.clientHeight < 80;
}

function append(node) {
  const follow = atBottom();
  empty.remove();
  log.append(node);
  if (follow) log.scrollTop = log.scrollHeight;
  return node;
}

function addUser(text) {
  const msg = el("div", "msg user");
  msg.append(el("div", "bubble", text));
  return append(msg);
}

// A bot message starts as three "typing" dots and becomes text with the first delta.
function addBot() {
  const msg = el("div", "msg bot typing");
  const bubble = el("div", "bubble");
  bubble.append(el("span"), el("span"), el("span"));
  msg.append(bubble);
  msg.text = document.createTextNode("");
  return append(msg);
}

function botText(msg, text, replace) {
  const follow = atBottom();
  if (msg.classList.contains("typing")) {
    msg.classList.remove("typing");
    msg.firstChild.replaceChildren(msg.text);
  }
  if (replace) msg.text.data = text;
  else msg.text.appendData(text);
  if (follow) log.scrollTop = log.scrollHeight;
}

function addMeta(msg, text) {
  msg.append(el("div", "meta", text));
}

function addNotice(text) {
  return append(el("div", "notice", text));
}

function addError(title, detail) {
  const box = el("div", "error");
  box.setAttribute("role", "alert");
  const body = el("div");
  body.append(el("strong", "", title), " ", detail || "");
  box.append(body);
  return append(box);
}

function formatTokens(n) {
  return `${n.toLocaleString()} ${n === 1 ? "token" : "tokens"}`;
}

function showTokens() {
  tokensLine.textContent = formatTokens(state.tokens);
}

function setBusy(busy) {
  state.busy = busy;
  send.disabled = busy;
  newChat.disabled = busy; // resetting mid-reply would race the turn still being recorded
  statusLine.textContent = busy ? `${state.name} is replying…` : IDLE_STATUS;
}

// -- errors ------------------------------------------------------------------------------------

// The bot's errors are {"error": {"code", "message"}}; turn the ones a person can act on into words.
function describe(status, error, retryAfter) {
  const code = (error && error.code) || "";
  const message = sentence((error && error.message) || "");
  const seconds = /^\d+$/.test(retryAfter || "") ? Number(retryAfter) : null;
  switch (code) {
    case "upstream_rate_limited":
      return [
        "Rate limited.",
        `The model API is rate limiting this bot; try again ${seconds !== null ? `in ${seconds} s` : "in a moment"}.`,
      ];
    case "upstream_unreachable":
      return ["Model API unreachable.", "The bot cannot reach its model API right now; try again shortly."];
    case "upstream_timeout":
      return ["Timed out.", "The model API did not answer in time; try again."];
    case "upstream_auth_failed":
      return ["The model API refused the bot's key.", "Ask whoever runs this bot to check its API key."];
    case "not_ready":
      return ["The bot is not ready.", message];
    case "message_too_long":
    case "body_too_large":
      return ["Message too long.", message];
    case "session_store_unavailable":
      return ["Conversations are unavailable.", "The bot cannot reach its session store; try again shortly."];
    case "rate_limit_exceeded":
    case "insufficient_quota":
      return [code === "insufficient_quota" ? "Budget used up." : "Rate limited.", message];
    case "invalid_api_key":
      return ["This bot needs a valid key.", "Send the message again to enter your API key."];
    case "permission_denied":
      return ["Not allowed.", message];
  }
  if (status === 429) return ["Rate limited.", message || "Too many requests; try again in a moment."];
  if (status >= 500) return [`The bot failed (${status}).`, message];
  return [`The bot refused the message (${status}).`, message];
}

// The bot's messages start in lower case ("the bot has no ..."); shown after a title they read as sentences.
function sentence(text) {
  const trimmed = text.trim();
  if (!trimmed) return "";
  const capital = trimmed[0].toUpperCase() + trimmed.slice(1);
  return /[.!?]$/.test(capital) ? capital : `${capital}.`;
}

// A message that never reached the model stays visible, marked, and goes back into an empty box to resend.
function notSent(userMsg, text) {
  userMsg.classList.add("failed");
  addMeta(userMsg, "Not sent");
  if (!input.value) {
    input.value = text;
    grow();
  }
}

// -- a turn ------------------------------------------------------------------------------------

async function sendMessage(text) {
  setBusy(true);
  const userMsg = addUser(text);
  const bot = addBot();
  try {
    let response;
    try {
      response = await fetch("chat", {
        method: "POST",
        headers: { "Content-Type": "application/json", Accept: "text/event-stream", ...authHeaders() },
        body: JSON.stringify({ message: text, session_id: state.sessionId || undefined, stream: true }),
      });
    } catch {
      bot.remove();
      addError("Cannot reach the bot.", "Check the connection (is the port-forward still running?) and try again.");
      notSent(userMsg, text);
      return;
    }
    if (!response.ok) {
      // Refused before streaming: a JSON error with an HTTP status.
      const body = await response.json().catch(() => null);
      bot.remove();
      const error = body && body.error;
      if (response.status === 401) sessionStorage.removeItem(KEY_ITEM); // asked again on the next send
      if (error && error.code === "session_not_found") {
        // The bot restarted or the conversation expired: the next message starts a new one.
        state.sessionId = null;
        addError("This conversation is gone.", "The bot no longer has it (it expired or the bot restarted); send your message again to start a new one.");
      } else {
        addError(...describe(response.status, error, response.headers.get("Retry-After")));
      }
      notSent(userMsg, text);
      return;
    }
    await readStream(response, bot);
  } finally {
    setBusy(false);
  }
}

// Server-Sent Events from a POST: EventSource can only GET, so read the body stream and split it here.
async function readStream(response, bot) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let finished = false;
  try {
    while (!finished) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      let end;
      while (!finished && (end = buffer.indexOf("\n\n")) >= 0) {
        const event = parseEvent(buffer.slice(0, end));
        buffer = buffer.slice(end + 2);
        if (event) finished = onEvent(event, bot);
      }
    }
  } catch {
    // the connection broke; said below
  }
  if (!finished) {
    endIncomplete(bot, "The connection to the bot was lost before the reply finished.");
  }
}

function parseEvent(block) {
  let name = "message";
  const data = [];
  for (const raw of block.split("\n")) {
    const line = raw.endsWith("\r") ? raw.slice(0, -1) : raw;
    if (!line || line.startsWith(":")) continue; // comments keep idle connections open
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "event") name = value;
    else if (field === "data") data.push(value);
  }
  if (!data.length) return null;
  try {
    return { name, data: JSON.parse(data.join("\n")) };
  } catch {
    return null;
  }
}

// Handles one event; true when the turn is over.
function onEvent({ name, data }, bot) {
  switch (name) {
    case "session":
      state.sessionId = data.session_id;
      return false;
    case "delta":
      if (data.delta) botText(bot, data.delta);
      return false;
    case "done": {
      state.sessionId = data.session_id;
      // The final reply is authoritative: it is what the bot recorded.
      botText(bot, data.reply || "", true);
      if (!data.reply) bot.text.data = "(empty reply)";
      const usage = data.usage || {};
      const turn = Number(usage.total_tokens) || 0;
      state.tokens += turn;
      showTokens();
      addMeta(bot, formatTokens(turn));
      const dropped = Number(usage.dropped_messages) || 0;
      if (data.truncated || dropped > 0) {
        const what = dropped === 1 ? "1 older message was" : dropped ? `${dropped} older messages were` : "Older messages were";
        addNotice(`${what} left out so the conversation fits the model's context window.`);
      }
      return true;
    }
    case "error": {
      const error = data.error || {};
      endIncomplete(bot, sentence(error.message || "The bot failed while replying."));
      return true;
    }
  }
  return false;
}

// A reply that broke off: keep what arrived (marked), and say that it was not saved.
function endIncomplete(bot, reason) {
  if (bot.classList.contains("typing")) bot.remove();
  else {
    bot.classList.add("incomplete");
    addMeta(bot, "Incomplete");
  }
  addError("The reply was interrupted.", `${reason} It was not saved; send your message again.`);
}

// -- input -------------------------------------------------------------------------------------

function grow() {
  // Setting style through the CSSOM is allowed by the page's CSP (style attributes in markup are not).
  input.style.height = "auto";
  input.style.height = `${input.scrollHeight}px`;
}

function submit() {
  const text = input.value;
  if (state.busy || !text.trim()) return;
  if (state.authRequired && !sessionStorage.getItem(KEY_ITEM) && !askKey("This bot needs an API key.")) return;
  input.value = "";
  grow();
  sendMessage(text);
}

input.addEventListener("input", grow);
input.addEventListener("keydown", (event) => {
  // Enter sends; Shift+Enter falls through to the textarea's own newline. While an input method is
  // composing (Chinese, Japanese...), Enter picks a candidate and must not send.
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing && event.keyCode !== 229) {
    event.preventDefault();
    submit();
  }
});
$("composer").addEventListener("submit", (event) => {
  event.preventDefault(); // never navigate: the CSP forbids form actions anyway
  submit();
});

newChat.addEventListener("click", async () => {
  if (state.busy) return;
  const sid = state.sessionId;
  state.sessionId = null;
  state.tokens = 0;
  showTokens();
  log.replaceChildren(empty);
  input.focus();
  if (sid) {
    try {
      await fetch(`sessions/${encodeURIComponent(sid)}`, { method: "DELETE", headers: authHeaders() });
    } catch {
      // Unreachable now: the bot forgets idle sessions on its own.
    }
  }
});

// -- who the bot is ------------------------------------------------------------------------------

async function loadInfo() {
  const model = $("bot-model");
  const dot = $("dot");
  try {
    const response = await fetch("info", { cache: "no-store" });
    const info = await response.json();
    state.name = info.name || "kubechat";
    $("bot-name").textContent = state.name;
    $("avatar").textContent = Array.from(state.name)[0] || "K";
    document.title = state.name === "kubechat" ? "kubechat" : `${state.name} · kubechat`;
    input.placeholder = `Message ${state.name}…`;
    state.authRequired = Boolean(info.auth_required);
    model.textContent = info.model || "no model configured";
    dot.className = info.ready ? "dot ready" : "dot not-ready";
    dot.title = info.ready ? "Ready" : "Not ready: the bot's settings or API key are missing";
    if (!info.ready) model.textContent += " · not ready";
    else return;
  } catch {
    model.textContent = "bot unreachable";
    dot.className = "dot not-ready";
  }
  setTimeout(loadInfo, 5000); // not ready yet: look again, settings and keys reload on their own
}

setBusy(false);
showTokens();
loadInfo();
input.focus();
