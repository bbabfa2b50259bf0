"""A bot with its metrics off (``KUBECHAT_METRICS=off``), over real HTTP: ``/metrics`` answers 404 in
OpenAI's error shape, chats work as before, and no instrument exists in the process at all."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
from collections.abc import Iterator

import httpx2
import openai
import pytest
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.metrics import MetricWrapperBase

from chatbot_service.metrics import Metrics
from chatbot_service.sessions import TimedStore
from tests.integration.conftest import BotFactory
from tests.support.scrape import Scrape
from tests.support.servers import ThreadedServer

INSTRUMENTS = (Metrics, CollectorRegistry, MetricWrapperBase, TimedStore)


def alive() -> set[int]:
    """Ids of every metrics object alive in this process (instruments, registries, the middleware)."""
    gc.collect()
    return {id(o) for o in gc.get_objects() if isinstance(o, INSTRUMENTS)}


def converse(bot: ThreadedServer) -> None:
    """Plain and streamed /chat on one session, then /v1 plain and streamed with the openai client."""
    with httpx2.Client(base_url=bot.url, timeout=10) as http:
        first = http.post("/chat", json={"message": "my name is Ada"})
        assert first.status_code == 200, first.text
        session = first.json()["session_id"]
        streamed = http.post("/chat", json={"message": "and my name?", "session_id": session, "stream": True})
        assert streamed.status_code == 200 and "event: done" in streamed.text
        history = http.get(f"/sessions/{session}").json()["messages"]
        assert [m["content"] for m in history if m["role"] == "user"] == ["my name is Ada", "and my name?"]
    with openai.OpenAI(base_url=bot.url + "/v1", api_key="unused", max_retries=0) as client:
        reply = client.chat.completions.create(model="any", messages=[{"role": "user", "content": "hi"}])
        assert reply.choices[0].message.content and reply.usage is not None
        with client.chat.completions.create(
            model="any",
            messages=[{"role": "user", "content": "one two three"}],
            stream=True,
            stream_options={"include_usage": True},
        ) as stream:
            assert [chunk.usage for chunk in stream if chunk.usage]


@pytest.fixture
def quiet_bot(start_bot: BotFactory, bot_env: dict[str, str]) -> Iterator[tuple[ThreadedServer, set[int]]]:
    """A bot with metrics off, and the metrics objects that were alive before it was built."""
    before = alive()
    with start_bot(bot_env | {"KUBECHAT_METRICS": "off"}) as bot:
        yield bot, before


def test_metrics_off_answers_404_in_openais_shape(quiet_bot: tuple[ThreadedServer, set[int]]) -> None:
    bot, _ = quiet_bot
    response = httpx2.get(bot.url + "/metrics", timeout=10)
    assert response.status_code == 404
    error = response.json()["error"]
    assert error["code"] == "not_found" and error["type"] == "invalid_request_error"
    assert "KUBECHAT_METRICS=off" in error["message"]


def test_metrics_off_chats_work_and_no_instrument_exists(quiet_bot: tuple[ThreadedServer, set[int]]) -> None:
    bot, before = quiet_bot
    converse(bot)
    assert httpx2.get(bot.url + "/sessions/no-such-session", timeout=10).status_code == 404
    # Nothing was created for this bot: no Metrics, no registry or instrument, no HTTP middleware, no
    # timed session store; and nothing of kubechat's in prometheus-client's default registry either.
    assert alive() <= before
    exposed = generate_latest(REGISTRY).decode()
    assert "kubechat_" not in exposed and "gen_ai_" not in exposed


def test_metrics_on_as_today(start_bot: BotFactory, bot_env: dict[str, str]) -> None:
    """The same conversation with ``KUBECHAT_METRICS=on`` counts, and its instruments do exist (the
    check above can fail)."""
    before = alive()
    with start_bot(bot_env | {"KUBECHAT_METRICS": "on"}) as bot:
        converse(bot)
        assert alive() - before
        scrape = Scrape(bot.url + "/metrics")
        assert scrape.value("gen_ai_server_request_duration_seconds_count", error_type="") == 4
        assert scrape.value("kubechat_http_requests_total", route="/chat") == 2


def test_a_bad_value_stops_the_start_with_a_clear_message(bot_env: dict[str, str]) -> None:
    env = {**os.environ, **bot_env, "KUBECHAT_METRICS": "sometimes"}
    done = subprocess.run(
        [sys.executable, "-m", "chatbot_service.cli", "serve", "--port", "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "KUBECHAT_METRICS: must be on or off (got 'sometimes')" in done.stderr
    assert "Traceback" not in done.stderr
