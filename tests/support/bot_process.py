"""``kubechat serve`` as production runs it: a process of its own, settings from its environment, real HTTP
on a free loopback port. Its output goes to a file (a pipe nobody reads would fill and stall the server).
The one way tests start one (``kubechat_serve``) or several sharing a store (``Replicas``)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
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


class BotProcess:
    """One ``kubechat serve`` process on a free port, its output appended to ``log``; stopped by PID."""

    def __init__(self, env: Mapping[str, str], log: Path, wrapper: Sequence[str] = ()) -> None:
        """``wrapper`` execs the command it is given last (e.g. into a mount namespace), keeping its PID."""
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        argv = [sys.executable, "-m", "chatbot_service.cli", "serve", "--host", "127.0.0.1", "--port"]
        with log.open("ab") as sink:
            self.process = subprocess.Popen(
                [*wrapper, *argv, str(self.port)],
                env={**os.environ, **env},
                stdout=sink,
                stderr=subprocess.STDOUT,
            )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_up(self, timeout: float = 60) -> BotProcess:
        """Until it answers ``/healthz``; fails with its output if it exits or does not come up."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                httpx2.get(self.url + "/healthz", timeout=1).raise_for_status()
                return self
            except httpx2.HTTPError:
                code = self.process.poll()
                if code is not None or time.monotonic() > deadline:
                    how = f"exited with {code}" if code is not None else f"not up after {timeout:g} s"
                    raise RuntimeError(
                        f"kubechat serve on port {self.port} {how}:\n{self.output()}"
                    ) from None
                time.sleep(0.05)

    def chat(self, message: str, session_id: str | None = None) -> httpx2.Response:
        return httpx2.post(
            self.url + "/chat", json={"message": message, "session_id": session_id}, timeout=30
        )

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@contextmanager
def kubechat_serve(env: Mapping[str, str], timeout: float = 60) -> Iterator[BotProcess]:
    """Start ``kubechat serve`` with ``env`` over this process's environment; stopped (SIGTERM) on exit."""
    with tempfile.TemporaryDirectory(prefix="kubechat-serve-") as tmp:
        bot = BotProcess(env, Path(tmp) / "output.log")
        try:
            yield bot.wait_up(timeout)
        finally:
            bot.stop()


class Replicas:
    """Bot processes started for one test; ``stop`` stops them and checks no secret reached a log."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.started: list[BotProcess] = []

    def start(self, env: Mapping[str, str], count: int) -> list[BotProcess]:
        bots = [BotProcess(env, self.folder / f"bot{len(self.started) + i}.log") for i in range(count)]
        self.started.extend(bots)
        return [b.wait_up() for b in bots]

    def stop(self, secrets: tuple[str, ...]) -> None:
        for b in self.started:
            b.stop()
        logs = "".join(b.output() for b in self.started)
        for secret in secrets:
            assert secret not in logs, "a secret reached the bot's log"
