"""Limits and budgets over real HTTP with the official openai client, counters in the bot's memory:
a budget exhausted exactly at its boundary (counted with tiktoken), the reservation given back when
the model fails, a true Retry-After, OpenAI's 429 shape and headers, refused turns leaving sessions
as they were."""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx2
import openai
import pytest
import tiktoken

from tests.integration.conftest import BotFactory
from tests.support.fake_openai import FakeOpenAI, Fault, prompt_tokens
from tests.support.mounted import write_keys
from tests.support.servers import ThreadedServer

SYSTEM = "You are a test bot."
QUESTION = "How many tokens is this?"
REPLY = f"2 messages; last: {QUESTION}"  # what the fake upstream answers to one user message
ENC = tiktoken.get_encoding("o200k_base")
PROMPT = prompt_tokens(
    "gpt-4o-mini", [{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTION}]
)
COMPLETION = len(ENC.encode(REPLY))
TURN = PROMPT + COMPLETION
KEYS = {"team-a": "kc-team-a-5b0e1d7c9f2a4e68", "team-b": "kc-team-b-0c3f6a9e2d5b8174"}


@pytest.fixture
def limited(start_bot: BotFactory, bot_env: dict[str, str], tmp_path: Path) -> Any:
    @contextmanager
    def start(limits: dict[str, Any], keys: bool = False) -> Iterator[ThreadedServer]:
        env = bot_env | {"KUBECHAT_LIMITS": json.dumps(limits)}
        if keys:
            write_keys(tmp_path / "keys", KEYS)
            env |= {"KUBECHAT_ACCESS": '{"apiKeys": {}}', "KUBECHAT_API_KEYS_DIR": str(tmp_path / "keys")}
        with start_bot(env) as bot:
            yield bot

    return start


def ask(bot: ThreadedServer, key: str = "none", **extra: Any) -> Any:
    client = openai.OpenAI(base_url=bot.url + "/v1", api_key=key, max_retries=0)
    return client.chat.completions.with_raw_response.create(
        model="any", messages=[{"role": "user", "content": QUESTION}], max_tokens=COMPLETION, **extra
    )


def test_a_token_budget_is_exhausted_exactly_at_its_boundary(limited: Any, upstream: FakeOpenAI) -> None:
    # each turn reserves PROMPT + max_tokens (= COMPLETION) and is settled with the upstream's usage
    with limited({"perIdentity": {"tokens": {"day": 3 * TURN}}}) as bot:
        for _ in range(3):
            assert ask(bot).parse().usage.total_tokens == TURN
        with pytest.raises(openai.RateLimitError) as refused:
            ask(bot)
        assert len(upstream.requests) == 3  # the refused one never reached the model
        error = refused.value.body
        assert refused.value.code == "insufficient_quota" and error["type"] == "insufficient_quota"
        assert f"limit {3 * TURN}, used {3 * TURN}, requested {TURN}" in error["message"]
        # a calendar day in UTC: the true wait is until midnight
        now = dt.datetime.now(dt.UTC)
        midnight = dt.datetime.combine(now.date() + dt.timedelta(days=1), dt.time(), dt.UTC)
        wait = int(refused.value.response.headers["retry-after"])
        assert abs(wait - (midnight - now).total_seconds()) <= 2
        assert refused.value.response.headers["x-should-retry"] == "false"  # not within the SDK's minute
    with limited({"perIdentity": {"tokens": {"day": 3 * TURN - 1}}}) as bot:  # one token short
        for _ in range(2):
            ask(bot)
        with pytest.raises(openai.RateLimitError):
            ask(bot)


def test_calendar_windows_follow_the_configured_time_zone(limited: Any) -> None:
    zone = "Pacific/Kiritimati"  # UTC+14: its midnight is not UTC's
    with limited({"timeZone": zone, "perIdentity": {"tokens": {"day": TURN}}}) as bot:
        ask(bot)
        with pytest.raises(openai.RateLimitError) as refused:
            ask(bot)
    now = dt.datetime.now(ZoneInfo(zone))
    midnight = dt.datetime.combine(now.date() + dt.timedelta(days=1), dt.time(), ZoneInfo(zone))
    assert abs(int(refused.value.response.headers["retry-after"]) - (midnight - now).total_seconds()) <= 2


def test_the_reservation_is_given_back_when_the_model_fails(limited: Any, upstream: FakeOpenAI) -> None:
    with limited({"perIdentity": {"tokens": {"day": TURN}}}) as bot:
        for fault in (Fault(status=500), Fault(status=429, headers={"retry-after": "1"}), Fault(delay=3)):
            upstream.fail_next(fault)
            with pytest.raises(openai.APIStatusError):
                ask(bot)
        # the whole budget is still there for a streamed request
        client = openai.OpenAI(base_url=bot.url + "/v1", api_key="none", max_retries=0)
        chunks = client.chat.completions.create(
            model="any",
            messages=[{"role": "user", "content": QUESTION}],
            max_tokens=COMPLETION,
            stream=True,
            stream_options={"include_usage": True},
        )
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == REPLY
        with pytest.raises(openai.RateLimitError):
            ask(bot)


