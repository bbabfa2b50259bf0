"""Compaction over real HTTP, with a deterministic fake upstream that writes summaries: a fact from an
early turn, gone from the window by trimming, survives by compaction, on /chat and on a Responses
chain; a failing summary call falls back to trimming and never fails the turn."""

from __future__ import annotations

import json
import re
from typing import Any

import httpx2
import tiktoken

from tests.integration.conftest import BotFactory
from tests.support.fake_openai import FakeOpenAI, prompt_tokens
from tests.support.servers import ThreadedServer

FACT = "My locker code is 4417."
FILLER = "tell me more about the weather and the sea today please, with detail"
SMALL = {"KUBECHAT_MAX_CONTEXT_TOKENS": "300", "KUBECHAT_MAX_REPLY_TOKENS": "100"}
COMPACT = {"KUBECHAT_CONTEXT": json.dumps({"mode": "compact", "threshold": 0.6})}


def chat_turns(bot: ThreadedServer, turns: int) -> tuple[str, list[dict[str, Any]]]:
    replies = [httpx2.post(bot.url + "/chat", json={"message": FACT}, timeout=20).json()]
    sid = replies[0]["session_id"]
    for _ in range(turns):
        reply = httpx2.post(bot.url + "/chat", json={"message": FILLER, "session_id": sid}, timeout=20)
        assert reply.status_code == 200, reply.text
        replies.append(reply.json())
    return sid, replies


def turn_requests(upstream: FakeOpenAI) -> list[list[dict[str, Any]]]:
    return [
        s.body["messages"] for s in upstream.requests if not upstream.is_summary_request(s.body["messages"])
    ]


def compactions(bot: ThreadedServer, result: str) -> float:
    text = httpx2.get(bot.url + "/metrics", timeout=10).text
    found = re.search(rf'^kubechat_compactions_total{{result="{result}"}} (\S+)$', text, re.M)
    assert found, "kubechat_compactions_total is not exposed"
    return float(found.group(1))


def test_trimming_loses_an_early_fact(
    start_bot: BotFactory, bot_env: dict[str, str], upstream: FakeOpenAI
) -> None:
    upstream.summarizer = "You compact a conversation"
    with start_bot(bot_env | SMALL) as bot:
        _, replies = chat_turns(bot, 8)
        assert replies[-1]["truncated"]
        assert "4417" not in json.dumps(turn_requests(upstream)[-1])
        assert compactions(bot, "ok") == 0


def test_compaction_keeps_an_early_fact_in_the_session_and_the_window(
    start_bot: BotFactory, bot_env: dict[str, str], upstream: FakeOpenAI
) -> None:
    upstream.summarizer = "You compact a conversation"  # the default summary prompt
    with start_bot(bot_env | SMALL | COMPACT) as bot:
        sid, replies = chat_turns(bot, 8)
        last = turn_requests(upstream)[-1]
        assert last[0]["content"] == "You are a test bot."
        summary = last[1]
        assert summary["role"] == "system" and "4417" in summary["content"]
        assert summary["content"].startswith("Summary of the earlier conversation")
        assert last[-1]["content"] == FILLER
        assert compactions(bot, "ok") >= 1 and compactions(bot, "failed") == 0
        summary_calls = [s.body for s in upstream.requests if upstream.is_summary_request(s.body["messages"])]
        assert summary_calls and all(b["model"] == "gpt-4o-mini" for b in summary_calls)
        history = httpx2.get(f"{bot.url}/sessions/{sid}", timeout=10).json()
        assert history["messages"][0]["content"].startswith("Summary of the earlier conversation")
        assert FACT not in [m["content"] for m in history["messages"]]  # replaced, not kept beside
        # the summary counts in the budget: every request still fits
        assert all(r["usage"]["counted_prompt_tokens"] <= 200 for r in replies)
        items = httpx2.get(f"{bot.url}/v1/conversations/{sid}/items?order=asc", timeout=10).json()["data"]
        assert items[0]["id"].startswith("sum_")


