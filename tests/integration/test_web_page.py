"""The bot's chat page: in a real browser (headless Chromium) against the bot on loopback and the fake
upstream, and its files and security headers over plain HTTP."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx2
import pytest

from chatbot_service.app import create_app
from tests.integration.conftest import API_KEY, BotFactory
from tests.support.browser import chromium
from tests.support.fake_openai import FakeOpenAI, Fault, Seen, encoding_for, prompt_tokens
from tests.support.servers import ThreadedServer, serving

if TYPE_CHECKING:
    from playwright.sync_api import Browser, ConsoleMessage, Dialog, Locator

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
SCREENSHOT = Path("/tmp/kubechat-page.png")
PHONE_SCREENSHOT = Path("/tmp/kubechat-page-phone.png")


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as launched:
        yield launched


class Tab:
    """A page in its own browser context, with what its console and script errors said."""

    def __init__(self, browser: Browser, **context: Any) -> None:
        self.context = browser.new_context(locale="en-US", **context)
        self.page = self.context.new_page()
        self.console: list[str] = []
        self.dialogs: list[str] = []
        self.page.on("console", self._on_console)
        self.page.on("pageerror", lambda error: self.console.append(f"pageerror: {error}"))
        self.page.on("dialog", self._on_dialog)

    def _on_console(self, message: ConsoleMessage) -> None:
        self.console.append(f"{message.type}: {message.text}")

    def _on_dialog(self, dialog: Dialog) -> None:
        self.dialogs.append(dialog.message)
        dialog.dismiss()

    def csp_violations(self) -> list[str]:
        return [m for m in self.console if "Content Security Policy" in m]

    def problems(self) -> list[str]:
        """Console errors and warnings, less the HTTP errors a test provokes (Chromium logs every one)."""
        return [
            m
            for m in self.console
            if not m.startswith(("log:", "debug:", "info:"))
            and "Failed to load resource: the server responded with a status of" not in m
        ]

    def send(self, text: str) -> None:
        box = self.page.locator("#input")
        box.fill(text)
        box.press("Enter")

    def last_reply(self) -> Locator:
        return self.page.locator(".msg.bot .bubble").last

    def tokens_shown(self) -> int:
        return int("".join(c for c in self.page.locator("#tokens").inner_text() if c.isdigit()))


@pytest.fixture
def tab(browser: Browser) -> Iterator[Tab]:
    opened = Tab(browser, viewport={"width": 1280, "height": 800})
    yield opened
    opened.context.close()


def turn_tokens(upstream: FakeOpenAI, seen: Seen) -> int:
    """What the fake reported as ``usage.total_tokens`` for one request it answered."""
    model, messages = seen.body["model"], seen.body["messages"]
    completion = len(encoding_for(model).encode(upstream.answer_for(messages), disallowed_special=()))
    return prompt_tokens(model, messages) + completion


def test_chat_in_the_browser(
    tab: Tab, start_bot: BotFactory, bot_env: dict[str, str], upstream: FakeOpenAI, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    page = tab.page
    with start_bot(bot_env | {"KUBECHAT_BOT_NAME": "Ada"}) as bot:
        response = page.goto(bot.url + "/")
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
        expect(page.locator("#tokens")).to_have_text(f"{turn_tokens(upstream, upstream.requests[0])} tokens")

        # The conversation is kept: the second request carries the first turn.
        tab.send("What did I say?")
        expect(tab.last_reply()).to_have_text("4 messages; last: What did I say?")
        expected = sum(turn_tokens(upstream, seen) for seen in upstream.requests)
        expect(page.locator("#tokens")).to_have_text(f"{expected:,} tokens")

        # While a reply is on its way, the send and reset buttons are disabled.
        upstream.fail_next(Fault(delay=0.8))
        tab.send("slow one")
        expect(page.locator("#send")).to_be_disabled()
        expect(page.locator("#new-chat")).to_be_disabled()
        expect(tab.last_reply()).to_have_text("6 messages; last: slow one")
        expect(page.locator("#send")).to_be_enabled()
        expected = sum(turn_tokens(upstream, seen) for seen in upstream.requests)

        # A refusal before streaming (429 with Retry-After) reads as words; the message comes back to resend.
        upstream.fail_next(Fault(status=429, headers={"retry-after": "3"}))
        tab.send("are you there?")
        error = page.locator(".error").last
        expect(error).to_contain_text("Rate limited")
        expect(error).to_contain_text("try again in 3 s")
        expect(page.locator(".msg.user.failed .meta")).to_have_text("Not sent")
        expect(page.locator("#input")).to_have_value("are you there?")
        page.locator("#input").fill("")

        # A stream that breaks midway keeps what arrived, marked, and says it was not saved.
        upstream.fail_next(Fault(break_stream_after=2))
        tab.send("tell me more")
        expect(page.locator(".error").last).to_contain_text("The reply was interrupted")
        expect(page.locator(".msg.bot.incomplete .bubble")).to_have_text("8 messages;")
        expect(page.locator("#send")).to_be_enabled()
        expect(page.locator("#tokens")).to_have_text(f"{expected:,} tokens")  # failures cost nothing

        page.screenshot(path=tmp_path / "desktop.png", animations="disabled")
        shutil.copyfile(tmp_path / "desktop.png", SCREENSHOT)

        # "New conversation" forgets the session on the bot and clears the view.
        with page.expect_response(lambda r: r.request.method == "DELETE") as deleted:
            page.locator("#new-chat").click()
        assert deleted.value.status == 204
        expect(page.locator("#log .msg, #log .error")).to_have_count(0)
        expect(page.locator("#tokens")).to_have_text("0 tokens")
        tab.send("Hi again")
        expect(tab.last_reply()).to_have_text("2 messages; last: Hi again")
        expect(page.locator("#tokens")).to_have_text(f"{turn_tokens(upstream, upstream.last)} tokens")

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
        assert tab.last_reply().text_content() == "4 messages; last: line one\nline two"

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


def test_a_reply_is_text_never_html(browser: Browser, bot_env: dict[str, str]) -> None:
    from playwright.sync_api import expect

    html = "<img src=x onerror=alert(1)><b>bold</b>"
    fake = FakeOpenAI(api_keys={API_KEY}, reply=html)
    tab = Tab(browser, viewport={"width": 1024, "height": 700})
    try:
        with serving(fake.app) as upstream:
            env = bot_env | {"OPENAI_BASE_URL": upstream.url + "/v1"}
            with serving(create_app(environ=env)) as bot:
                tab.page.goto(bot.url + "/")
                tab.send("<script>alert(2)</script><i>hi</i>")
                expect(tab.last_reply()).to_have_text(html)
                expect(tab.page.locator(".msg.user .bubble")).to_have_text(
                    "<script>alert(2)</script><i>hi</i>"
                )
                for tag in ("img", "b", "i", "script"):
                    assert tab.page.locator(f"#log {tag}").count() == 0, tag
                tab.page.wait_for_timeout(100)  # an onerror would have fired by now
        assert tab.dialogs == []
        assert tab.problems() == [], tab.console
    finally:
        tab.context.close()


def test_trimmed_history_on_a_phone(
    browser: Browser, start_bot: BotFactory, bot_env: dict[str, str], tmp_path: Path
) -> None:
    """A phone-sized screen: nothing wider than the screen, and the notice when older turns were left out."""
    from playwright.sync_api import expect

    tab = Tab(
        browser, viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True, has_touch=True
    )
    env = bot_env | {"KUBECHAT_MAX_CONTEXT_TOKENS": "300", "KUBECHAT_MAX_REPLY_TOKENS": "100"}
    try:
        with start_bot(env) as bot:
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
        assert tab.problems() == [], tab.console
    finally:
        tab.context.close()


def test_a_bot_without_a_key_says_so(
    browser: Browser, start_bot: BotFactory, bot_env: dict[str, str]
) -> None:
    from playwright.sync_api import expect

    env = {k: v for k, v in bot_env.items() if k != "OPENAI_API_KEY"}
    tab = Tab(browser, viewport={"width": 1024, "height": 700})
    try:
        with start_bot(env) as bot:
            page = tab.page
            page.goto(bot.url + "/")
            expect(page.locator("#bot-model")).to_have_text("gpt-4o-mini · not ready")
            expect(page.locator("#dot")).to_have_class("dot not-ready")
            tab.send("hello?")
            expect(page.locator(".error")).to_contain_text("The bot is not ready.")
            expect(page.locator(".error")).to_contain_text(re.compile(r"api.key", re.IGNORECASE))
    finally:
        tab.context.close()


# -- plain HTTP ------------------------------------------------------------------------------


class _Inline(HTMLParser):
    """Finds what a strict CSP would refuse in a page: inline scripts, styles, handlers."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        names = {name for name, _ in attrs}
        if tag == "style" or (tag == "script" and "src" not in names):
            self.found.append(f"<{tag}>")
        self.found += [f"{tag}[{name}]" for name in names if name == "style" or name.startswith("on")]


