"""Conversations in Redis, shared by two real bot processes: they survive a replica dying, stay
serialized across replicas, and Redis going away is a clear 503 that heals, never a split."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest

from chatbot_service.redis_store import describe_url
from tests.cluster.polling import eventually
from tests.integration.conftest import API_KEY
from tests.integration.conftest import REDIS_PASSWORD as PASSWORD
from tests.support.bot_process import BotProcess, Replicas
from tests.support.fake_openai import FakeOpenAI, Fault
from tests.support.redis_server import RedisServer
from tests.support.servers import assert_serialized, concurrent_turns


@pytest.fixture
def start_bots(
    bot_env: dict[str, str], redis_server: RedisServer, tmp_path: Path
) -> Iterator[Callable[[int], list[BotProcess]]]:
    replicas = Replicas(tmp_path)

    def start(count: int) -> list[BotProcess]:
        env = {
            **os.environ,
            **bot_env,
            "KUBECHAT_SESSION_STORE": "redis",
            "KUBECHAT_REDIS_URL": redis_server.url,
            "KUBECHAT_BOT_NAME": "helpdesk",
            "KUBECHAT_REQUEST_TIMEOUT": "5",
        }
        return replicas.start(env, count)

    yield start
    replicas.stop((PASSWORD, API_KEY))


def test_turns_alternating_between_replicas_keep_one_conversation(
    start_bots: Callable[[int], list[BotProcess]], upstream: FakeOpenAI
) -> None:
    a, b = start_bots(2)
    sid = a.chat("turn 0").json()["session_id"]
    for i in range(1, 6):
        replica = (a, b)[i % 2]
        reply = replica.chat(f"turn {i}", sid)
        assert reply.status_code == 200, reply.text
        assert reply.json()["reply"] == f"{2 * i + 2} messages; last: turn {i}"  # every earlier turn was sent
    history = httpx2.get(f"{a.url}/sessions/{sid}").json()["messages"]
    assert history == httpx2.get(f"{b.url}/sessions/{sid}").json()["messages"]
    assert [m["content"] for m in history[::2]] == [f"turn {i}" for i in range(6)]


def test_a_replica_killed_mid_conversation_loses_nothing(
    start_bots: Callable[[int], list[BotProcess]], upstream: FakeOpenAI
) -> None:
    a, b = start_bots(2)
    sid = a.chat("remember 42").json()["session_id"]
    a.chat("and 43", sid)
    a.stop(signal.SIGKILL)
    reply = b.chat("what did I say?", sid).json()
    assert reply["reply"] == "6 messages; last: what did I say?"
    sent = [m["content"] for m in upstream.last.body["messages"]]
    assert sent[1] == "remember 42" and sent[3] == "and 43"


def test_concurrent_turns_on_one_session_from_two_replicas_are_serialized(
    start_bots: Callable[[int], list[BotProcess]], upstream: FakeOpenAI
) -> None:
    a, b = start_bots(2)
    sid = a.chat("start").json()["session_id"]
    for _ in range(6):
        upstream.fail_next(Fault(delay=0.1))  # each turn takes a while: overlaps would show
    history = concurrent_turns([a.url, b.url], sid, 6)
    assert len(history) == 14
    assert_serialized(history)


def test_redis_down_is_a_clear_503_and_heals_with_the_conversation_intact(
    start_bots: Callable[[int], list[BotProcess]], redis_server: RedisServer, upstream: FakeOpenAI
) -> None:
    (bot,) = start_bots(1)
    sid = bot.chat("before the outage").json()["session_id"]
    redis_server.stop()

    def not_ready() -> dict[str, Any]:
        report = httpx2.get(bot.url + "/readyz")
        assert report.status_code == 503, report.text
        body: dict[str, Any] = report.json()
        return body

    report = eventually(not_ready, timeout=20, what="not ready while Redis is down")
    assert any("Redis at redis://127.0.0.1" in p for p in report["problems"]), report
    failed = bot.chat("during the outage", sid)
    assert failed.status_code == 503, failed.text
    assert failed.json()["error"]["code"] == "session_store_unavailable"
    new = bot.chat("a new conversation during the outage")
    assert new.status_code == 503  # never served from memory: that would split conversations
    for response in (report, failed.json(), new.json()):
        assert PASSWORD not in str(response)

    redis_server.start()
    eventually(lambda: httpx2.get(bot.url + "/readyz").raise_for_status(), timeout=30, what="ready again")
    reply = bot.chat("after the outage", sid).json()
    assert reply["reply"] == "4 messages; last: after the outage"  # the turn before the outage was kept


def test_a_redis_store_without_a_url_is_not_ready_and_says_so(
    bot_env: dict[str, str], tmp_path: Path
) -> None:
    env = {**os.environ, **bot_env, "KUBECHAT_SESSION_STORE": "redis"}
    bot = BotProcess(env, tmp_path / "bot.log").wait_up()
    try:
        report = httpx2.get(bot.url + "/readyz")
        assert report.status_code == 503 and report.json()["missing"] == ["redis_url"]
        assert bot.chat("hi").status_code == 503
    finally:
        bot.stop()


def test_redis_urls_are_shown_without_credentials() -> None:
    assert describe_url("redis://:s3cret@cache.internal:6380/2") == "redis://cache.internal:6380/2"
    assert describe_url("rediss://user:pw@r.example") == "rediss://r.example"
