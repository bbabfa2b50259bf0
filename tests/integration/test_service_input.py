"""Input a client controls never makes a 5xx: bad JSON, bad parameters and upstream refusals, over real
HTTP (raw bytes where a well-behaved client could not send them, the real openai client otherwise)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx2
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from tests.support.fake_openai import FakeOpenAI, Fault
from tests.support.servers import ThreadedServer

JSON = {"content-type": "application/json"}
ROUTES = ("/chat", "/v1/chat/completions")


def raw(bot: ThreadedServer, path: str, body: bytes, headers: dict[str, str] = JSON) -> httpx2.Response:
    return httpx2.post(bot.url + path, content=body, headers=headers, timeout=10)


def body_for(path: str, message: str) -> str:
    if path == "/chat":
        return f'{{"message": "{message}"}}'
    return f'{{"messages": [{{"role": "user", "content": "{message}"}}]}}'


def assert_error(response: httpx2.Response, status: int, code: str, param: str | None = None) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert error["code"] == code and error["param"] == param, error
    assert error["type"] == "invalid_request_error" and error["message"]


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity", "1e999", "-1e999", "1" * 5000])
def test_numbers_no_json_encoder_can_send_are_400(
    bot: ThreadedServer, upstream: FakeOpenAI, number: str
) -> None:
    body = f'{{"messages": [{{"role": "user", "content": "hi"}}], "temperature": {number}}}'
    assert_error(raw(bot, "/v1/chat/completions", body.encode()), 400, "malformed_json")
    chat = f'{{"message": "hi", "extra": {{"x": {number}}}}}'
    assert_error(raw(bot, "/chat", chat.encode()), 400, "malformed_json")
    assert upstream.requests == []


@pytest.mark.parametrize("path", ROUTES)
def test_deeply_nested_json_is_400(bot: ThreadedServer, path: str) -> None:
    response = raw(bot, path, b"[" * 100_000 + b"]" * 100_000)
    assert_error(response, 400, "malformed_json")
    assert "nested too deeply" in response.json()["error"]["message"]


@pytest.mark.parametrize("path", ROUTES)
def test_lone_surrogates_are_400_and_escaped_pairs_are_text(
    bot: ThreadedServer, upstream: FakeOpenAI, path: str
) -> None:
    for lone in (r"hi \ud800", r"\udfff tail", r"\ud83d alone"):
        response = raw(bot, path, body_for(path, lone).encode())
        assert_error(response, 400, "malformed_json")
        assert "surrogate" in response.json()["error"]["message"]
    assert upstream.requests == []
    ok = raw(bot, path, body_for(path, r"smile \ud83d\ude00").encode())
    assert ok.status_code == 200, ok.text
    assert upstream.last.body["messages"][-1]["content"] == "smile \U0001f600"


def test_bodies_that_are_not_objects_or_not_utf8_are_400(bot: ThreadedServer) -> None:
    for path in ROUTES:
        for body in (b"[]", b'"text"', b"42", b"null"):
            assert_error(raw(bot, path, body), 400, "invalid_type")
        assert_error(raw(bot, path, b'{"message": "\xff\xfe"}'), 400, "malformed_json")


@pytest.mark.parametrize(
    ("extra", "code", "param"),
    [
        ({"temperature": "hot"}, "invalid_type", "temperature"),
        ({"temperature": 2.5}, "decimal_above_max_value", "temperature"),
        ({"temperature": -1}, "integer_below_min_value", "temperature"),
        ({"top_p": 1.5}, "decimal_above_max_value", "top_p"),
        ({"n": 0}, "integer_below_min_value", "n"),
        ({"max_tokens": 0}, "integer_below_min_value", "max_tokens"),
        ({"max_completion_tokens": 0}, "integer_below_min_value", "max_completion_tokens"),
        ({"max_completion_tokens": 1.5}, "invalid_type", "max_completion_tokens"),
        ({"max_tokens": True}, "invalid_type", "max_tokens"),
        ({"stream": "yes"}, "invalid_type", "stream"),
        ({"stream_options": {"include_usage": "yes"}}, "invalid_type", "stream_options.include_usage"),
        ({"response_format": {"type": "yaml"}}, "invalid_value", "response_format.type"),
        ({"response_format": "json"}, "invalid_type", "response_format"),
        ({"response_format": {"type": "json_schema"}}, "invalid_value", "response_format"),
        ({"logit_bias": {"50256": 101}}, "integer_above_max_value", "logit_bias.50256"),
        ({"logit_bias": {"word": 1}}, "invalid_value", "logit_bias.word"),
        ({"logit_bias": [1, 2]}, "invalid_type", "logit_bias"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "array_above_max_length", "stop"),
        ({"stop": 7}, "invalid_type", "stop"),
        ({"presence_penalty": 3}, "integer_above_max_value", "presence_penalty"),
        ({"top_logprobs": 21}, "integer_above_max_value", "top_logprobs"),
        ({"seed": 2**64}, "integer_above_max_value", "seed"),
        ({"reasoning_effort": "extreme"}, "invalid_value", "reasoning_effort"),
        ({"user": 5}, "invalid_type", "user"),
        ({"colour": "red"}, "unknown_parameter", "colour"),
        ({"tools": [{"type": "function"}]}, "unsupported_parameter", "tools"),
        ({"messages": []}, "empty_array", "messages"),
        ({"messages": "hi"}, "invalid_type", "messages"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "invalid_value", "messages[0].role"),
        ({"messages": [{"role": "user", "content": 3}]}, "invalid_type", "messages[0].content"),
        ({"messages": [{"role": "user"}]}, "missing_required_parameter", "messages[0].content"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "invalid_value", None),
        ({"messages": [{"role": "system", "content": "only a system message"}]}, "invalid_value", "messages"),
    ],
)
def test_invalid_parameters_are_400_naming_the_parameter_and_never_sent(
    bot: ThreadedServer, upstream: FakeOpenAI, extra: dict[str, Any], code: str, param: str | None
) -> None:
    body = {"model": "x", "messages": [{"role": "user", "content": "hi"}], **extra}
    response = httpx2.post(bot.url + "/v1/chat/completions", json=body, timeout=10)
    if param is None:  # a content part of another type: the part's own field is named
        assert response.status_code == 400 and response.json()["error"]["param"].startswith("messages[0]")
    else:
        assert_error(response, 400, code, param)
    assert upstream.requests == []


def test_valid_parameters_are_forwarded_as_sent(bot: ThreadedServer, upstream: FakeOpenAI) -> None:
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    client = openai.OpenAI(base_url=bot.url + "/v1", api_key="unused", max_retries=0)
    text: Any = [{"type": "text", "text": "hi"}]
    messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": text}]
    response_format: Any = {"type": "json_schema", "json_schema": {"name": "out", "schema": schema}}
    client.chat.completions.create(
        model="x",
        messages=messages,
        temperature=2,
        top_p=0,
        logit_bias={"50256": -100},
        stop=["END"],
        seed=-(2**63),
        max_completion_tokens=7,
        response_format=response_format,
    )
    sent = upstream.last.body
    assert sent["temperature"] == 2 and sent["top_p"] == 0 and sent["stop"] == ["END"]
    assert sent["logit_bias"] == {"50256": -100} and sent["seed"] == -(2**63)
    assert sent["max_tokens"] == 7  # gpt-4o-mini takes max_tokens; the client's limit is kept
    expected = {"type": "json_schema", "json_schema": {"name": "out", "schema": schema}}
    assert sent["response_format"] == expected
    assert sent["messages"][-1] == {"role": "user", "content": "hi"}


def test_the_openai_client_sees_our_400_with_its_param(bot: ThreadedServer) -> None:
    client = openai.OpenAI(base_url=bot.url + "/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model="x", messages=[{"role": "user", "content": "hi"}], max_completion_tokens=0
        )
    assert info.value.param == "max_completion_tokens" and info.value.code == "integer_below_min_value"


def test_an_upstream_4xx_reaches_the_client_as_that_4xx(bot: ThreadedServer, upstream: FakeOpenAI) -> None:
    refusal = Fault(status=400, param="temperature", code="unsupported_value")
    upstream.fail_next(refusal)
    client = openai.OpenAI(base_url=bot.url + "/v1", api_key="unused", max_retries=2)
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="x", messages=[{"role": "user", "content": "hi"}])
    assert info.value.param == "temperature" and info.value.code == "unsupported_value"
    assert len(upstream.requests) == 1  # a 4xx is not retried, by the bot or by the SDK
    for stream in (False, True):
        upstream.fail_next(Fault(status=422, code="content_filter"))
        response = httpx2.post(bot.url + "/chat", json={"message": "hi", "stream": stream}, timeout=10)
        assert_error(response, 422, "content_filter")


@pytest.mark.parametrize("stream", [False, True])
def test_an_upstream_answering_html_is_a_bad_gateway_not_a_500(
    bot: ThreadedServer, upstream: FakeOpenAI, stream: bool
) -> None:
    page = b"<html><body>Service Unavailable</body></html>"
    for path in ROUTES:
        upstream.fail_next(Fault(body=page, content_type="text/html"))
        body = {"message": "hi"} if path == "/chat" else {"messages": [{"role": "user", "content": "hi"}]}
        response = httpx2.post(bot.url + path, json={**body, "stream": stream}, timeout=10)
        assert response.status_code == 502, response.text
        assert response.json()["error"]["code"] == "upstream_bad_response"


def _chunked(total: int, piece: int = 64 << 10) -> Iterator[bytes]:
    yield b'{"message": "'
    sent = 0
    while sent < total:
        yield b"x" * piece
        sent += piece
    yield b'"}'


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/chat"),
        ("POST", "/v1/chat/completions"),
        ("DELETE", "/sessions/abc"),
        ("GET", "/healthz"),
        ("POST", "/nothing-here"),
    ],
)
def test_a_chunked_body_over_the_limit_is_413_on_every_route(
    bot: ThreadedServer, upstream: FakeOpenAI, method: str, path: str
) -> None:
    response = httpx2.request(method, bot.url + path, content=_chunked(10 << 20), headers=JSON, timeout=30)
    assert response.status_code == 413, response.text
    assert response.json()["error"]["code"] == "body_too_large"
    assert upstream.requests == []


def test_a_chunked_body_under_the_limit_is_read_whole(bot: ThreadedServer, upstream: FakeOpenAI) -> None:
    response = httpx2.post(bot.url + "/chat", content=_chunked(20_000, 1000), headers=JSON, timeout=10)
    assert response.status_code == 200, response.text
    assert upstream.last.body["messages"][-1]["content"] == "x" * 20_000
