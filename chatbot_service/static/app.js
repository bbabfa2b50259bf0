// kubechat: the chat page of one bot. Plain JavaScript modules, no build step; Markdown through the vendored
// markdown-it + DOMPurify (see markdown.js). It talks to this bot only, with relative URLs (so it also works
// under a path prefix): GET info, POST chat with "stream": true (Server-Sent Events), GET and DELETE
// sessions/{id}. Text from the user only ever goes into the page as textContent; a reply only as sanitized
// Markdown nodes.
import { call, describe, sentence } from "./api.js";
import * as history from "./history.js";
import {
  addBot,
  addBotReply,
  addError,
  addMeta,
  addNotice,
  addUser,
  announce,
  botText,
  button,
  el,
  formatTokens,
  icon,
  settle,
} from "./messages.js";
import { setUpSignIn, signInOpen } from "./signin.js";
import { events } from "./sse.js";

const $ = (id) => document.getElementById(id);
const shell = $("shell");
const log = $("log");
const empty = $("empty");
const input = $("input");
const send = $("send");
const stop = $("stop");
const newChat = $("new-chat");
const statusLine = $("status");
const tokensLine = $("tokens");
const list = $("conversations");
const noConversations = $("no-conversations");
const toggleSide = $("toggle-side");
const main = shell.querySelector(".app");

// Keyboard hints mean nothing on a touch screen.
const TOUCH = matchMedia("(pointer: coarse)").matches;
const IDLE_STATUS = TOUCH ? "" : "Enter to send · Shift+Enter for a new line";
const ACTIVE_SLOT = `kubechat.active:${location.pathname}`; // the tab's open conversation, across reloads

const state = {
  sessionId: null, // the conversation the next message continues
  recorded: false, // the bot has at least one turn of it (a first turn that broke off leaves nothing)
  firstMessage: null,
  tokens: 0,
  busy: false,
  controller: null, // aborts the reply streaming now
  name: "kubechat",
};


function showTokens() {
  tokensLine.textContent = formatTokens(state.tokens);
}


// -- the conversation's identity ------------------------------------------------------------------

function setActive(id) {
  try {
    if (id) sessionStorage.setItem(ACTIVE_SLOT, id);
    else sessionStorage.removeItem(ACTIVE_SLOT);
  } catch {
    // storage disabled: a reload starts a new conversation
  }
}

function activeId() {
  try {
    return sessionStorage.getItem(ACTIVE_SLOT);
  } catch {
    return null;
  }
}

function startOver() {
  state.sessionId = null;
  state.recorded = false;
  state.firstMessage = null;
  state.tokens = 0;
  showTokens();
  setActive(null);
  log.replaceChildren(empty);
}

// -- a turn -------------------------------------------------------------------------------------

function setBusy(busy) {
  state.busy = busy;
  const hadFocus = document.activeElement === stop || document.activeElement === send;
  send.disabled = busy;
  send.hidden = busy;
  stop.hidden = !busy;
  newChat.disabled = busy; // switching mid-reply would race the turn still being recorded
  for (const node of list.querySelectorAll("button")) node.disabled = busy;
  statusLine.textContent = busy ? `${state.name} is replying…${TOUCH ? "" : " · Esc to stop"}` : IDLE_STATUS;
  if (hadFocus) (busy ? stop : input).focus();
}

// A message that never reached the model stays visible, marked, and goes back into an empty box to resend.
function notSent(userMsg, text, label = "Not sent") {
  userMsg.classList.add("failed");
  addMeta(userMsg, label);
  if (!input.value) {
    input.value = text;
    grow();
  }
}

async function sendMessage(text) {
  const controller = new AbortController();
  state.controller = controller;
  setBusy(true);
  const userMsg = addUser(text);
  const bot = addBot();
  try {
    let response;
    try {
      response = await call("chat", {
        method: "POST",
        headers: { "Content-Type": "application/json", Accept: "text/event-stream" },
        body: JSON.stringify({ message: text, session_id: state.sessionId || undefined, stream: true }),
        signal: controller.signal,
      });
    } catch {
      bot.remove();
      if (controller.signal.aborted) {
        addNotice("Stopped before the bot answered: nothing was saved.");
        notSent(userMsg, text, "Stopped");
      } else {
        addError("Cannot reach the bot.", "Check the connection (is the port-forward still running?) and try again.");
        notSent(userMsg, text);
      }
      return;
    }
    if (!response.ok) {
      // Refused before streaming: a JSON error with an HTTP status.
      const body = await response.json().catch(() => null);
      bot.remove();
      const error = body && body.error;
      if (error && error.code === "session_not_found") {
        // The conversation expired or the bot restarted: the next message starts a new one.
        if (state.sessionId) history.markExpired(state.sessionId);
        startOverKeepingView();
        addError("This conversation is gone.", "The bot no longer has it (it expired or the bot restarted); send your message again to start a new one.");
      } else {
        addError(...describe(response.status, error, response.headers));
      }
      notSent(userMsg, text);
      return;
    }
    await readStream(response, bot, userMsg, text, controller.signal);
  } finally {
    state.controller = null;
    setBusy(false);
    renderHistory();
  }
}

