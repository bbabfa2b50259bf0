// The conversations this browser had with this bot: ids and titles in localStorage, one list per bot (bots
// behind one ingress share an origin, so the list is keyed by the page's path). The messages themselves stay
// in the bot's session store; this list only remembers where to find them.

const SLOT = `kubechat.conversations:${location.pathname}`;
const MAX_ENTRIES = 100;
const MAX_TITLE = 80;

function read() {
  try {
    const entries = JSON.parse(localStorage.getItem(SLOT) || "[]");
    return Array.isArray(entries) ? entries.filter((e) => e && typeof e.id === "string") : [];
  } catch {
    return []; // storage disabled or damaged: no history rather than no page
  }
}

function write(entries) {
  try {
    localStorage.setItem(SLOT, JSON.stringify(entries.slice(0, MAX_ENTRIES)));
  } catch {
    // full or disabled: the history is not kept, the conversation goes on
  }
}

/** Newest first. */
export function conversations() {
  return read().sort((a, b) => (b.updated || 0) - (a.updated || 0));
}

export function find(id) {
  return read().find((e) => e.id === id) || null;
}

/** The title is the first message, on one line and cut to a readable length. */
export function titleOf(text) {
  const line = text.replace(/\s+/g, " ").trim();
  return line.length > MAX_TITLE ? `${line.slice(0, MAX_TITLE - 1)}…` : line || "(empty message)";
}

/** Record a turn of conversation ``id`` (created by its first recorded turn). */
export function remember(id, firstMessage, tokens) {
  const entries = read();
  const found = entries.find((e) => e.id === id);
  if (found) {
    found.updated = Date.now();
    found.tokens = tokens;
    delete found.expired;
  } else {
    entries.unshift({ id, title: titleOf(firstMessage), updated: Date.now(), tokens });
  }
  write(entries.sort((a, b) => (b.updated || 0) - (a.updated || 0)));
}

export function markExpired(id) {
  const entries = read();
  const found = entries.find((e) => e.id === id);
  if (found) {
    found.expired = true;
    write(entries);
  }
}

export function forget(id) {
  write(read().filter((e) => e.id !== id));
}
