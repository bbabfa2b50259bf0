"""One deadline per turn (``request_timeout``), covering every retry, over real HTTP; the real openai
client is the caller on /v1."""

from __future__ import annotations

import time

import httpx2
import openai
import pytest

from tests.integration.conftest import BotFactory
from tests.support.fake_openai import FakeOpenAI, Fault


@pytest.fixture
def retrying_env(bot_env: dict[str, str]) -> dict[str, str]:
    return bot_env | {"KUBECHAT_MAX_RETRIES": "2", "KUBECHAT_REQUEST_TIMEOUT": "1.5"}


@pytest.mark.parametrize("stream", [False, True])
def test_a_retry_after_beyond_the_deadline_is_returned_at_once_with_its_header(
    start_bot: BotFactory, retrying_env: dict[str, str], upstream: FakeOpenAI, stream: bool
) -> None:
    with start_bot(retrying_env) as bot:
        upstream.fail_next(Fault(status=429, headers={"retry-after": "120"}))
        started = time.monotonic()
        response = httpx2.post(bot.url + "/chat", json={"message": "hi", "stream": stream}, timeout=30)
        assert time.monotonic() - started < 1.5  # answered before the deadline, not after 120 s
        assert response.status_code == 429 and response.headers["retry-after"] == "120"
        assert response.json()["error"]["code"] == "upstream_rate_limited"
        assert len(upstream.requests) == 1


def test_the_openai_client_gets_the_429_and_its_retry_after(
    start_bot: BotFactory, retrying_env: dict[str, str], upstream: FakeOpenAI
) -> None:
    with start_bot(retrying_env) as bot:
        upstream.fail_next(Fault(status=429, headers={"retry-after": "120"}))
        client = openai.OpenAI(base_url=bot.url + "/v1", api_key="unused", max_retries=0)
        with pytest.raises(openai.RateLimitError) as info:
            client.chat.completions.create(model="x", messages=[{"role": "user", "content": "hi"}])
        assert info.value.response.headers["retry-after"] == "120"


def test_a_short_retry_after_and_5xx_are_retried_within_the_deadline(
    start_bot: BotFactory, retrying_env: dict[str, str], upstream: FakeOpenAI
) -> None:
    with start_bot(retrying_env) as bot:
        upstream.fail_next(Fault(status=429, headers={"retry-after-ms": "50"}))
        upstream.fail_next(Fault(status=503, headers={"retry-after": "0.05"}))
        response = httpx2.post(bot.url + "/chat", json={"message": "hi"}, timeout=30)
        assert response.status_code == 200, response.text
        assert len(upstream.requests) == 3


def test_retries_stop_at_max_retries(
    start_bot: BotFactory, retrying_env: dict[str, str], upstream: FakeOpenAI
) -> None:
    with start_bot(retrying_env | {"KUBECHAT_MAX_RETRIES": "1"}) as bot:
        for _ in range(3):
            upstream.fail_next(Fault(status=500, headers={"retry-after": "0"}))
        response = httpx2.post(bot.url + "/chat", json={"message": "hi"}, timeout=30)
        assert response.status_code == 502 and len(upstream.requests) == 2


@pytest.mark.parametrize("path", ["/chat", "/v1/chat/completions"])
def test_a_hung_upstream_is_one_deadline_not_one_per_attempt(
    start_bot: BotFactory, retrying_env: dict[str, str], upstream: FakeOpenAI, path: str
) -> None:
    with start_bot(retrying_env) as bot:
        for _ in range(3):
            upstream.fail_next(Fault(delay=5))
        body = {"message": "hi"} if path == "/chat" else {"messages": [{"role": "user", "content": "hi"}]}
        started = time.monotonic()
        response = httpx2.post(bot.url + path, json=body, timeout=30)
        elapsed = time.monotonic() - started
        assert response.status_code == 504 and response.json()["error"]["code"] == "upstream_timeout"
        assert elapsed < 3.0  # 1.5 s for the whole turn; per attempt it would be 4.5 s
        assert len(upstream.requests) == 1  # no time was left for a second attempt