function startOverKeepingView() {
  state.sessionId = null;
  state.recorded = false;
  state.firstMessage = null;
  setActive(null);
}

// The reply's events, until one ends the turn; a stream that ends without one was stopped or broke off.
async function readStream(response, bot, userMsg, text, signal) {
  const turn = { text };
  try {
    for await (const event of events(response)) {
      if (onEvent(event, bot, turn)) return;
    }
  } catch {
    // stopped, or the connection broke; said below
  }
  if (signal.aborted) {
    endIncomplete(bot, userMsg, "stopped");
  } else {
    endIncomplete(bot, userMsg, "The connection to the bot was lost before the reply finished.");
  }
}


// Handles one event; true when the turn is over.
function onEvent({ name, data }, bot, turn) {
  switch (name) {
    case "session":
      state.sessionId = data.session_id;
      return false;
    case "delta":
      if (data.delta) botText(bot, data.delta);
      return false;
    case "done": {
      state.sessionId = data.session_id;
      if (!state.recorded) state.firstMessage = turn.text;
      state.recorded = true;
      setActive(state.sessionId);
      // The final reply is authoritative: it is what the bot recorded.
      botText(bot, data.reply || "", true);
      if (!data.reply) botText(bot, "(empty reply)", true);
      settle(bot);
      const usage = data.usage || {};
      const used = Number(usage.total_tokens) || 0;
      state.tokens += used;
      showTokens();
      addMeta(bot, formatTokens(used));
      history.remember(state.sessionId, state.firstMessage, state.tokens);
      const dropped = Number(usage.dropped_messages) || 0;
      if (data.truncated || dropped > 0) {
        const what = dropped === 1 ? "1 older message was" : dropped ? `${dropped} older messages were` : "Older messages were";
        addNotice(`${what} left out so the conversation fits the model's context window.`);
      }
      return true;
    }
    case "error": {
      const error = data.error || {};
      endIncomplete(bot, null, sentence(error.message || "The bot failed while replying."));
      return true;
    }
  }
  return false;
}

// A reply that broke off or was stopped: keep what arrived, marked, and say that this turn was not saved (the
// bot records a turn only once the model finished it), so the next reply will not see it.
function endIncomplete(bot, userMsg, reason) {
  const stopped = reason === "stopped";
  if (!state.recorded) startOverKeepingView(); // a first turn that never finished created no conversation
  if (bot.classList.contains("typing")) bot.remove();
  else {
    bot.classList.add("incomplete");
    settle(bot);
    addMeta(bot, stopped ? "Stopped · not saved" : "Incomplete");
  }
  if (userMsg) userMsg.classList.add("unsaved");
  if (stopped) {
    addNotice("You stopped the reply. This message and the partial reply were not saved: the bot will not see them.");
  } else {
    addError("The reply was interrupted.", `${reason} It was not saved; send your message again.`);
  }
}

function stopReply() {
  if (state.controller) state.controller.abort();
}

// -- history ------------------------------------------------------------------------------------

function renderHistory() {
  const entries = history.conversations();
  list.replaceChildren(
    ...entries.map((entry, i) => {
      const item = el("li", "conv");
      const current = entry.id === state.sessionId;
      if (current) item.classList.add("current");
      const open = button("open");
      const title = el("span", "title", entry.title);
      title.id = `conv-title-${i}`;
      open.append(title);
      if (entry.expired) {
        item.classList.add("expired");
        open.append(el("span", "badge", "expired"));
      }
      if (current) open.setAttribute("aria-current", "true");
      open.addEventListener("click", () => openConversation(entry.id));
      const remove = button("delete", undefined, "Delete this conversation");
      remove.setAttribute("aria-label", "Delete");
      remove.setAttribute("aria-describedby", title.id);
      remove.append(icon("M9 3h6l1 2h4v2H4V5h4zm-3 6h12l-1 12H7z"));
      remove.addEventListener("click", () => deleteConversation(entry.id, i));
      if (state.busy) open.disabled = remove.disabled = true;
      item.append(open, remove);
      return item;
    }),
  );
  noConversations.hidden = entries.length > 0;
}

// GET or DELETE sessions/{id}; null, once said, when the bot cannot be reached.
async function sessionRequest(id, options, unreachable) {
  try {
    return await call(`sessions/${encodeURIComponent(id)}`, options);
  } catch {
    addError("Cannot reach the bot.", unreachable);
    return null;
  }
}