def test_page_files_are_served_with_security_headers(bot: ThreadedServer) -> None:
    expected_types = {
        "/": "text/html; charset=utf-8",
        "/static/index.html": "text/html; charset=utf-8",
        "/static/app.js": ("text/javascript; charset=utf-8", "application/javascript"),
        "/static/style.css": "text/css; charset=utf-8",
    }
    for path, content_type in expected_types.items():
        response = httpx2.get(bot.url + path)
        assert response.status_code == 200, path
        assert response.headers["content-type"] in (
            content_type if isinstance(content_type, tuple) else (content_type,)
        ), path
        assert response.headers["content-security-policy"] == CSP, path
        assert response.headers["x-content-type-options"] == "nosniff", path
        assert response.headers["referrer-policy"] == "no-referrer", path
    page = httpx2.get(bot.url + "/").text
    assert 'src="static/app.js"' in page and 'href="static/style.css"' in page
    parser = _Inline()
    parser.feed(page)
    assert parser.found == []
    assert "innerHTML" not in httpx2.get(bot.url + "/static/app.js").text
    missing = httpx2.get(bot.url + "/static/nope.js")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    assert httpx2.get(bot.url + "/static/%2e%2e/app.py").status_code == 404
    # The API documentation loads its own scripts: the page's CSP is not applied to it.
    assert "content-security-policy" not in httpx2.get(bot.url + "/docs").headers


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
    from tests.support.mounted import write_keys

    key = "kc-page-7a1c3e5b9d2f4a68"
    write_keys(tmp_path / "keys", {"page-user": key})
    env = bot_env | {"KUBECHAT_ACCESS": '{"apiKeys": {}}', "KUBECHAT_API_KEYS_DIR": str(tmp_path / "keys")}
    with serving(create_app(environ=env)) as bot:
        context = browser.new_context(locale="en-US")
        page = context.new_page()
        answers = iter(["kc-wrong-000000000000", key])
        asked: list[str] = []

        def on_dialog(dialog: Dialog) -> None:
            asked.append(dialog.message)
            dialog.accept(next(answers))

        page.on("dialog", on_dialog)
        page.goto(bot.url + "/")
        page.wait_for_function("() => document.querySelector('#bot-model').textContent !== 'connecting…'")
        box = page.locator("#input")
        box.fill("hello")
        box.press("Enter")
        page.locator(".error").first.wait_for()
        assert "needs a valid key" in page.locator(".error").first.inner_text()
        assert asked and "kept for this tab only" in asked[0]
        box.fill("hello again")  # the wrong key was dropped: asked again
        box.press("Enter")
        page.locator(".msg.bot:not(.typing) .bubble").last.wait_for()
        page.wait_for_function("() => document.querySelectorAll('.msg.bot .bubble').length >= 1")
        assert len(asked) == 2
        stored = page.evaluate("() => [sessionStorage.getItem('kubechat-api-key'), localStorage.length]")
        assert stored == [key, 0]
        page.wait_for_function(
            "() => /last: hello again/.test(document.querySelector('.msg.bot .bubble').textContent)"
        )
        context.close()
