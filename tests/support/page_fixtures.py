"""pytest fixtures of the chat-page tests (registered in tests/conftest.py): one Chromium and one
``kubechat serve`` (with its fake upstream) per test module, and a fresh browser context per test."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

from tests.support.bot_process import BotProcess
from tests.support.browser import Tab, chromium, page_bot, reset
from tests.support.fake_openai import FakeOpenAI

if TYPE_CHECKING:
    from playwright.sync_api import Browser


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as launched:
        yield launched


@pytest.fixture(scope="module")
def page_server() -> Iterator[tuple[FakeOpenAI, BotProcess]]:
    """The module's bot (named Ada) and its upstream; each test has its own browser context and sessions."""
    with page_bot(bot_name="Ada") as pair:
        yield pair


@pytest.fixture
def fake(page_server: tuple[FakeOpenAI, BotProcess]) -> FakeOpenAI:
    """The module's upstream, reset: default replies, nothing queued, nothing seen."""
    return reset(page_server[0])


@pytest.fixture
def bot_url(page_server: tuple[FakeOpenAI, BotProcess]) -> str:
    return page_server[1].url


@pytest.fixture
def tab(browser: Browser, bot_url: str) -> Iterator[Tab]:
    opened = Tab(browser, bot_url, viewport={"width": 1280, "height": 800})
    yield opened
    opened.close()
