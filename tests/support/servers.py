"""Run ASGI apps on loopback in a background thread, on a free port: real sockets, real HTTP."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class ThreadedServer:
    """A uvicorn server in a daemon thread; ``url`` is its base URL once started."""

    def __init__(self, app: Any, host: str = "127.0.0.1", **config: Any) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, 0))
        self.port: int = self.sock.getsockname()[1]
        self.url = f"http://{host}:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on", **config))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def start(self) -> ThreadedServer:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("test server did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()


@contextmanager
def serving(app: Any, **config: Any) -> Iterator[ThreadedServer]:
    server = ThreadedServer(app, **config).start()
    try:
        yield server
    finally:
        server.stop()


def concurrent_turns(base_urls: list[str], session_id: str, count: int) -> list[dict[str, Any]]:
    """``count`` /chat turns on one session at once, spread over ``base_urls`` (replicas); asserts they
    all succeeded and returns the session's history afterwards."""
    import httpx2

    statuses: list[int] = []

    def send(i: int) -> None:
        url = base_urls[i % len(base_urls)]
        reply = httpx2.post(url + "/chat", json={"message": f"m{i}", "session_id": session_id}, timeout=30)
        statuses.append(reply.status_code)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert statuses == [200] * count
    history: list[dict[str, Any]] = httpx2.get(f"{base_urls[0]}/sessions/{session_id}").json()["messages"]
    return history


def assert_serialized(history: list[dict[str, Any]]) -> None:
    """Strictly alternating, and every reply of the fake upstream saw every message before it."""
    for i in range(0, len(history), 2):
        assert history[i]["role"] == "user" and history[i + 1]["role"] == "assistant"
        assert history[i + 1]["content"] == f"{i + 2} messages; last: {history[i]['content']}"
