"""The chat service over real HTTP: the bot on loopback, the real openai client, a fake upstream."""

from __future__ import annotations

import json
from typing import Any

import httpx2
import openai
import pytest
import tiktoken

from chatbot_service.tokens import count_message
from tests.integration.conftest import API_KEY, BotFactory
from tests.support.fake_openai import FakeOpenAI, Fault, prompt_tokens
from tests.support.servers import ThreadedServer, assert_serialized, concurrent_turns


def post(bot: ThreadedServer, path: str, body: Any, **kw: Any) -> httpx2.Response:
    return httpx2.post(bot.url + path, json=body, timeout=10, **kw)


def sse_events(text: str) -> list[tuple[str, dict[str, Any]]]:
    events = []
    for block in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines())
        events.append((lines["event"], json.loads(lines["data"])))
    return events


# -- /chat -------------------------------------------------------------------------------


def test_chat_keeps_context_and_reports_usage(bot: ThreadedServer, upstream: FakeOpenAI) -> None:
    first = post(bot, "/chat", {"message": "My name is Ada."})
    assert first.status_code == 200, first.text
    body = first.json()
    sid = body["session_id"]
    assert body["reply"] == "2 messages; last: My name is Ada."
    assert body["truncated"] is False
    second = post(bot, "/chat", {"message": "What is my name?", "session_id": sid}).json()
    assert second["session_id"] == sid
    sent = upstream.last.body["messages"]
    assert [m["role"] for m in sent] == ["system", "user", "assistant", "user"]
    assert sent[0]["content"] == "You are a test bot."
    assert sent[1]["content"] == "My name is Ada." and sent[2]["content"] == body["reply"]
    # our count of what we sent equals the upstream's (independent) count
    usage = second["usage"]
    assert usage["counted_prompt_tokens"] == usage["prompt_tokens"] == prompt_tokens("gpt-4o-mini", sent)
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    enc = tiktoken.get_encoding("o200k_base")
    history = httpx2.get(f"{bot.url}/sessions/{sid}").json()
    assert [m["content"] for m in history["messages"]] == [
        sent[1]["content"],
        sent[2]["content"],
        sent[3]["content"],
        second["reply"],
    ]
    assert history["tokens"] == sum(count_message(enc, m["role"], m["content"]) for m in history["messages"])
    assert usage["history_tokens"] == history["tokens"]
    assert upstream.last.headers["authorization"] == f"Bearer {API_KEY}"


def test_history_is_trimmed_to_the_budget(
    start_bot: BotFactory, bot_env: dict[str, str], upstream: FakeOpenAI
) -> None:
    bot_env |= {"KUBECHAT_MAX_CONTEXT_TOKENS": "300", "KUBECHAT_MAX_REPLY_TOKENS": "100"}
    with start_bot(bot_env) as bot:
        sid = None
        truncated_seen = False
        for i in range(12):
            reply = post(bot, "/chat", {"message": f"turn {i}: " + "words " * 10, "session_id": sid}).json()
            sid = reply["session_id"]
            sent = upstream.last.body["messages"]
            assert prompt_tokens("gpt-4o-mini", sent) <= 200
            assert sent[0]["role"] == "system" and sent[-1]["content"].startswith(f"turn {i}:")
            assert sent[1]["role"] == "user"
            truncated_seen |= reply["truncated"]
            assert reply["truncated"] == (reply["usage"]["dropped_messages"] > 0)
        assert truncated_seen
        assert upstream.last.body["max_tokens"] == 100
        # trimming only shapes requests: the stored conversation is whole
        assert len(httpx2.get(f"{bot.url}/sessions/{sid}").json()["messages"]) == 24


def test_a_message_too_long_for_the_window_is_refused_and_not_sent(
    start_bot: BotFactory, bot_env: dict[str, str], upstream: FakeOpenAI
) -> None:
    bot_env |= {"KUBECHAT_MAX_CONTEXT_TOKENS": "300", "KUBECHAT_MAX_REPLY_TOKENS": "100"}
    with start_bot(bot_env) as bot:
        response = post(bot, "/chat", {"message": "word " * 400})
        assert response.status_code == 413
        assert response.json()["error"]["code"] == "message_too_long"
        assert "budget is 200" in response.json()["error"]["message"]
        assert upstream.requests == []


