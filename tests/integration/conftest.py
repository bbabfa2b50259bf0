"""Servers for the chat service tests: a fake OpenAI upstream and the bot itself, both on loopback."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import pytest

from chatbot_service.app import create_app
from tests.support.bot_process import bot_environment
from tests.support.fake_openai import FakeOpenAI
from tests.support.redis_server import RedisServer
from tests.support.servers import ThreadedServer, serving

API_KEY = "sk-test-4f8a1c2e9b7d"
REDIS_PASSWORD = "redis-pass-7c1e"


@pytest.fixture
def upstream() -> Iterator[FakeOpenAI]:
    fake = FakeOpenAI(api_keys={API_KEY})
    with serving(fake.app) as server:
        fake.url = server.url + "/v1"
        yield fake


BotFactory = Callable[..., AbstractContextManager[ThreadedServer]]


@pytest.fixture
def bot_env(upstream: FakeOpenAI) -> dict[str, str]:
    """The environment a bot process would get in production, pointed at the fake upstream."""
    return bot_environment(upstream, API_KEY, request_timeout="2")


@pytest.fixture
def start_bot() -> BotFactory:
    def start(env: dict[str, str]) -> AbstractContextManager[ThreadedServer]:
        return serving(create_app(environ=env))

    return start


@pytest.fixture
def bot(start_bot: BotFactory, bot_env: dict[str, str]) -> Iterator[ThreadedServer]:
    with start_bot(bot_env) as server:
        yield server


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A real redis-server with a password, on a free port."""
    server = RedisServer(tmp_path, REDIS_PASSWORD).start()
    try:
        yield server
    finally:
        server.stop()
