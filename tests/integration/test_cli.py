"""The ``kubechat`` command as a user runs it: a real process, real environment, real HTTP."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx2
import pytest

from tests.integration.conftest import API_KEY
from tests.support.fake_openai import FakeOpenAI
from tests.support.servers import free_port


def kubechat(*args: str) -> list[str]:
    return [sys.executable, "-m", "chatbot_service.cli", *args]


@pytest.fixture
def process_env(bot_env: dict[str, str]) -> dict[str, str]:
    return {**os.environ, **bot_env}


def test_terminal_bot_keeps_context_and_shows_tokens_and_trimming(
    process_env: dict[str, str], upstream: FakeOpenAI
) -> None:
    process_env |= {"KUBECHAT_MAX_CONTEXT_TOKENS": "300", "KUBECHAT_MAX_REPLY_TOKENS": "100"}
    lines = [f"question {i} " + "padding " * 20 for i in range(4)]
    done = subprocess.run(
        kubechat("chat"),
        input="\n".join(lines) + "\n",
        env=process_env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert out.count("You: ") == 5
    assert f"Bot: 2 messages; last: {lines[0]}" in out
    assert f"Bot: 4 messages; last: {lines[1]}" in out  # the second turn carried the first
    totals = [int(line.split(", ")[1].split()[0]) for line in out.splitlines() if line.startswith("[tokens:")]
    assert len(totals) == 4 and totals == sorted(totals) and totals[0] > 0
    assert "history trimmed" in out
    assert len(upstream.requests) == 4
    assert API_KEY not in out + done.stderr


def test_terminal_bot_refuses_to_start_without_a_key(process_env: dict[str, str]) -> None:
    del process_env["OPENAI_API_KEY"]
    done = subprocess.run(
        kubechat("chat"), input="", env=process_env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert "no OpenAI API key" in done.stderr
    assert "Traceback" not in done.stderr


def test_terminal_bot_reports_upstream_errors_and_goes_on(
    process_env: dict[str, str], upstream: FakeOpenAI
) -> None:
    from tests.support.fake_openai import Fault

    upstream.fail_next(Fault(status=500))
    done = subprocess.run(
        kubechat("chat"), input="one\ntwo\n", env=process_env, capture_output=True, text=True, timeout=60
    )
    assert "error: the model API failed with HTTP 500" in done.stdout
    assert "Bot: 2 messages; last: two" in done.stdout


@pytest.fixture
def served(process_env: dict[str, str]) -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen(
        kubechat("serve", "--port", str(port)),
        env=process_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx2.get(url + "/healthz", timeout=1)
                break
            except httpx2.TransportError:
                assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
                assert time.monotonic() < deadline, "kubechat serve did not come up"
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        output, _ = proc.communicate(timeout=15)
        assert API_KEY not in output
        served.output = output  # type: ignore[attr-defined]


def test_serve_answers_over_http(served: str) -> None:
    assert httpx2.get(served + "/readyz").json()["ready"] is True
    reply = httpx2.post(served + "/chat", json={"message": "hello"}, timeout=10)
    assert reply.status_code == 200 and reply.json()["reply"] == "2 messages; last: hello"


def test_cli_usage_errors_are_messages() -> None:
    done = subprocess.run(kubechat("serve", "--port", "x"), capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and "invalid int value" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("extra", "loaded"), [({}, False), ({"KUBECHAT_APPCONFIG_ENDPOINT": "https://s.azconfig.io"}, True)]
)
def test_the_azure_sdks_load_only_for_bots_that_use_app_configuration(
    process_env: dict[str, str], extra: dict[str, str], loaded: bool
) -> None:
    code = (
        "import os, sys\n"
        "from chatbot_service.app import create_app\n"
        "create_app(environ=dict(os.environ))\n"
        "print('azure.appconfiguration.provider' in sys.modules)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env={**process_env, **extra}, capture_output=True, text=True, timeout=60
    )
    assert done.stdout.strip() == str(loaded), done.stderr