def test_a_responses_chain_is_compacted_too(
    start_bot: BotFactory, bot_env: dict[str, str], upstream: FakeOpenAI
) -> None:
    upstream.summarizer = "You compact a conversation"
    with start_bot(bot_env | SMALL | COMPACT) as bot:
        previous = None
        for text in [FACT, *[FILLER] * 8]:
            raw = httpx2.post(
                bot.url + "/v1/responses", json={"input": text, "previous_response_id": previous}, timeout=20
            )
            assert raw.status_code == 200, raw.text
            previous = raw.json()["id"]
        assert "4417" in turn_requests(upstream)[-1][1]["content"]
        assert compactions(bot, "ok") >= 1


def test_a_failing_summary_falls_back_to_trimming(
    start_bot: BotFactory, bot_env: dict[str, str], upstream: FakeOpenAI
) -> None:
    upstream.summarizer = "You compact a conversation"
    upstream.summaries_fail = True
    with start_bot(bot_env | SMALL | COMPACT) as bot:
        sid, replies = chat_turns(bot, 8)  # every turn answered (asserted inside)
        assert replies[-1]["truncated"]
        assert compactions(bot, "failed") >= 1 and compactions(bot, "ok") == 0
        history = httpx2.get(f"{bot.url}/sessions/{sid}", timeout=10).json()["messages"]
        assert history[0]["content"] == FACT  # kept in the session, trimmed from the window only


def test_a_bad_context_setting_is_named(start_bot: BotFactory, bot_env: dict[str, str]) -> None:
    with start_bot(bot_env | {"KUBECHAT_CONTEXT": '{"mode": "squash"}'}) as bot:
        ready = httpx2.get(bot.url + "/readyz", timeout=10)
        assert ready.status_code == 503 and "context: mode: must be trim or compact" in ready.text


def upstream_tokens(upstream: FakeOpenAI, summaries: bool) -> int:
    """The tokens the fake upstream reported for its summary (or its turn) requests."""
    enc = tiktoken.get_encoding("o200k_base")
    return sum(
        prompt_tokens(s.body["model"], s.body["messages"])
        + len(enc.encode(upstream.answer_for(s.body["messages"]), disallowed_special=()))
        for s in upstream.requests
        if upstream.is_summary_request(s.body["messages"]) == summaries
    )


def test_the_summary_call_is_charged_to_the_callers_limits(
    start_bot: BotFactory, bot_env: dict[str, str], upstream: FakeOpenAI
) -> None:
    upstream.summarizer = "You compact a conversation"
    limits = {"KUBECHAT_LIMITS": json.dumps({"perIdentity": {"tokens": {"day": 1_000_000}}})}
    with start_bot(bot_env | SMALL | COMPACT | limits) as bot:
        chat_turns(bot, 8)
        assert compactions(bot, "ok") >= 1
        (caller,) = httpx2.get(bot.url + "/v1/usage", timeout=10).json()["identities"]
        summaries, turns = upstream_tokens(upstream, True), upstream_tokens(upstream, False)
        assert summaries > 0
        assert caller["windows"]["day"]["tokens"] == turns + summaries


def test_a_summary_the_limits_refuse_is_not_made_and_the_session_is_untouched(
    start_bot: BotFactory, bot_env: dict[str, str], upstream: FakeOpenAI
) -> None:
    upstream.summarizer = "You compact a conversation"
    with start_bot(bot_env | SMALL | COMPACT) as bot:
        chat_turns(bot, 8)
    kinds = [upstream.is_summary_request(s.body["messages"]) for s in upstream.requests]
    due = kinds.index(True)  # the turns answered before the first compaction was due
    upstream.requests.clear()
    # as many requests a minute as those turns: the summary call would be one more
    limits = {"KUBECHAT_LIMITS": json.dumps({"perIdentity": {"requestsPerMinute": due}})}
    with start_bot(bot_env | SMALL | COMPACT | limits) as bot:
        sid, _ = chat_turns(bot, due - 1)
        before = httpx2.get(f"{bot.url}/sessions/{sid}", timeout=10).json()["messages"]
        refused = httpx2.post(bot.url + "/chat", json={"message": FILLER, "session_id": sid}, timeout=20)
        assert refused.status_code == 429 and refused.json()["error"]["code"] == "rate_limit_exceeded"
        assert compactions(bot, "refused") == 1 and compactions(bot, "ok") == 0
        assert not any(upstream.is_summary_request(s.body["messages"]) for s in upstream.requests)
        assert httpx2.get(f"{bot.url}/sessions/{sid}", timeout=10).json()["messages"] == before