async function sayRefused(response) {
  const body = await response.json().catch(() => null);
  addError(...describe(response.status, body && body.error, response.headers));
}

async function openConversation(id) {
  if (state.busy) return;
  closeSide();
  const entry = history.find(id);
  const response = await sessionRequest(id, { cache: "no-store" }, "The conversation could not be loaded; try again.");
  if (!response) return;
  if (response.status === 404) {
    history.markExpired(id);
    startOver();
    renderHistory();
    addError(
      "This conversation has expired.",
      "The bot no longer keeps it (conversations are forgotten after a while without use, or when the bot restarts). Send a message to start a new one, or delete it from the list.",
    );
    input.focus();
    return;
  }
  if (!response.ok) {
    await sayRefused(response);
    return;
  }
  const session = await response.json();
  startOver();
  state.sessionId = id;
  state.recorded = true;
  state.firstMessage = entry ? entry.title : null;
  state.tokens = (entry && Number(entry.tokens)) || 0;
  showTokens();
  setActive(id);
  for (const message of session.messages || []) {
    let shown = null;
    if (message.role === "user") shown = addUser(message.content);
    else if (message.role === "assistant") shown = addBotReply(message.content);
    if (shown) shown.classList.add("restored"); // there at once, not rising in one by one
  }
  log.scrollTop = log.scrollHeight;
  renderHistory();
  announce(`Opened the conversation “${entry ? entry.title : id}”.`);
  input.focus();
}

async function deleteConversation(id, index) {
  if (state.busy) return;
  const response = await sessionRequest(id, { method: "DELETE" }, "The conversation was not deleted; try again.");
  if (!response) return;
  // 404: the bot had already forgotten it; either way it goes from the list.
  if (!response.ok && response.status !== 404) {
    await sayRefused(response);
    return;
  }
  history.forget(id);
  if (id === state.sessionId) startOver();
  renderHistory();
  announce("Conversation deleted.");
  // Keep the keyboard where it was: on the next entry, or the one before, or the new-conversation button.
  const buttons = list.querySelectorAll(".delete");
  (buttons[Math.min(index, buttons.length - 1)] || newChat).focus();
}

function newConversation() {
  if (state.busy) return;
  startOver(); // the old conversation stays on the bot and in the list, to come back to
  renderHistory();
  closeSide();
  input.focus();
}

// The side panel is always there on a wide screen; on a phone it slides over the conversation.
function openSide() {
  shell.classList.add("side-open");
  main.inert = true; // the panel is over the conversation: keyboard and screen readers stay in it
  toggleSide.setAttribute("aria-expanded", "true");
  (list.querySelector("button") || $("close-side")).focus();
}

function closeSide() {
  if (!shell.classList.contains("side-open")) return;
  shell.classList.remove("side-open");
  main.inert = false;
  toggleSide.setAttribute("aria-expanded", "false");
  toggleSide.focus();
}

toggleSide.addEventListener("click", () => (shell.classList.contains("side-open") ? closeSide() : openSide()));
$("close-side").addEventListener("click", closeSide);
$("backdrop").addEventListener("click", closeSide);


// -- input --------------------------------------------------------------------------------------

function grow() {
  // Setting style through the CSSOM is allowed by the page's CSP (style attributes in markup are not).
  input.style.height = "auto";
  input.style.height = `${input.scrollHeight}px`;
}

function submit() {
  const text = input.value;
  if (state.busy || !text.trim()) return;
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
stop.addEventListener("click", stopReply);
document.addEventListener("keydown", (event) => {
  if (event.key !== "Escape" || signInOpen()) return;
  if (state.busy) {
    event.preventDefault();
    stopReply();
  } else if (shell.classList.contains("side-open")) {
    closeSide();
  }
});
newChat.addEventListener("click", newConversation);

// -- who the bot is ------------------------------------------------------------------------------

async function loadInfo() {
  const model = $("bot-model");
  const dot = $("dot");
  try {
    const response = await call("info", { cache: "no-store" });
    if (response.status === 401 || response.status === 403) {
      model.textContent = response.status === 401 ? "sign-in needed" : "not allowed";
      dot.className = "dot not-ready";
      return;
    }
    const info = await response.json();
    state.name = info.name || "kubechat";
    $("bot-name").textContent = state.name;
    $("avatar").textContent = Array.from(state.name)[0] || "K";
    document.title = state.name === "kubechat" ? "kubechat" : `${state.name} · kubechat`;
    input.placeholder = `Message ${state.name}…`;
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

setUpSignIn(() => state.name, input);
setBusy(false);
showTokens();
renderHistory();
loadInfo();
const resume = activeId();
if (resume && history.find(resume)) openConversation(resume);
input.focus();
