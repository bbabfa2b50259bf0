"""Limits shared by replicas: two real ``kubechat serve`` processes counting in one real Redis cannot
overspend a budget together under concurrent load; Redis going away refuses (or, when the spec says
so, admits) and says which; sessions stay their owner's in Redis too."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest

from tests.cluster.polling import eventually
from tests.integration.conftest import API_KEY, REDIS_PASSWORD
from tests.integration.test_limits_http import COMPLETION, KEYS, QUESTION, TURN
from tests.support.bot_process import BotProcess, Replicas
from tests.support.fake_openai import FakeOpenAI, Fault
from tests.support.mounted import write_keys
from tests.support.redis_server import RedisServer

BUDGET_TURNS = 10


@pytest.fixture
def start_bots(
    bot_env: dict[str, str], redis_server: RedisServer, tmp_path: Path
) -> Iterator[Callable[..., list[BotProcess]]]:
    replicas = Replicas(tmp_path)
    write_keys(tmp_path / "keys", KEYS)

    def start(count: int, limits: dict[str, Any], keys: bool = False) -> list[BotProcess]:
        env = {
            **os.environ,
            **bot_env,
            "KUBECHAT_SESSION_STORE": "redis",
            "KUBECHAT_REDIS_URL": redis_server.url,
            "KUBECHAT_BOT_NAME": "helpdesk",
            "KUBECHAT_LIMITS": json.dumps(limits),
        }
        if keys:
            env |= {"KUBECHAT_ACCESS": '{"apiKeys": {}}', "KUBECHAT_API_KEYS_DIR": str(tmp_path / "keys")}
        return replicas.start(env, count)

    yield start
    replicas.stop((REDIS_PASSWORD, API_KEY, *KEYS.values()))


def ask(bot: BotProcess, key: str | None = None) -> httpx2.Response:
    body = {"model": "any", "messages": [{"role": "user", "content": QUESTION}], "max_tokens": COMPLETION}
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx2.post(bot.url + "/v1/chat/completions", json=body, headers=headers, timeout=30)


def test_two_replicas_under_concurrent_load_cannot_exceed_a_budget_together(
    start_bots: Callable[..., list[BotProcess]], upstream: FakeOpenAI
) -> None:
    # every request reserves exactly TURN tokens (prompt + a reply limit of its real length)
    a, b = start_bots(2, {"perIdentity": {"tokens": {"day": BUDGET_TURNS * TURN}}})
    for _ in range(6):
        upstream.fail_next(Fault(delay=0.05))  # keep requests in flight while others arrive
    statuses: list[int] = []
    lock = threading.Lock()

    def send(i: int) -> None:
        response = ask((a, b)[i % 2])
        with lock:
            statuses.append(response.status_code)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(3 * BUDGET_TURNS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(statuses) == [200] * BUDGET_TURNS + [429] * (2 * BUDGET_TURNS), statuses
    assert len(upstream.requests) == BUDGET_TURNS
    for bot in (a, b):  # both replicas read the same counters
        usage = httpx2.get(bot.url + "/v1/usage").json()
        assert usage["counters"] == "redis (shared by replicas)"
        (anonymous,) = usage["identities"]
        assert anonymous["windows"]["day"]["tokens"] == BUDGET_TURNS * TURN
        assert anonymous["windows"]["day"]["tokens_remaining"] == 0


@pytest.mark.parametrize("redis_down", ["refuse", "allow"])
def test_redis_down_refuses_by_default_or_admits_when_told(
    start_bots: Callable[..., list[BotProcess]],
    redis_server: RedisServer,
    upstream: FakeOpenAI,
    redis_down: str,
) -> None:
    (bot,) = start_bots(1, {"perIdentity": {"requestsPerMinute": 100}, "redisDown": redis_down})
    assert ask(bot).status_code == 200
    ready = httpx2.get(bot.url + "/readyz").json()
    assert ready["limits"].startswith("shared by replicas (Redis)")
    assert ("refuses requests" if redis_down == "refuse" else "admits without counting") in ready["limits"]
    redis_server.stop()
    response = ask(bot)
    if redis_down == "refuse":
        assert response.status_code == 503, response.text
        assert response.json()["error"]["code"] == "limits_unavailable"
        assert REDIS_PASSWORD not in response.text
    else:
        assert response.status_code == 200, response.text
    redis_server.start()  # same port and data: counting resumes
    eventually(lambda: ask(bot).raise_for_status(), timeout=20, what="requests counted again")


def test_sessions_belong_to_their_identity_across_replicas(
    start_bots: Callable[..., list[BotProcess]],
) -> None:
    a, b = start_bots(2, {"perIdentity": {"requestsPerMinute": 100}}, keys=True)
    owner, other = ({"Authorization": f"Bearer {KEYS[name]}"} for name in ("team-a", "team-b"))
    sid = httpx2.post(a.url + "/chat", json={"message": "mine"}, headers=owner, timeout=30).json()[
        "session_id"
    ]
    assert httpx2.get(f"{b.url}/sessions/{sid}", headers=other).status_code == 404
    continued = httpx2.post(
        b.url + "/chat", json={"message": "x", "session_id": sid}, headers=other, timeout=30
    )
    assert continued.status_code == 404
    history = httpx2.get(f"{b.url}/sessions/{sid}", headers=owner).json()["messages"]
    assert [m["content"] for m in history] == ["mine", "2 messages; last: mine"]


def test_shared_counters_are_settled_to_the_real_usage(
    start_bots: Callable[..., list[BotProcess]], upstream: FakeOpenAI
) -> None:
    (bot,) = start_bots(1, {"perIdentity": {"tokens": {"day": 100 * TURN}}})
    body = {"model": "any", "messages": [{"role": "user", "content": QUESTION}], "max_tokens": 500}
    assert httpx2.post(bot.url + "/v1/chat/completions", json=body, timeout=30).status_code == 200

    def settled() -> None:  # reserved PROMPT + 500, settled (after the answer) to PROMPT + COMPLETION
        (anonymous,) = httpx2.get(bot.url + "/v1/usage").json()["identities"]
        assert anonymous["windows"]["day"]["tokens"] == TURN

    eventually(settled, timeout=10, what="the reservation settled to the real usage")


def test_a_settlement_reaches_the_other_replica_without_another_request(
    start_bots: Callable[..., list[BotProcess]], upstream: FakeOpenAI
) -> None:
    """A settlement rides on the process's next reservation; with none coming it is sent on its own
    within SETTLE_DELAY, so the other replica (which has nothing of it to apply) sees the real usage."""
    first, second = start_bots(2, {"perIdentity": {"tokens": {"day": 100 * TURN}}})
    body = {"model": "any", "messages": [{"role": "user", "content": QUESTION}], "max_tokens": 500}
    assert httpx2.post(first.url + "/v1/chat/completions", json=body, timeout=30).status_code == 200

    def settled() -> None:
        (anonymous,) = httpx2.get(second.url + "/v1/usage").json()["identities"]
        assert anonymous["windows"]["day"]["tokens"] == TURN

    eventually(settled, timeout=10, what="the first replica's settlement seen by the second")
    # and one carried by the next reservation: two turns, each settled, whichever replica reads
    assert httpx2.post(first.url + "/v1/chat/completions", json=body, timeout=30).status_code == 200
    assert httpx2.post(first.url + "/v1/chat/completions", json=body, timeout=30).status_code == 200
    eventually(lambda: _day_tokens(second, 3 * TURN), timeout=10, what="three turns settled")


def _day_tokens(bot: BotProcess, expected: int) -> None:
    (anonymous,) = httpx2.get(bot.url + "/v1/usage").json()["identities"]
    assert anonymous["windows"]["day"]["tokens"] == expected
