// Markdown of a reply, made safe: markdown-it (raw HTML off: it stays text) renders, DOMPurify then keeps
// only the elements and attributes a reply needs, and the result comes back as DOM nodes (never a string
// assigned to the page). A model's reply is untrusted: whatever a prompt injection makes it write, nothing
// in it may run code or load anything (a remote image would leak the conversation through its URL).
// The elements Markdown produces, and no others: no img, no form, no iframe, no svg, no style.
const TAGS = [
  "a", "blockquote", "br", "code", "del", "em", "h1", "h2", "h3", "h4", "h5", "h6", "hr", "li", "ol", "p",
  "pre", "s", "span", "strong", "table", "tbody", "td", "th", "thead", "tr", "ul",
];
// Links only to the web or to mail; never javascript:, data:, file: or a path on this bot.
const LINK = /^(?:https?:|mailto:)/i;
const PURIFY = {
  ALLOWED_TAGS: TAGS,
  ALLOWED_ATTR: ["href", "class", "start", "title"],
  ALLOWED_URI_REGEXP: LINK,
  ALLOW_DATA_ATTR: false,
  ALLOW_ARIA_ATTR: false,
  RETURN_DOM_FRAGMENT: true,
};
// Highlighting is linear but not free: past this, a code block is shown plain.
const MAX_HIGHLIGHT = 100_000;

let md = null;

function escapeText(text) {
  return text.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

function highlight(code, lang) {
  const hljs = window.hljs;
  if (!hljs || !lang || code.length > MAX_HIGHLIGHT || !hljs.getLanguage(lang)) return "";
  try {
    return hljs.highlight(code, { language: lang, ignoreIllegals: true }).value;
  } catch {
    return ""; // markdown-it escapes it as plain text
  }
}

function renderer() {
  if (md) return md;
  md = window.markdownit({ html: false, linkify: true, typographer: false, highlight });
  // An image is never loaded: it becomes a link to it (a click away) or, if its URL is not a web one, text.
  md.renderer.rules.image = (tokens, idx) => {
    const token = tokens[idx];
    const src = token.attrGet("src") || "";
    const label = `Image: ${token.content || "untitled"}`;
    if (LINK.test(src) && !/^mailto:/i.test(src)) {
      return `<a href="${escapeText(src)}" class="image-link">${escapeText(label)}</a>`;
    }
    return `<span class="image-link">[${escapeText(label)}]</span>`;
  };
  // Table alignment comes as style="text-align:..."; the CSP refuses style attributes, so use classes.
  md.core.ruler.push("align_classes", (state) => {
    for (const token of state.tokens) {
      if ((token.type === "th_open" || token.type === "td_open") && token.attrs) {
        const style = token.attrGet("style") || "";
        token.attrs = token.attrs.filter(([name]) => name !== "style");
        const align = /text-align:(left|center|right)/.exec(style);
        if (align) token.attrJoin("class", `align-${align[1]}`);
      }
    }
  });
  const purify = window.DOMPurify;
  purify.addHook("afterSanitizeAttributes", (node) => {
    // Set after the attribute check, so the model cannot choose them.
    if (node.tagName === "A" && node.hasAttribute("href")) {
      node.setAttribute("target", "_blank");
      node.setAttribute("rel", "noopener noreferrer nofollow");
    }
    // Only markdown-it's and highlight.js's own classes.
    if (node.hasAttribute && node.hasAttribute("class")) {
      const kept = node.className
        .split(/\s+/)
        .filter((c) => /^(?:hljs(?:-[\w-]+)?|language-[\w+#.-]+|align-(?:left|center|right)|image-link)$/.test(c));
      if (kept.length) node.className = kept.join(" ");
      else node.removeAttribute("class");
    }
  });
  return md;
}

/** The reply's Markdown as a sanitized fragment of this document, ready to insert. */
export function renderMarkdown(text) {
  const html = renderer().render(text);
  return window.DOMPurify.sanitize(html, PURIFY);
}

/** False when the vendored libraries did not load (the reply is then shown as plain text). */
export function markdownAvailable() {
  return typeof window.markdownit === "function" && typeof window.DOMPurify?.sanitize === "function";
}