@pytest.mark.parametrize(
    ("body", "status", "code", "param"),
    [
        ({"message": ""}, 400, "empty_message", None),
        ({"message": "   "}, 400, "empty_message", None),
        ({"message": 42}, 400, "invalid_type", "message"),
        ({"message": "hi", "session_id": 7}, 400, "invalid_type", "session_id"),
        ({"message": "hi", "session_id": "../etc"}, 400, "invalid_value", "session_id"),
        ({"message": "hi", "colour": "red"}, 400, "unknown_parameter", "colour"),
        ({"message": "hi", "stream": "yes"}, 400, "invalid_type", "stream"),
        ({}, 400, "missing_required_parameter", "message"),
        ([], 400, "invalid_type", None),
        ({"message": "hi", "session_id": "nope"}, 404, "session_not_found", None),
        ({"message": "x" * 40_000}, 413, "message_too_long", None),
    ],
)
def test_bad_input_gets_a_specific_4xx(
    bot: ThreadedServer, body: Any, status: int, code: str, param: str | None
) -> None:
    response = post(bot, "/chat", body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code and error["param"] == param, error
    assert set(error) == {"message", "type", "param", "code"}


def test_malformed_json_and_oversized_bodies(bot: ThreadedServer) -> None:
    for path in ("/chat", "/v1/chat/completions"):
        bad = httpx2.post(
            bot.url + path, content=b'{"message": ', headers={"content-type": "application/json"}
        )
        assert bad.status_code == 400 and bad.json()["error"]["code"] == "malformed_json", bad.text
    big = httpx2.post(
        bot.url + "/chat", content=b"x" * (2 << 20), headers={"content-type": "application/json"}
    )
    assert big.status_code == 413 and big.json()["error"]["code"] == "body_too_large"
    assert httpx2.get(bot.url + "/nothing-here").json()["error"]["code"] == "not_found"


def test_sessions_can_be_read_and_reset(bot: ThreadedServer) -> None:
    sid = post(bot, "/chat", {"message": "hello"}).json()["session_id"]
    assert httpx2.delete(f"{bot.url}/sessions/{sid}").status_code == 204
    assert httpx2.get(f"{bot.url}/sessions/{sid}").status_code == 404
    assert httpx2.delete(f"{bot.url}/sessions/{sid}").status_code == 404
    assert post(bot, "/chat", {"message": "again", "session_id": sid}).status_code == 404


@pytest.mark.parametrize(
    ("fault", "status", "code"),
    [
        (Fault(status=401), 502, "upstream_auth_failed"),
        (Fault(status=429, headers={"retry-after": "7"}), 429, "upstream_rate_limited"),
        (Fault(status=500), 502, "upstream_error"),
        (Fault(delay=3), 504, "upstream_timeout"),
    ],
)
def test_upstream_failures_map_to_clear_errors_and_leave_the_session_as_it_was(
    bot: ThreadedServer, upstream: FakeOpenAI, fault: Fault, status: int, code: str
) -> None:
    sid = post(bot, "/chat", {"message": "first"}).json()["session_id"]
    upstream.fail_next(fault)
    for stream in (False, True):
        if stream:
            upstream.fail_next(fault)
        failed = post(bot, "/chat", {"message": "second", "session_id": sid, "stream": stream})
        assert failed.status_code == status, failed.text
        error = failed.json()["error"]
        assert error["code"] == code
        assert API_KEY not in failed.text
        if status == 429:
            assert failed.headers["retry-after"] == "7"
    history = httpx2.get(f"{bot.url}/sessions/{sid}").json()["messages"]
    assert [m["content"] for m in history] == ["first", "2 messages; last: first"]


def test_unreachable_upstream_is_503(start_bot: BotFactory, bot_env: dict[str, str]) -> None:
    from tests.support.servers import free_port

    bot_env["OPENAI_BASE_URL"] = f"http://127.0.0.1:{free_port()}/v1"
    with start_bot(bot_env) as bot:
        response = post(bot, "/chat", {"message": "anyone?"})
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "upstream_unreachable"


def test_a_wrong_key_is_reported_without_the_key(start_bot: BotFactory, bot_env: dict[str, str]) -> None:
    bot_env["OPENAI_API_KEY"] = "sk-wrong-0123456789"
    with start_bot(bot_env) as bot:
        response = post(bot, "/chat", {"message": "hi"})
        assert response.status_code == 502
        assert response.json()["error"]["code"] == "upstream_auth_failed"
        assert "sk-wrong" not in response.text and "6789" not in response.text


def test_chat_streams_and_records_the_turn(bot: ThreadedServer, upstream: FakeOpenAI) -> None:
    response = post(bot, "/chat", {"message": "stream this please", "stream": True})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = sse_events(response.text)
    assert events[0][0] == "session"
    deltas = [data["delta"] for name, data in events if name == "delta"]
    assert len(deltas) > 1
    name, done = events[-1]
    assert name == "done"
    assert "".join(deltas) == done["reply"] == "2 messages; last: stream this please"
    assert done["usage"]["prompt_tokens"] == done["usage"]["counted_prompt_tokens"]
    assert upstream.last.body["stream_options"] == {"include_usage": True}
    history = httpx2.get(f"{bot.url}/sessions/{done['session_id']}").json()["messages"]
    assert [m["role"] for m in history] == ["user", "assistant"]


def test_a_stream_broken_midway_records_nothing(bot: ThreadedServer, upstream: FakeOpenAI) -> None:
    sid = post(bot, "/chat", {"message": "first"}).json()["session_id"]
    upstream.fail_next(Fault(break_stream_after=2))
    response = post(bot, "/chat", {"message": "second", "session_id": sid, "stream": True})
    events = sse_events(response.text)
    assert events[-1][0] == "error"
    assert events[-1][1]["error"]["code"] in ("upstream_unreachable", "upstream_error")
    assert len(httpx2.get(f"{bot.url}/sessions/{sid}").json()["messages"]) == 2


def test_a_client_leaving_mid_stream_frees_the_session_and_records_nothing(
    bot: ThreadedServer, upstream: FakeOpenAI
) -> None:
    sid = post(bot, "/chat", {"message": "first"}).json()["session_id"]
    upstream.fail_next(Fault(chunk_delay=0.3))
    body = {"message": "slow one", "session_id": sid, "stream": True}
    with httpx2.stream("POST", bot.url + "/chat", json=body, timeout=10) as response:
        assert next(response.iter_lines()).startswith("event: session")
    # the client has gone; the session must not stay locked, and the unfinished turn is not kept
    after = post(bot, "/chat", {"message": "next", "session_id": sid})
    assert after.status_code == 200, after.text
    contents = [m["content"] for m in httpx2.get(f"{bot.url}/sessions/{sid}").json()["messages"]]
    assert "slow one" not in contents and contents[-2] == "next"


def test_concurrent_turns_on_one_session_are_serialized(bot: ThreadedServer, upstream: FakeOpenAI) -> None:
    sid = post(bot, "/chat", {"message": "start"}).json()["session_id"]
    for _ in range(6):
        upstream.fail_next(Fault(delay=0.05))  # widen the window in which turns could interleave
    history = concurrent_turns([bot.url], sid, 6)
    assert len(history) == 14
    assert_serialized(history)


# -- /v1/chat/completions -------------------------------------------------------------------


def client_for(bot: ThreadedServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=bot.url + "/v1", api_key="unused-by-the-bot", max_retries=0)


def test_openai_compatible_completion(bot: ThreadedServer, upstream: FakeOpenAI) -> None:
    completion = client_for(bot).chat.completions.create(
        model="whatever-the-client-says",
        messages=[{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Hi there"}],
        max_tokens=50,
        temperature=0.3,
    )
    assert completion.choices[0].message.content == "3 messages; last: Hi there"
    assert completion.usage is not None and completion.usage.prompt_tokens > 0
    sent = upstream.last.body
    assert sent["model"] == "gpt-4o-mini"
    assert [m["content"] for m in sent["messages"]] == ["You are a test bot.", "Answer briefly.", "Hi there"]
    assert sent["max_tokens"] == 50 and sent["temperature"] == 0.3
    assert upstream.last.headers["authorization"] == f"Bearer {API_KEY}"


def test_openai_compatible_streaming(bot: ThreadedServer) -> None:
    stream = client_for(bot).chat.completions.create(
        model="x",
        messages=[{"role": "user", "content": "stream me"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "2 messages; last: stream me"
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens > 0


def test_openai_compatible_errors_reach_the_sdk_as_errors(bot: ThreadedServer, upstream: FakeOpenAI) -> None:
    upstream.fail_next(Fault(status=429, headers={"retry-after": "3"}))
    with pytest.raises(openai.RateLimitError) as info:
        client_for(bot).chat.completions.create(model="x", messages=[{"role": "user", "content": "hi"}])
    assert "rate limiting" in info.value.message
    with pytest.raises(openai.BadRequestError, match="Supported values are: 'system'"):
        client_for(bot).chat.completions.create(model="x", messages=[{"role": "wizard", "content": "hi"}])  # type: ignore[misc,list-item]
    with pytest.raises(openai.BadRequestError, match="not supported"):
        client_for(bot).chat.completions.create(
            model="x",
            messages=[{"role": "user", "content": "hi"}],
            tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}],
        )


def test_probes_and_docs(start_bot: BotFactory, bot_env: dict[str, str], bot: ThreadedServer) -> None:
    assert httpx2.get(bot.url + "/healthz").json() == {"status": "ok"}
    ready = httpx2.get(bot.url + "/readyz")
    assert ready.status_code == 200 and ready.json()["ready"] is True
    assert "/v1/chat/completions" in httpx2.get(bot.url + "/openapi.json").json()["paths"]
    del bot_env["OPENAI_API_KEY"]
    bot_env["KUBECHAT_TEMPERATURE"] = "hot"
    with start_bot(bot_env) as broken:
        report = httpx2.get(broken.url + "/readyz")
        assert report.status_code == 503
        assert report.json()["ready"] is False
        assert any("temperature" in p for p in report.json()["problems"])
        chat = post(broken, "/chat", {"message": "hi"})
        assert chat.status_code == 503 and chat.json()["error"]["code"] == "not_ready"
    bot_env["KUBECHAT_TEMPERATURE"] = "0.1"
    with start_bot(bot_env) as keyless:
        report = httpx2.get(keyless.url + "/readyz")
        assert report.status_code == 503 and report.json()["missing"] == ["openai_api_key"]