def test_requests_per_minute_429_has_a_true_retry_after_and_openais_headers(limited: Any) -> None:
    with limited({"perIdentity": {"requestsPerMinute": 2, "tokensPerMinute": 10 * TURN}}) as bot:
        started = time.time()
        first = ask(bot)
        assert first.headers["x-ratelimit-limit-requests"] == "2"
        assert first.headers["x-ratelimit-remaining-requests"] == "1"
        assert first.headers["x-ratelimit-limit-tokens"] == str(10 * TURN)
        assert first.headers["x-ratelimit-remaining-tokens"] == str(9 * TURN)
        assert first.headers["x-ratelimit-reset-requests"].endswith("s")
        assert ask(bot).headers["x-ratelimit-remaining-requests"] == "0"
        with pytest.raises(openai.RateLimitError) as refused:
            ask(bot)
        assert refused.value.code == "rate_limit_exceeded" and refused.value.body["type"] == "requests"
        headers = refused.value.response.headers
        # the first request's second of the window ages out 60 s after it began
        expected = started + 60 - time.time()
        assert abs(int(headers["retry-after-ms"]) / 1000 - expected) <= 1.5
        assert int(headers["retry-after"]) >= int(headers["retry-after-ms"]) / 1000
        assert headers["x-ratelimit-remaining-requests"] == "0"


def test_a_refused_chat_turn_leaves_the_session_untouched(limited: Any, upstream: FakeOpenAI) -> None:
    with limited({"perIdentity": {"requestsPerMinute": 1}}) as bot:
        first = httpx2.post(bot.url + "/chat", json={"message": "first"}, timeout=10).json()
        sid = first["session_id"]
        for stream in (False, True):
            refused = httpx2.post(
                bot.url + "/chat", json={"message": "second", "session_id": sid, "stream": stream}, timeout=10
            )
            assert refused.status_code == 429 and refused.json()["error"]["code"] == "rate_limit_exceeded"
            assert 0 < int(refused.headers["retry-after"]) <= 60
        history = httpx2.get(f"{bot.url}/sessions/{sid}").json()["messages"]
        assert [m["content"] for m in history] == ["first", "2 messages; last: first"]
        assert len(upstream.requests) == 1


def test_limits_are_per_identity_and_per_bot(limited: Any) -> None:
    limits = {
        "perIdentity": {"tokens": {"day": TURN}},
        "identities": {"team-b": {"tokens": {"day": 2 * TURN}}},
    }
    with limited(limits | {"bot": {"cost": {"day": "1"}}}, keys=True) as bot:
        ask(bot, KEYS["team-a"])
        with pytest.raises(openai.RateLimitError):
            ask(bot, KEYS["team-a"])
        ask(bot, KEYS["team-b"])
        ask(bot, KEYS["team-b"])  # team-b's own, larger budget
        with pytest.raises(openai.RateLimitError):
            ask(bot, KEYS["team-b"])
    cheap = (PROMPT * 150 + COMPLETION * 600 + 999) // 1000 * 1000  # 3 turns' cost in nano-USD, rounded
    with limited({"bot": {"cost": {"day": f"{3 * cheap / 1e9:.9f}"}}}, keys=True) as bot:
        for key in ("team-a", "team-b", "team-a"):
            ask(bot, KEYS[key])
        with pytest.raises(openai.RateLimitError) as refused:
            ask(bot, KEYS["team-b"])
        assert "this bot reached its USD per day" in refused.value.body["message"]


def test_usage_is_readable_per_identity_and_window(
    start_bot: BotFactory, bot_env: dict[str, str], tmp_path: Path
) -> None:
    write_keys(tmp_path / "keys", KEYS | {"owner": "kc-owner-1e2d3c4b5a69788f"})
    access = {"apiKeys": {}, "owners": ["owner"]}
    limits = {
        "timeZone": "Europe/Paris",
        "perIdentity": {"tokens": {"day": 10 * TURN}, "cost": {"month": "1"}},
        "identities": {"team-b": {"tokens": {"week": 5 * TURN}}},
    }
    env = bot_env | {
        "KUBECHAT_ACCESS": json.dumps(access),
        "KUBECHAT_LIMITS": json.dumps(limits),
        "KUBECHAT_API_KEYS_DIR": str(tmp_path / "keys"),
    }
    with start_bot(env) as bot:
        for key in ("team-a", "team-a", "team-b"):
            ask(bot, KEYS[key])

        def usage(key: str, **params: str) -> httpx2.Response:
            return httpx2.get(
                bot.url + "/v1/usage", params=params, headers={"Authorization": f"Bearer {key}"}
            )

        own = usage(KEYS["team-a"]).json()
        assert own["time_zone"] == "Europe/Paris" and own["counters"] == "memory (this pod)"
        (a,) = own["identities"]
        day = a["windows"]["day"]
        assert a["identity"] == "team-a"
        assert (day["tokens"], day["token_limit"], day["tokens_remaining"]) == (2 * TURN, 10 * TURN, 8 * TURN)
        cost = (2 * PROMPT * 150 + 2 * COMPLETION * 600) / 1e9  # gpt-4o-mini: 0.15 / 0.60 USD per 1M
        month = a["windows"]["month"]
        assert float(month["cost_usd"]) == pytest.approx(cost, abs=2e-9)
        assert float(month["cost_remaining_usd"]) == pytest.approx(1 - cost, abs=2e-9)
        # the month ends at midnight in Paris on the first of the next month
        resets = dt.datetime.fromisoformat(month["resets_at"]).astimezone(ZoneInfo("Europe/Paris"))
        assert (resets.day, resets.hour, resets.minute) == (1, 0, 0)
        # someone else's usage is for the owners only
        assert usage(KEYS["team-a"], identity="team-b").status_code == 403
        assert usage("kc-nobody-000000000000").status_code == 401
        everyone = usage("kc-owner-1e2d3c4b5a69788f").json()["identities"]
        assert [i["identity"] for i in everyone] == ["team-a", "team-b"]
        b = everyone[1]["windows"]
        assert b["week"]["tokens_remaining"] == 4 * TURN and "token_limit" not in b["day"]
        single = usage("kc-owner-1e2d3c4b5a69788f", identity="team-b").json()["identities"]
        assert [i["identity"] for i in single] == ["team-b"]
