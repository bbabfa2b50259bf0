"""Bot replicas as ``kubechat serve`` processes of their own on free ports, stopped by PID."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import httpx2

from tests.cluster.polling import eventually
from tests.support.servers import free_port


class Bot:
    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "chatbot_service.cli", "serve", "--port", str(self.port)],
            env=env,
            stdout=log.open("ab"),
            stderr=subprocess.STDOUT,
        )

    def wait_up(self) -> Bot:
        def up() -> None:
            assert self.proc.poll() is None, self.log.read_text()
            httpx2.get(self.url + "/healthz", timeout=1).raise_for_status()

        eventually(up, timeout=30, what="the bot process serving")
        return self

    def chat(self, message: str, session_id: str | None = None) -> httpx2.Response:
        return httpx2.post(
            self.url + "/chat", json={"message": message, "session_id": session_id}, timeout=30
        )

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=15)


class Replicas:
    """Bot processes started for one test; ``stop`` stops them and checks no secret reached a log."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.started: list[Bot] = []

    def start(self, env: dict[str, str], count: int) -> list[Bot]:
        bots = [Bot(env, self.folder / f"bot{len(self.started) + i}.log") for i in range(count)]
        self.started.extend(bots)
        return [b.wait_up() for b in bots]

    def stop(self, secrets: tuple[str, ...]) -> None:
        for b in self.started:
            b.stop()
        logs = "".join(b.log.read_text() for b in self.started)
        for secret in secrets:
            assert secret not in logs, "a secret reached the bot's log"
