// The conversation as the page shows it: messages as elements of the log, a reply's Markdown rendered as it
// streams (see markdown.js for what makes it safe), and one-click copies. No state of the conversation here.
import { markdownAvailable, renderMarkdown } from "./markdown.js";

const log = document.getElementById("log");
const empty = document.getElementById("empty");
const announcer = document.getElementById("announce");

export function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

export function icon(path) {
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("viewBox", "0 0 24 24");
  svg.setAttribute("aria-hidden", "true");
  const shape = document.createElementNS("http://www.w3.org/2000/svg", "path");
  shape.setAttribute("d", path);
  svg.append(shape);
  return svg;
}

export function button(className, text, title) {
  const node = el("button", className, text);
  node.type = "button";
  if (title) node.title = title;
  return node;
}

export function announce(text) {
  announcer.textContent = "";
  requestAnimationFrame(() => {
    announcer.textContent = text;
  });
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

export function formatTokens(n) {
  return `${n.toLocaleString()} ${n === 1 ? "token" : "tokens"}`;
}

// -- copying ------------------------------------------------------------------------------------

async function copyText(text) {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch {
    // No clipboard API (a plain-http origin that is not localhost): the old way, from a hidden field.
    const area = el("textarea", "offscreen");
    area.value = text;
    area.setAttribute("readonly", "");
    area.setAttribute("aria-hidden", "true");
    document.body.append(area);
    area.select();
    let copied = false;
    try {
      copied = document.execCommand("copy");
    } catch {
      copied = false;
    }
    area.remove();
    return copied;
  }
}

function copyButton(text, title) {
  const node = button("copy", "Copy", title);
  node.addEventListener("click", async () => {
    const copied = await copyText(text());
    node.textContent = copied ? "Copied" : "Copy failed";
    announce(copied ? "Copied to the clipboard." : "The browser did not allow copying.");
    setTimeout(() => {
      node.textContent = "Copy";
    }, 1500);
  });
  return node;
}

// -- messages -------------------------------------------------------------------------------------

export function addUser(text) {
  const msg = el("div", "msg user");
  msg.append(el("div", "bubble", text));
  return append(msg);
}

export function addMeta(msg, text) {
  const meta = el("div", "meta", text);
  (msg.actions || msg).append(meta);
  return meta;
}

export function addNotice(text) {
  return append(el("div", "notice", text));
}

export function addError(title, detail) {
  const box = el("div", "error");
  box.setAttribute("role", "alert");
  const body = el("div");
  body.append(el("strong", "", title), " ", detail || "");
  box.append(body);
  return append(box);
}

// A bot message starts as three "typing" dots and becomes rendered Markdown with the first delta.
export function addBot() {
  const msg = el("div", "msg bot typing");
  msg.setAttribute("aria-busy", "true"); // screen readers wait for the whole reply
  msg.bubble = el("div", "bubble");
  msg.bubble.append(el("span"), el("span"), el("span"));
  msg.actions = el("div", "actions");
  msg.append(msg.bubble, msg.actions);
  msg.reply = { text: "", pending: false, nextAt: 0 };
  return append(msg);
}

export function botText(msg, text, replace) {
  const reply = msg.reply;
  reply.text = replace ? text : reply.text + text;
  if (msg.classList.contains("typing")) {
    msg.classList.remove("typing");
    msg.bubble.replaceChildren();
    msg.bubble.classList.add("md");
  }
  scheduleRender(msg);
}

// Streaming re-renders the whole reply (Markdown is not incremental), at most once per animation frame and,
// for long replies, no more than a quarter of the time: each render waits three times as long as the last
// one took, so a megabyte streaming in does not freeze the page.
function scheduleRender(msg) {
  const reply = msg.reply;
  if (reply.pending) return;
  reply.pending = true;
  const wait = Math.max(0, reply.nextAt - performance.now());
  setTimeout(() => {
    requestAnimationFrame(() => {
      reply.pending = false;
      renderReply(msg);
    });
  }, wait);
}

function renderReply(msg) {
  const follow = atBottom();
  const started = performance.now();
  fill(msg.bubble, msg.reply.text);
  const took = performance.now() - started;
  msg.reply.nextAt = performance.now() + Math.min(2000, took * 3);
  if (follow) log.scrollTop = log.scrollHeight;
}

function fill(bubble, text) {
  if (!markdownAvailable()) {
    bubble.classList.remove("md");
    bubble.textContent = text; // the vendored libraries did not load: plain text is still safe
    return;
  }
  bubble.replaceChildren(renderMarkdown(text));
  for (const pre of bubble.querySelectorAll("pre")) decorateCode(pre);
  for (const table of bubble.querySelectorAll("table")) {
    const box = el("div", "table"); // scrolls sideways on its own instead of widening the reply
    table.replaceWith(box);
    box.append(table);
  }
  markScrollable(bubble);
}

function decorateCode(pre) {
  const code = pre.querySelector("code");
  const lang = (/(?:^|\s)language-([\w+#.-]+)/.exec((code && code.className) || "") || [])[1] || "";
  const box = el("div", "code");
  const head = el("div", "code-head");
  head.append(el("span", "code-lang", lang || "code"), copyButton(() => pre.textContent, "Copy the code"));
  pre.replaceWith(box);
  box.append(head, pre);
}

// A code block or table that scrolls sideways must be reachable by keyboard to be scrolled.
function markScrollable(root) {
  for (const node of root.querySelectorAll("pre, .table")) {
    if (node.scrollWidth > node.clientWidth) node.tabIndex = 0;
    else node.removeAttribute("tabindex");
  }
}

/** The reply is over (finished, stopped or broken): render what there is once more, and offer to copy it. */
export function settle(msg) {
  msg.removeAttribute("aria-busy");
  if (msg.classList.contains("typing")) return;
  renderReply(msg);
  msg.actions.prepend(copyButton(() => msg.reply.text, "Copy the reply"));
}

export function addBotReply(text) {
  const msg = addBot();
  botText(msg, text, true);
  settle(msg);
  return msg;
}

addEventListener("resize", () => markScrollable(log));
