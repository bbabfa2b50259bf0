"""Property-based fuzzing of every route: schemathesis against /openapi.json (inputs that fit the schema
and inputs that do not), and hypothesis-made raw bodies, with a healthy and with a failing upstream.

What must hold for every answer: no 5xx that is not an upstream or availability failure, and every error
a JSON body in OpenAI's shape.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx2
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chatbot_service.app import create_app
from tests.integration.conftest import BotFactory
from tests.support.fake_openai import FakeOpenAI, Fault
from tests.support.servers import ThreadedServer

FAILURES = [
    Fault(status=500),
    Fault(status=429, headers={"retry-after": "60"}),
    Fault(status=401),
    Fault(status=400, param="temperature", code="unsupported_value"),
    Fault(body=b"<html>gateway</html>", content_type="text/html"),
    Fault(stream_body=b'data: {"choices": [{"index": 0, "delta": {"content": "cut'),
    Fault(break_stream_after=1),
]
#: 5xx a bot may answer when its upstream (or its own readiness) fails; never 500.
AVAILABILITY = {502, 503, 504}
FUZZ = settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.filter_too_much,
    ],
)


@pytest.fixture(params=["healthy upstream", "failing upstream"])
def fuzzed_bot(
    request: pytest.FixtureRequest, upstream: FakeOpenAI, start_bot: BotFactory, bot_env: dict[str, str]
) -> Iterator[tuple[ThreadedServer, bool]]:
    failing = request.param == "failing upstream"
    upstream.keep_requests = False
    if failing:
        upstream.fail_always = FAILURES
    with start_bot(bot_env | {"KUBECHAT_REQUEST_TIMEOUT": "1"}) as bot:
        yield bot, failing


def check(status: int, content_type: str, text: str, failing: bool) -> None:
    if status >= 500:
        assert failing and status in AVAILABILITY, (status, text[:300])
    if status >= 400:
        assert content_type.startswith("application/json"), (status, content_type, text[:200])
        error = json.loads(text)["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["message"], error
        if status >= 500:
            assert error["code"].startswith("upstream_") or error["code"] == "not_ready", error
    elif content_type.startswith("text/event-stream"):
        assert_stream_well_formed(text, failing)


def assert_stream_well_formed(text: str, failing: bool) -> None:
    """Every block is a comment or a whole event; the stream ends with done/[DONE] or one error."""
    events = []
    for block in (b for b in text.split("\n\n") if b):
        lines = [line for line in block.split("\n") if not line.startswith(":")]
        if not lines:
            continue
        fields = dict(line.split(": ", 1) for line in lines)
        data = fields["data"]
        events.append((fields.get("event"), data if data == "[DONE]" else json.loads(data)))
    last_name, last = events[-1]
    ended = last_name == "done" or last == "[DONE]"
    errored = last_name == "error" or (isinstance(last, dict) and "error" in last)
    assert ended or errored, events[-3:]
    assert not errored or failing, last


# The bot's own OpenAPI document (the same one /openapi.json serves, as test_service_openapi checks),
# read at collection so each operation is a test; every case is sent over HTTP to a running bot.
schema = schemathesis.openapi.from_dict(create_app(environ={}).openapi())


@schema.parametrize()
@FUZZ
def test_schemathesis_finds_no_server_errors(case: Any, fuzzed_bot: tuple[ThreadedServer, bool]) -> None:
    bot, failing = fuzzed_bot
    response = case.call(base_url=bot.url, timeout=20)
    content_type = (response.headers.get("content-type") or [""])[0]
    check(response.status_code, content_type, response.text, failing)


_text = st.text(st.characters(codec=None, categories=("L", "N", "P", "S", "Z", "Cs", "Cc")), max_size=30)
_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | _text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)
POISON = "__poison__"
#: JSON a careless or hostile client can send that Python's json module accepts (or chokes on).
_poisons = st.sampled_from(
    [
        "NaN",
        "Infinity",
        "-Infinity",
        "1e999",
        "-1e999",
        '"\\ud800"',
        '"a\\udfff"',
        '"\\udbff tail"',
        "[" * 3000 + "]" * 3000,
        "1" * 5000,
    ]
)
_role = st.sampled_from(["user", "user", "assistant", "system", "developer", "tool", 7])
_content = (
    _text
    | st.just(POISON)
    | st.lists(st.fixed_dictionaries({"type": st.just("text"), "text": _text | st.just(POISON)}), max_size=2)
)
_message = st.fixed_dictionaries({"role": _role, "content": _content})
_fields = (
    "stream",
    "temperature",
    "max_tokens",
    "max_completion_tokens",
    "response_format",
    "logit_bias",
    "stop",
    "n",
    "user",
    "seed",
)
_chat_body = st.fixed_dictionaries(
    {"message": st.just(POISON) | _text}, optional={"session_id": _json, "stream": st.booleans() | _json}
)
_completion_body = st.fixed_dictionaries(
    {"messages": st.lists(_message, min_size=1, max_size=3)},
    optional={name: _json | st.just(POISON) for name in _fields},
)
BODIES = {"/chat": _chat_body | _json, "/v1/chat/completions": _completion_body | _json}


@pytest.mark.parametrize("path", sorted(BODIES))
@given(data=st.data(), poison=_poisons)
@settings(FUZZ, max_examples=40)
def test_raw_bodies_find_no_server_errors(
    fuzzed_bot: tuple[ThreadedServer, bool], path: str, data: st.DataObject, poison: str
) -> None:
    bot, failing = fuzzed_bot
    body = data.draw(BODIES[path])
    raw = json.dumps(body).replace(f'"{POISON}"', poison)  # lone surrogates go as \\ud800 escapes
    response = httpx2.post(
        bot.url + path, content=raw.encode(), headers={"content-type": "application/json"}, timeout=20
    )
    check(response.status_code, response.headers.get("content-type", ""), response.text, failing)
