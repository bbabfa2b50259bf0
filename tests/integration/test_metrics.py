"""``/metrics`` over real HTTP: the GenAI convention instruments and kubechat's own move as real requests
flow through the bot (the official openai client where it is the caller, the fake upstream behind)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest

from tests.integration.conftest import BotFactory
from tests.support.fake_openai import FakeOpenAI, Fault
from tests.support.mounted import write_keys
from tests.support.scrape import Scrape, delta
from tests.support.servers import ThreadedServer

Labels = dict[str, str]
GENAI = {
    "gen_ai_operation_name": "chat",
    "gen_ai_provider_name": "openai",
    "gen_ai_request_model": "gpt-4o-mini",
}


def scrape(bot: ThreadedServer) -> Scrape:
    return Scrape(bot.url + "/metrics")


@pytest.fixture
def client(bot: ThreadedServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=bot.url + "/v1", api_key="unused-by-the-bot", max_retries=0) as c:
        yield c


def chat(bot: ThreadedServer, message: str, session_id: str | None = None, stream: bool = False) -> Any:
    body = {"message": message, "session_id": session_id, "stream": stream}
    response = httpx2.post(bot.url + "/chat", json=body, timeout=10)
    return response.json() if not stream else response.text


def test_plain_turns_count_once_each_with_the_tokens_the_upstream_reported(bot: ThreadedServer) -> None:
    before = scrape(bot)
    replies = [chat(bot, f"question {i}") for i in range(3)]
    after = scrape(bot)
    ok = {**GENAI, "error_type": ""}
    assert delta(before, after, "gen_ai_server_request_duration_seconds_count", **ok) == 3
    assert delta(before, after, "gen_ai_client_operation_duration_seconds_count", **ok) == 3
    prompt = sum(r["usage"]["prompt_tokens"] for r in replies)
    completion = sum(r["usage"]["completion_tokens"] for r in replies)
    assert delta(before, after, "gen_ai_client_token_usage_sum", gen_ai_token_type="input") == prompt
    assert delta(before, after, "gen_ai_client_token_usage_sum", gen_ai_token_type="output") == completion
    assert delta(before, after, "gen_ai_client_token_usage_count", gen_ai_token_type="input") == 3
    # The upstream's answer names the model that replied.
    assert {ls["gen_ai_response_model"] for ls in after.series("gen_ai_client_token_usage_count")} == {
        "gpt-4o-mini"
    }
    # Time to first token is for streams only.
    assert delta(before, after, "gen_ai_server_time_to_first_token_seconds_count") == 0
    assert delta(before, after, "kubechat_http_requests_total", route="/chat", status_class="2xx") == 3
    assert after.value("kubechat_active_sessions") == before.value("kubechat_active_sessions") + 3
    assert delta(before, after, "kubechat_session_store_duration_seconds_count", operation="append") == 3
    # The process's own memory, to compare with the pod's limit.
    assert 10 << 20 < after.value("process_resident_memory_bytes") < 1 << 32


def test_streams_report_time_to_first_token_and_per_output_token(
    bot: ThreadedServer, client: openai.OpenAI
) -> None:
    before = scrape(bot)
    chat(bot, "a streamed question with several words", stream=True)
    with client.chat.completions.create(
        model="any",
        messages=[{"role": "user", "content": "one two three four"}],
        stream=True,
        stream_options={"include_usage": True},
    ) as stream:
        usage = [chunk.usage for chunk in stream if chunk.usage][-1]
    after = scrape(bot)
    ok = {**GENAI, "error_type": ""}
    assert delta(before, after, "gen_ai_server_request_duration_seconds_count", **ok) == 2
    assert delta(before, after, "gen_ai_server_time_to_first_token_seconds_count", **GENAI) == 2
    assert delta(before, after, "gen_ai_server_time_per_output_token_seconds_count", **GENAI) == 2
    tokens_in = delta(before, after, "gen_ai_client_token_usage_sum", gen_ai_token_type="input")
    assert usage is not None and tokens_in > usage.prompt_tokens  # both turns' prompts are counted
    assert delta(before, after, "kubechat_http_requests_total", route="/v1/chat/completions") == 1


def test_v1_plain_counts_the_upstreams_usage(bot: ThreadedServer, client: openai.OpenAI) -> None:
    before = scrape(bot)
    reply = client.chat.completions.create(model="any", messages=[{"role": "user", "content": "hi"}])
    after = scrape(bot)
    assert reply.usage is not None
    input_tokens = delta(before, after, "gen_ai_client_token_usage_sum", gen_ai_token_type="input")
    assert input_tokens == reply.usage.prompt_tokens
    assert delta(before, after, "gen_ai_server_request_duration_seconds_count", error_type="") == 1


@pytest.mark.parametrize(
    ("status", "kind", "error_type"),
    [
        (500, "server", "upstream_error"),
        (429, "rate_limit", "upstream_rate_limited"),
        (401, "auth", "upstream_auth_failed"),
    ],
)
def test_a_failing_upstream_counts_as_an_error_of_its_kind(
    bot: ThreadedServer, upstream: FakeOpenAI, client: openai.OpenAI, status: int, kind: str, error_type: str
) -> None:
    before = scrape(bot)
    upstream.fail_next(Fault(status=status))
    assert httpx2.post(bot.url + "/chat", json={"message": "hi"}, timeout=10).status_code >= 400
    upstream.fail_next(Fault(status=status))
    with pytest.raises(openai.APIStatusError):
        client.chat.completions.create(model="any", messages=[{"role": "user", "content": "hi"}])
    after = scrape(bot)
    assert delta(before, after, "kubechat_upstream_errors_total", kind=kind) == 2
    assert delta(before, after, "gen_ai_client_operation_duration_seconds_count", error_type=error_type) == 2
    assert delta(before, after, "gen_ai_server_request_duration_seconds_count", error_type=error_type) == 2
    assert delta(before, after, "gen_ai_client_token_usage_count") == 0  # nothing was used
    assert delta(before, after, "kubechat_active_sessions") == 0  # the failed turn stored nothing


def test_a_stream_cut_mid_reply_is_an_error_not_a_success(bot: ThreadedServer, upstream: FakeOpenAI) -> None:
    before = scrape(bot)
    upstream.fail_next(Fault(break_stream_after=2))
    assert "event: error" in chat(bot, "one two three four five six", stream=True)
    after = scrape(bot)
    assert delta(before, after, "gen_ai_server_request_duration_seconds_count", error_type="") == 0
    assert delta(before, after, "gen_ai_server_request_duration_seconds_count") == 1
    assert delta(before, after, "kubechat_upstream_errors_total") == 1


def test_trimmed_requests_and_dropped_messages(
    start_bot: BotFactory, bot_env: dict[str, str], upstream: FakeOpenAI
) -> None:
    bot_env |= {"KUBECHAT_MAX_CONTEXT_TOKENS": "300", "KUBECHAT_MAX_REPLY_TOKENS": "100"}
    with start_bot(bot_env) as bot:
        before = scrape(bot)
        sid, trimmed, dropped = None, 0, 0
        for i in range(10):
            reply = chat(bot, f"turn {i}: " + "words " * 10, sid)
            sid = reply["session_id"]
            trimmed += reply["truncated"]
            dropped += reply["usage"]["dropped_messages"]
        after = scrape(bot)
    assert trimmed > 0
    assert delta(before, after, "kubechat_trimmed_requests_total", route="/chat") == trimmed
    assert delta(before, after, "kubechat_dropped_messages_total", route="/chat") == dropped


def test_labels_stay_bounded_over_ten_thousand_sessions(bot: ThreadedServer) -> None:
    """Routes are templates: session ids never become label values, and unknown paths share one."""
    with httpx2.Client(base_url=bot.url, timeout=10) as http:
        for i in range(10_000):
            assert http.get(f"/sessions/s{i}").status_code == 404
        for i in range(50):
            assert http.get(f"/no/such/{i}").status_code == 404
        text = http.get("/metrics").text
    after = scrape(bot)
    assert "s9999" not in text and "/no/such" not in text
    routes = {ls["route"] for ls in after.series("kubechat_http_requests_total")}
    assert "/sessions/{session_id}" in routes and "unmatched" in routes
    assert len(after.series("kubechat_http_requests_total")) < 20
    assert after.value("kubechat_http_requests_total", route="/sessions/{session_id}") == 10_000


def test_settings_reloads_and_their_failures(
    start_bot: BotFactory, bot_env: dict[str, str], tmp_path: Path
) -> None:
    config = tmp_path / "config"
    config.mkdir()
    (config / "temperature").write_text("0.5")
    bot_env |= {"KUBECHAT_CONFIG_DIR": str(config), "KUBECHAT_RELOAD_INTERVAL": "0.05"}
    with start_bot(bot_env) as bot:
        start = scrape(bot)
        (config / "temperature").write_text("hot")  # invalid: the last good settings stay
        deadline = time.monotonic() + 10
        while scrape(bot).value("kubechat_settings_reloads_total", result="failed") == 0:
            assert time.monotonic() < deadline, "no failed reload counted"
            time.sleep(0.05)
        (config / "temperature").write_text("0.7")
        while scrape(bot).value("kubechat_settings_reloads_total", result="ok") <= start.value(
            "kubechat_settings_reloads_total", result="ok"
        ):
            assert time.monotonic() < deadline, "no reload counted"
            time.sleep(0.05)


def test_usage_by_identity_and_refusals_by_reason(
    start_bot: BotFactory, bot_env: dict[str, str], tmp_path: Path
) -> None:
    keys = tmp_path / "api-keys"
    write_keys(keys, {"team-a": "kc-team-a-1f2e3d4c5b6a", "team-b": "kc-team-b-6a5b4c3d2e1f"})
    bot_env |= {
        "KUBECHAT_ACCESS": '{"apiKeys": {}}',
        "KUBECHAT_API_KEYS_DIR": str(keys),
        "KUBECHAT_LIMITS": '{"perIdentity": {"requestsPerMinute": 2}}',
    }
    with start_bot(bot_env) as bot:
        before = scrape(bot)
        replies = []
        for key in ("kc-team-a-1f2e3d4c5b6a", "kc-team-a-1f2e3d4c5b6a", "kc-team-b-6a5b4c3d2e1f"):
            answer = httpx2.post(
                bot.url + "/chat",
                json={"message": "hi"},
                headers={"Authorization": f"Bearer {key}"},
                timeout=10,
            )
            assert answer.status_code == 200, answer.text
            replies.append(answer.json())
        third = httpx2.post(
            bot.url + "/chat",
            json={"message": "hi"},
            headers={"Authorization": "Bearer kc-team-a-1f2e3d4c5b6a"},
            timeout=10,
        )
        assert third.status_code == 429
        assert httpx2.post(bot.url + "/chat", json={"message": "hi"}, timeout=10).status_code == 401
        after = scrape(bot)
        text = httpx2.get(bot.url + "/metrics", timeout=10).text
    team_a = sum(r["usage"]["prompt_tokens"] for r in replies[:2])
    assert (
        delta(before, after, "kubechat_identity_tokens_total", identity="team-a", gen_ai_token_type="input")
        == team_a
    )
    assert (
        delta(before, after, "kubechat_identity_tokens_total", identity="team-b", gen_ai_token_type="input")
        == (replies[2]["usage"]["prompt_tokens"])
    )
    # gpt-4o-mini has a price: every answered turn cost something, and nothing else did.
    assert delta(before, after, "kubechat_identity_cost_usd_total", identity="team-a") > 0
    assert delta(before, after, "kubechat_refusals_total", reason="rate_limited") == 1
    assert delta(before, after, "kubechat_refusals_total", reason="unauthenticated") == 1
    assert "kc-team-a" not in text and "kc-team-b" not in text  # identities are names, never keys
