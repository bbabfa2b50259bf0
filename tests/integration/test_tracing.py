"""Traces over real OTLP/HTTP to a receiver on loopback, configured only by the standard variables:
one span per turn and one per upstream call, with the GenAI attributes and never a prompt or a reply."""

from __future__ import annotations

import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import AbstractContextManager

import httpx2
import pytest
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from tests.integration.conftest import BotFactory
from tests.support.fake_openai import FakeOpenAI, Fault
from tests.support.otlp_receiver import OtlpReceiver, ReceivedSpan
from tests.support.servers import ThreadedServer, serving


@pytest.fixture
def receiver() -> Iterator[tuple[OtlpReceiver, str]]:
    otlp = OtlpReceiver()
    with serving(otlp.app) as server:
        yield otlp, server.url


def spans_for(otlp: OtlpReceiver, count: int) -> list[ReceivedSpan]:
    deadline = time.monotonic() + 15
    while len(otlp.spans) < count:
        assert time.monotonic() < deadline, f"{len(otlp.spans)} of {count} spans arrived"
        time.sleep(0.05)
    return list(otlp.spans)


def traced_bot(
    start_bot: BotFactory, env: dict[str, str], endpoint: str
) -> AbstractContextManager[ThreadedServer]:
    env |= {
        "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
        "OTEL_SERVICE_NAME": "helpdesk",
        "OTEL_BSP_SCHEDULE_DELAY": "50",
        "KUBECHAT_MAX_CONTEXT_TOKENS": "300",
        "KUBECHAT_MAX_REPLY_TOKENS": "100",
    }
    return start_bot(env)


def test_turns_and_upstream_calls_are_spans_with_the_genai_attributes(
    start_bot: BotFactory, bot_env: dict[str, str], receiver: tuple[OtlpReceiver, str], upstream: FakeOpenAI
) -> None:
    otlp, endpoint = receiver
    secret_words = "my password is tangerine-42"
    with traced_bot(start_bot, bot_env, endpoint) as bot:
        sid, replies = None, []
        for i in range(8):
            body = {
                "message": f"turn {i}: {secret_words} " + "words " * 10,
                "session_id": sid,
                "stream": i == 7,
            }
            response = httpx2.post(bot.url + "/chat", json=body, timeout=10)
            assert response.status_code == 200
            if i < 7:
                replies.append(response.json())
                sid = replies[-1]["session_id"]
        spans = spans_for(otlp, 16)
    turns = [s for s in spans if s.kind == Span.SPAN_KIND_SERVER]
    calls = [s for s in spans if s.kind == Span.SPAN_KIND_CLIENT]
    assert len(turns) == len(calls) == 8
    for turn in turns:
        (call,) = [c for c in calls if c.parent_span_id == turn.span_id]
        assert call.trace_id == turn.trace_id and turn.parent_span_id == b""
        assert turn.name == call.name == "chat gpt-4o-mini"
        for span in (turn, call):
            assert span.service_name == "helpdesk"
            assert span.attributes["gen_ai.operation.name"] == "chat"
            assert span.attributes["gen_ai.provider.name"] == "openai"
            assert span.attributes["gen_ai.request.model"] == "gpt-4o-mini"
            assert span.attributes["gen_ai.response.model"] == "gpt-4o-mini"
            assert span.attributes["gen_ai.conversation.id"] == sid
            assert span.status_code == Status.STATUS_CODE_UNSET
    # The tokens the upstream reported for each plain turn are on a turn span (and the streamed one too).
    on_spans = Counter(t.attributes["gen_ai.usage.input_tokens"] for t in turns)
    assert not Counter(r["usage"]["prompt_tokens"] for r in replies) - on_spans
    assert all(t.attributes["gen_ai.usage.output_tokens"] > 0 for t in turns)
    trimmed = [t.attributes["kubechat.trimmed"] for t in turns]
    assert False in trimmed and trimmed.count(True) >= sum(r["truncated"] for r in replies) > 0
    # Never the conversation's text: not in any attribute, not anywhere in what was exported.
    assert not any(secret_words.encode() in body for body in otlp.bodies)
    assert not any(r["reply"].encode() in body for r in replies for body in otlp.bodies)


def test_a_failed_upstream_call_is_an_error_span(
    start_bot: BotFactory, bot_env: dict[str, str], receiver: tuple[OtlpReceiver, str], upstream: FakeOpenAI
) -> None:
    otlp, endpoint = receiver
    with traced_bot(start_bot, bot_env, endpoint) as bot:
        upstream.fail_next(Fault(status=503))
        assert httpx2.post(bot.url + "/chat", json={"message": "hi"}, timeout=10).status_code >= 500
        spans = spans_for(otlp, 2)
    assert {s.status_code for s in spans} == {Status.STATUS_CODE_ERROR}
    assert {s.attributes["error.type"] for s in spans} == {"upstream_error"}
    assert not any("gen_ai.usage.input_tokens" in s.attributes for s in spans)


@pytest.mark.parametrize(("endpoint", "imported"), [("", False), ("http://127.0.0.1:9/", True)])
def test_opentelemetry_is_loaded_only_with_an_endpoint(
    bot_env: dict[str, str], endpoint: str, imported: bool
) -> None:
    """Without an endpoint the SDK is not even imported (it costs start time and memory)."""
    env = {**bot_env, "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint}
    code = (
        "import sys; from chatbot_service.app import create_app; "
        f"create_app(environ={env!r}); print('opentelemetry.sdk.trace' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == str(imported), done.stderr
