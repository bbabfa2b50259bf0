// This bot's API as the page calls it: relative URLs (so a path prefix works), the tab's access key on every
// call when the bot asked for one, and the bot's errors turned into words a person can act on.

// sessionStorage: the key lives as long as this tab, and no other tab or later visit sees it.
const KEY_SLOT = `kubechat.key:${location.pathname}`;

let askForKey = null; // set by the page: (reason) => Promise<string|null>
let asking = null; // one question at a time, however many calls were refused together

export function onKeyNeeded(ask) {
  askForKey = ask;
}

export function storedKey() {
  try {
    return sessionStorage.getItem(KEY_SLOT);
  } catch {
    return null; // storage disabled: the key is asked for again on the next refusal
  }
}

function keepKey(key) {
  try {
    if (key) sessionStorage.setItem(KEY_SLOT, key);
    else sessionStorage.removeItem(KEY_SLOT);
  } catch {
    // storage disabled: the key is used for this call only
  }
}

export function forgetKey() {
  keepKey(null);
}

function wantsBearer(response) {
  return response.status === 401 && /bearer/i.test(response.headers.get("WWW-Authenticate") || "");
}

/** fetch(path) with the tab's key; on a 401 asking for a bearer key, asks the person once and retries. */
export async function call(path, options = {}, key = storedKey()) {
  const headers = new Headers(options.headers || {});
  if (key) headers.set("Authorization", `Bearer ${key}`);
  const response = await fetch(path, { ...options, headers });
  if (!wantsBearer(response) || !askForKey) return response;
  if (key && key !== storedKey()) return call(path, options); // another call signed in meanwhile
  if (!asking) {
    const reason = key ? "refused" : "needed";
    asking = askForKey(reason).finally(() => {
      asking = null;
    });
  }
  const given = await asking;
  if (!given) return response; // the person cancelled: the 401 is said in words
  keepKey(given);
  return call(path, options, given);
}

// -- errors in words ---------------------------------------------------------------------------

/** Seconds until a refused call may pass: Retry-After (seconds or a date), else OpenAI's x-ratelimit-reset-*. */
export function waitSeconds(headers) {
  const retry = (headers && headers.get("Retry-After")) || "";
  if (/^\d+(\.\d+)?$/.test(retry.trim())) return Math.ceil(Number(retry));
  if (retry) {
    const at = Date.parse(retry);
    if (!Number.isNaN(at)) return Math.max(0, Math.ceil((at - Date.now()) / 1000));
  }
  const resets = ["x-ratelimit-reset-requests", "x-ratelimit-reset-tokens"]
    .map((name) => duration(headers && headers.get(name)))
    .filter((s) => s !== null);
  return resets.length ? Math.ceil(Math.max(...resets)) : null;
}

// OpenAI writes resets as "1s", "6m0s", "20ms", "1h2m3s".
function duration(text) {
  if (!text) return null;
  if (/^\d+(\.\d+)?$/.test(text)) return Number(text);
  const parts = /^(?:(\d+)h)?(?:(\d+)m(?!s))?(?:(\d+(?:\.\d+)?)s)?(?:(\d+)ms)?$/.exec(text.trim());
  if (!parts || !parts[0]) return null;
  const [, h, m, s, ms] = parts.map((p) => Number(p || 0));
  return h * 3600 + m * 60 + s + ms / 1000;
}

/** "in 45 s", "in 3 min 20 s", "in 2 h 5 min (at 14:05)", "in 3 days (on Friday 09:00)". */
export function formatWait(seconds) {
  if (seconds === null || seconds === undefined) return "in a moment";
  const s = Math.max(1, Math.round(seconds));
  if (s < 60) return `in ${s} s`;
  if (s < 3600) {
    const rest = s % 60;
    return `in ${Math.floor(s / 60)} min${rest ? ` ${rest} s` : ""}`;
  }
  const at = new Date(Date.now() + s * 1000);
  const clock = at.toLocaleTimeString(undefined, { hour: "2-digit", minute: "2-digit" });
  if (s < 86400) {
    const min = Math.floor((s % 3600) / 60);
    return `in ${Math.floor(s / 3600)} h${min ? ` ${min} min` : ""} (at ${clock})`;
  }
  const days = Math.round(s / 86400);
  const day = at.toLocaleDateString(undefined, { weekday: "long" });
  return `in ${days} ${days === 1 ? "day" : "days"} (on ${day} ${clock})`;
}

// The bot's messages start in lower case ("the bot has no ..."); shown after a title they read as sentences.
export function sentence(text) {
  const trimmed = (text || "").trim();
  if (!trimmed) return "";
  const capital = trimmed[0].toUpperCase() + trimmed.slice(1);
  return /[.!?]$/.test(capital) ? capital : `${capital}.`;
}

/** [title, detail] for a refused call: the bot's errors are {"error": {"code", "message"}}. */
export function describe(status, error, headers) {
  const code = (error && error.code) || "";
  const message = sentence((error && error.message) || "");
  const wait = formatWait(waitSeconds(headers));
  switch (code) {
    case "upstream_rate_limited":
      return ["Rate limited.", `The model API is rate limiting this bot; try again ${wait}.`];
    case "insufficient_quota":
      return ["Budget used up.", `Your budget on this bot is spent; it frees ${wait}.`];
    case "rate_limit_exceeded":
      return ["Rate limit reached.", `You are sending more than this bot allows; try again ${wait}.`];
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
  }
  if (status === 401) {
    return ["Sign-in needed.", "This bot needs an access key; send again to enter one."];
  }
  if (status === 403) {
    return [
      "Not allowed.",
      "Your access key is valid, but it does not give you the right to use this; ask whoever runs this bot.",
    ];
  }
  if (status === 429) return ["Too many requests.", `${message ? `${message} ` : ""}Try again ${wait}.`];
  if (status >= 500) return [`The bot failed (${status}).`, message];
  return [`The bot refused the message (${status}).`, message];
}
