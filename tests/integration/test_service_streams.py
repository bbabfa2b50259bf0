"""Streams that end badly, clients that leave early, and keep-alives, on both streaming routes, over real
HTTP (the real openai client on /v1): every stream ends with a complete reply (stored) or one
well-formed error event (nothing stored)."""

from __future__ import annotations

import json
import socket
import time
from typing import Any

import httpx2
import openai
import pytest

from tests.integration.conftest import BotFactory
from tests.support.fake_openai import FakeOpenAI, Fault
from tests.support.servers import ThreadedServer


def chunk(content: str | None = None, finish: str | None = None) -> str:
    delta = {} if content is None else {"content": content}
    event = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m"}
    event["choices"] = [{"index": 0, "delta": delta, "finish_reason": finish}]
    return f"data: {json.dumps(event)}\n\n"


BAD_STREAMS = {
    "no [DONE]": chunk("Hello") + chunk(finish="stop"),
    "no finish reason": chunk("Hello") + "data: [DONE]\n\n",
    "malformed data line": chunk("Hello")
    + 'data: {"choices": [\n\n'
    + chunk(finish="stop")
    + "data: [DONE]\n\n",
    "cut mid-event": chunk("Hello") + 'data: {"id":"c","choices":[{"index":0,"delta":{"content":"par',
    "an error event": chunk("Hello") + 'data: {"error": {"message": "overloaded"}}\n\n',
    "not an object": chunk("Hello") + "data: [1, 2]\n\n",
}


def blocks(text: str) -> list[list[str]]:
    return [block.split("\n") for block in text.split("\n\n") if block]


def chat_events(text: str) -> list[tuple[str, dict[str, Any]]]:
    """Every block must be a comment or a whole event; returns the events."""
    events = []
    for lines in blocks(text):
        if all(line.startswith(":") for line in lines):
            continue
        fields = dict(line.split(": ", 1) for line in lines)
        events.append((fields["event"], json.loads(fields["data"])))
    return events


def v1_data(text: str) -> list[Any]:
    """Every block of a /v1 stream must be a comment, a JSON data line or [DONE]."""
    out: list[Any] = []
    for lines in blocks(text):
        if all(line.startswith(":") for line in lines):
            continue
        assert len(lines) == 1 and lines[0].startswith("data: "), lines
        data = lines[0][6:]
        out.append(data if data == "[DONE]" else json.loads(data))
    return out


@pytest.mark.parametrize("name", sorted(BAD_STREAMS))
def test_a_chat_stream_that_ends_badly_ends_in_one_error_event_and_is_not_stored(
    bot: ThreadedServer, upstream: FakeOpenAI, name: str
) -> None:
    sid = httpx2.post(bot.url + "/chat", json={"message": "first"}, timeout=10).json()["session_id"]
    upstream.fail_next(Fault(stream_body=BAD_STREAMS[name].encode()))
    body = {"message": "second", "session_id": sid, "stream": True}
    response = httpx2.post(bot.url + "/chat", json=body, timeout=10)
    events = chat_events(response.text)
    assert [e for e, _ in events if e in ("done", "error")] == ["error"], events
    assert events[-1][1]["error"]["code"] in (
        "upstream_incomplete",
        "upstream_bad_response",
        "upstream_error",
    )
    history = httpx2.get(f"{bot.url}/sessions/{sid}", timeout=10).json()["messages"]
    assert [m["content"] for m in history] == ["first", "2 messages; last: first"]


@pytest.mark.parametrize("name", sorted(BAD_STREAMS))
def test_a_v1_stream_that_ends_badly_stays_parseable_and_the_sdk_raises(
    bot: ThreadedServer, upstream: FakeOpenAI, name: str
) -> None:
    upstream.fail_next(Fault(stream_body=BAD_STREAMS[name].encode()))
    body = {"messages": [{"role": "user", "content": "hi"}], "stream": True}
    data = v1_data(httpx2.post(bot.url + "/v1/chat/completions", json=body, timeout=10).text)
    assert "[DONE]" not in data and set(data[-1]) == {"error"}, data
    assert all("error" not in d for d in data[:-1])
    upstream.fail_next(Fault(stream_body=BAD_STREAMS[name].encode()))
    client = openai.OpenAI(base_url=bot.url + "/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.APIError):
        for _ in client.chat.completions.create(
            model="x", messages=[{"role": "user", "content": "hi"}], stream=True
        ):
            pass


def test_a_stream_request_answered_with_plain_json_stores_nothing(
    bot: ThreadedServer, upstream: FakeOpenAI
) -> None:
    completion = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "x"}}]}
    upstream.fail_next(Fault(body=json.dumps(completion).encode()))
    response = httpx2.post(bot.url + "/chat", json={"message": "hi", "stream": True}, timeout=10)
    assert response.status_code == 502 and response.json()["error"]["code"] == "upstream_bad_response"


def test_keepalives_flow_while_the_model_is_silent(
    start_bot: BotFactory, bot_env: dict[str, str], upstream: FakeOpenAI
) -> None:
    with start_bot(bot_env | {"KUBECHAT_STREAM_KEEPALIVE": "0.1"}) as bot:
        upstream.fail_next(Fault(chunk_delay=0.35))
        text = httpx2.post(bot.url + "/chat", json={"message": "a b", "stream": True}, timeout=10).text
        assert ": keep-alive" in text and chat_events(text)[-1][0] == "done"
        upstream.fail_next(Fault(chunk_delay=0.35))
        client = openai.OpenAI(base_url=bot.url + "/v1", api_key="unused", max_retries=0)
        stream = client.chat.completions.create(
            model="x", messages=[{"role": "user", "content": "a b"}], stream=True
        )
        assert (
            "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == "2 messages; last: a b"
        )
        upstream.fail_next(Fault(chunk_delay=0.35))
        body = {"messages": [{"role": "user", "content": "a b"}], "stream": True}
        raw = httpx2.post(bot.url + "/v1/chat/completions", json=body, timeout=10).text
        assert ": keep-alive" in raw and v1_data(raw)[-1] == "[DONE]"


def wait_for(condition: Any, seconds: float = 10) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return False


@pytest.mark.parametrize("path", ["/chat", "/v1/chat/completions"])
@pytest.mark.parametrize("leave_after", [0, 1])
def test_a_client_leaving_at_any_point_closes_the_upstream(
    bot: ThreadedServer, upstream: FakeOpenAI, path: str, leave_after: int
) -> None:
    """Leave before reading a byte, or after the first event: the upstream stream is closed at once
    (its reply would take 40 x 0.25 s), and /chat's session is free again."""
    upstream.reply = " ".join(["word"] * 40)
    upstream.fail_next(Fault(chunk_delay=0.25))
    if path == "/chat":
        body = json.dumps({"message": "hi", "stream": True, "session_id": None})
    else:
        body = json.dumps({"messages": [{"role": "user", "content": "hi"}], "stream": True})
    with socket.create_connection(("127.0.0.1", bot.port)) as sock:
        request = (
            f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n{body}"
        )
        sock.sendall(request.encode())
        assert wait_for(lambda: upstream.streams_open == 1)
        if leave_after:
            sock.recv(4096)
    assert wait_for(lambda: upstream.streams_open == 0, seconds=5)
    assert upstream.streams_cut == 1
