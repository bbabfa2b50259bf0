"""A real headless browser for the page tests: Debian's Chromium driven by Playwright, a tab that records what
the page did (console, dialogs, every request), axe-core for accessibility, and the bot the page talks to as a
real ``kubechat serve`` process.

Playwright's own browser download cannot work where these tests run, so it drives the system's
Chromium. Without one the browser tests skip on a developer's machine and fail in CI (``CI`` set),
so a CI that lost its browser cannot pass silently.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn
from urllib.parse import urlsplit

import pytest

from tests.support.bot_process import API_KEY, BotProcess, bot_environment, kubechat_serve
from tests.support.fake_openai import FakeOpenAI
from tests.support.servers import serving

if TYPE_CHECKING:
    from playwright.sync_api import Browser, ConsoleMessage, Dialog, Locator, Page, Request, Route

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
AXE = Path(__file__).parent / "data" / "axe-core" / "axe.min.js"


def _missing(reason: str) -> NoReturn:
    if os.environ.get("CI"):
        pytest.fail(f"{reason}; CI must install it (see .ci/run)", pytrace=False)
    pytest.skip(reason)


@contextmanager
def chromium() -> Iterator[Browser]:
    """Headless Chromium, closed (with Playwright's driver) on exit."""
    if not CHROMIUM.exists():
        _missing(f"no browser at {CHROMIUM} (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("Playwright is not installed (pip install playwright)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


# -- the bot the page talks to ------------------------------------------------------------------


@contextmanager
def fake_upstream() -> Iterator[FakeOpenAI]:
    """The fake OpenAI upstream, in this process (scriptable), accepting the bots' key."""
    fake = FakeOpenAI(api_keys={API_KEY})
    with serving(fake.app) as server:
        fake.url = server.url + "/v1"
        yield fake


@contextmanager
def page_bot(**settings: str) -> Iterator[tuple[FakeOpenAI, BotProcess]]:
    """The fake upstream and a ``kubechat serve`` process using it."""
    with fake_upstream() as fake, kubechat_serve(bot_environment(fake, **settings)) as bot:
        yield fake, bot


def reset(fake: FakeOpenAI) -> FakeOpenAI:
    """A module's shared upstream as a test expects to find it: default replies, nothing queued or seen."""
    fake.reply = None
    fake.faults.clear()
    fake.requests.clear()
    return fake


# -- a tab ----------------------------------------------------------------------------------------


class Tab:
    """A page in its own browser context (its own storage), with what its console said, the dialogs it
    opened and every request it made. Requests anywhere but the bot are refused before they leave
    (and recorded), so a page that tried to load something from a reply is seen, not served."""

    def __init__(self, browser: Browser, bot_url: str = "", **context: Any) -> None:
        self.context = browser.new_context(locale="en-US", **context)
        self.bot_origin = urlsplit(bot_url).netloc
        self.page = self.context.new_page()
        self.console: list[str] = []
        self.dialogs: list[str] = []
        self.requests: list[str] = []
        self.refused: list[str] = []
        self.page.on("console", self._on_console)
        self.page.on("pageerror", lambda error: self.console.append(f"pageerror: {error}"))
        self.page.on("dialog", self._on_dialog)
        self.context.on("request", self._on_request)
        if self.bot_origin:
            self.context.route("**/*", self._route)

    def _on_console(self, message: ConsoleMessage) -> None:
        self.console.append(f"{message.type}: {message.text}")

    def _on_dialog(self, dialog: Dialog) -> None:
        self.dialogs.append(dialog.message)
        dialog.dismiss()

    def _on_request(self, request: Request) -> None:
        self.requests.append(f"{request.method} {request.url}")

    def _route(self, route: Route) -> None:
        url = route.request.url
        if urlsplit(url).netloc == self.bot_origin:
            route.continue_()
        else:
            self.refused.append(url)
            route.abort()

    def close(self) -> None:
        self.context.close()

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

    def replies(self) -> Locator:
        return self.page.locator("#log .msg.bot")

    def last_reply(self) -> Locator:
        return self.page.locator(".msg.bot .bubble").last

    def wait_until_done(self) -> None:
        """The last reply finished: its token count is shown and the page is idle again."""
        from playwright.sync_api import expect

        expect(self.page.locator("#send")).to_be_enabled(timeout=60_000)
        expect(self.page.locator("#log .msg.bot").last).not_to_have_attribute("aria-busy", "true")

    def tokens_shown(self) -> int:
        return int("".join(c for c in self.page.locator("#tokens").inner_text() if c.isdigit()))


# -- what a person would see --------------------------------------------------------------------


def axe_violations(page: Page, impacts: tuple[str, ...] = ("serious", "critical")) -> list[dict[str, Any]]:
    """axe-core's violations of the page as it is now, at these impacts. axe is injected as an init script
    of the page's context (``with_axe``), which the page's CSP does not apply to."""
    script = """async () => {
        // What a person sees once things settle: finite animations (a message rising in) finished first.
        // allSettled: an animation cancelled meanwhile (its element replaced) rejects with an AbortError.
        const finite = document.getAnimations().filter((a) => a.effect.getTiming().iterations !== Infinity);
        await Promise.allSettled(finite.map((a) => a.finished));
        return await axe.run(document, { resultTypes: ["violations"] });
    }"""
    result: dict[str, Any] = page.evaluate(script)
    found = [
        {
            "id": v["id"],
            "impact": v["impact"],
            "help": v["help"],
            "nodes": [f"{n['html'][:160]}: {n.get('failureSummary', '')[:300]}" for n in v["nodes"][:5]],
        }
        for v in result["violations"]
        if v["impact"] in impacts
    ]
    if found:  # the whole story, where a person can read it (pytest shortens long assertion messages)
        Path("/tmp/kubechat-axe.json").write_text(json.dumps(found, indent=1))
    return found


def with_axe(tab: Tab) -> Tab:
    tab.context.add_init_script(path=str(AXE))
    return tab


def colours(browser: Browser, png: bytes) -> dict[str, int]:
    """How many pixels of each colour (#rrggbb, opaque) a screenshot holds, decoded by the browser."""
    context = browser.new_context()
    try:
        page = context.new_page()
        counts: dict[str, int] = page.evaluate(
            """async (data) => {
                const image = new Image();
                image.src = data;
                await image.decode();
                const canvas = new OffscreenCanvas(image.width, image.height);
                const g = canvas.getContext("2d");
                g.drawImage(image, 0, 0);
                const px = g.getImageData(0, 0, image.width, image.height).data;
                const counts = {};
                for (let i = 0; i < px.length; i += 4) {
                    const hex = [px[i], px[i + 1], px[i + 2]].map((v) => v.toString(16).padStart(2, "0"));
                    const key = "#" + hex.join("");
                    counts[key] = (counts[key] || 0) + 1;
                }
                return counts;
            }""",
            "data:image/png;base64," + base64.b64encode(png).decode(),
        )
        return counts
    finally:
        context.close()
