"""``kubechat serve`` as production runs it: a process of its own, settings from its environment, real HTTP
on a free loopback port. Its output goes to a file (a pipe nobody reads would fill and stall the server)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx2

from tests.support.fake_openai import FakeOpenAI
from tests.support.servers import free_port

API_KEY = "sk-test-4f8a1c2e9b7d"


def bot_environment(upstream: FakeOpenAI, api_key: str = API_KEY, **settings: str) -> dict[str, str]:
    """The environment a bot's process gets in production, pointed at the fake upstream; ``settings`` are
    KUBECHAT_* values (``request_timeout="2"`` is ``KUBECHAT_REQUEST_TIMEOUT=2``)."""
    return {
        "OPENAI_API_KEY": api_key,
        "OPENAI_BASE_URL": upstream.url,
        "KUBECHAT_SYSTEM_PROMPT": "You are a test bot.",
        "KUBECHAT_MODEL": "gpt-4o-mini",
        "KUBECHAT_MAX_RETRIES": "0",
        "KUBECHAT_REQUEST_TIMEOUT": "5",
        **{f"KUBECHAT_{name.upper()}": value for name, value in settings.items()},
    }


@dataclass
class BotProcess:
    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@contextmanager
def kubechat_serve(env: Mapping[str, str], timeout: float = 30) -> Iterator[BotProcess]:
    """Start ``kubechat serve`` with ``env`` over this process's environment; stopped (SIGTERM) on exit."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="kubechat-serve-") as tmp:
        log = Path(tmp) / "output.log"
        with log.open("wb") as sink:
            process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "chatbot_service.cli",
                    "serve",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                ],
                env={**os.environ, **env},
                stdout=sink,
                stderr=subprocess.STDOUT,
            )
        bot = BotProcess(f"http://127.0.0.1:{port}", process, log)
        try:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    httpx2.get(bot.url + "/healthz", timeout=1)
                    break
                except httpx2.TransportError:
                    if process.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"kubechat serve did not come up:\n{bot.output()}") from None
                    time.sleep(0.05)
            yield bot
        finally:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
