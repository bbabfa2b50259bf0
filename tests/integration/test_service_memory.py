"""The in-memory store is bounded by bytes: a real ``kubechat serve`` process, told its pod's memory
limit as the operator tells it, is filled with large and non-ASCII conversations past its budget; its
RSS (read from /proc) stays under the limit, old sessions are evicted and it keeps answering. The bot runs
with the allocator the chatbot image gives it (jemalloc, its ``LD_PRELOAD`` and ``MALLOC_CONF``)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest

from chatbot_service.memory import BASELINE
from tests.integration.conftest import API_KEY
from tests.support.fake_openai import FakeOpenAI
from tests.support.servers import free_port

MiB = 1 << 20
LIMIT = 256 * MiB
DOCKERFILE = Path(__file__).resolve().parents[2] / "images" / "chatbot.Dockerfile"


def image_allocator() -> dict[str, str]:
    """The allocator settings the chatbot image's ENV gives every bot."""
    found = {
        name: re.search(rf"\b{name}=(\S+)", DOCKERFILE.read_text()) for name in ("LD_PRELOAD", "MALLOC_CONF")
    }
    assert all(found.values()), f"{DOCKERFILE} no longer sets LD_PRELOAD and MALLOC_CONF: {found}"
    return {name: match[1] for name, match in found.items() if match}


def status(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM (peak RSS) ... of a process, in bytes."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if value.strip().endswith("kB"):
            fields[name] = int(value.split()[0]) * 1024
    return fields


@pytest.fixture
def served_bot(upstream: FakeOpenAI, tiktoken_cache: Path) -> Iterator[tuple[str, int]]:
    upstream.keep_requests = False  # this test sends 100 MiB of bodies
    port = free_port()
    env = {
        "PATH": os.environ["PATH"],
        "TIKTOKEN_CACHE_DIR": str(tiktoken_cache),
        "OPENAI_API_KEY": API_KEY,
        "OPENAI_BASE_URL": upstream.url,
        "KUBECHAT_MODEL": "gpt-4o-mini",
        "KUBECHAT_MAX_RETRIES": "0",
        "KUBECHAT_MEMORY_LIMIT": str(LIMIT),  # the downward API's limits.memory
        "KUBECHAT_LOG_LEVEL": "warning",
        **image_allocator(),
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "chatbot_service.cli", "serve", "--port", str(port)], env=env
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx2.get(url + "/readyz", timeout=1).status_code == 200:
                    break
            except httpx2.HTTPError:
                pass
            assert process.poll() is None and time.monotonic() < deadline, "the bot did not start"
            time.sleep(0.1)
        maps = Path(f"/proc/{process.pid}/maps").read_text()
        assert "libjemalloc" in maps, "jemalloc is missing: apt-get install libjemalloc2 (make test-deps)"
        yield url, process.pid
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_large_and_non_ascii_sessions_are_evicted_before_rss_reaches_the_limit(
    served_bot: tuple[str, int],
) -> None:
    url, pid = served_bot
    idle = status(pid)["VmRSS"]
    emoji = "\U0001f600" * 31_000  # 4 bytes a character once stored, reply echoed: ~250 KB a turn
    plain = "x" * 31_000
    sessions = []
    with httpx2.Client(base_url=url, timeout=30) as client:
        for i in range(320):
            text = (emoji if i % 8 else plain) + f" {i}"
            body = json.dumps({"message": text}, ensure_ascii=False).encode()
            reply = client.post("/chat", content=body, headers={"content-type": "application/json"})
            assert reply.status_code == 200, reply.text
            sessions.append(reply.json()["session_id"])
        peak = status(pid)["VmHWM"]
        assert client.get(f"/sessions/{sessions[0]}").status_code == 404  # evicted
        assert client.get(f"/sessions/{sessions[-1]}").status_code == 200
        after = client.post("/chat", json={"message": "still there?"})
        assert after.status_code == 200 and after.json()["reply"].endswith("still there?")
    # ~100 MiB of conversations were sent; the store keeps its budget and the process its limit
    print(f"idle RSS {idle / MiB:.0f} MiB, peak {peak / MiB:.0f} MiB, limit {LIMIT / MiB:.0f} MiB")
    assert peak < LIMIT


def test_an_idle_bot_stays_within_the_baseline_its_memory_budget_assumes(
    served_bot: tuple[str, int],
) -> None:
    """The store's budget is what the pod's limit leaves after ``memory.BASELINE``: a process that grew
    past it (a dependency loaded that a default bot never uses, a second tokenizer, tables kept after
    load) would leave the store less than it counts on. Held when ready and after its first requests
    (plain and streamed /v1, a /chat session), not only before them."""
    url, pid = served_bot
    time.sleep(1)  # startup garbage collected and handed back
    ready = status(pid)["VmRSS"]
    session = None
    with httpx2.Client(base_url=url, timeout=30) as client:
        for _ in range(10):
            body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hello! How are you?"}]}
            assert client.post("/v1/chat/completions", json=body).status_code == 200
            streamed = client.post("/v1/chat/completions", json={**body, "stream": True})
            assert streamed.status_code == 200 and streamed.text.rstrip().endswith("data: [DONE]")
            turn = client.post("/chat", json={"message": "And then?", "session_id": session})
            assert turn.status_code == 200, turn.text
            session = turn.json()["session_id"]
    after = status(pid)["VmRSS"]
    print(f"VmRSS ready {ready / MiB:.1f} MiB, after 30 requests {after / MiB:.1f} MiB")
    assert ready < BASELINE, f"ready at {ready / MiB:.1f} MiB, over the {BASELINE / MiB:.0f} MiB baseline"
    assert after < BASELINE, f"{after / MiB:.1f} MiB after 30 requests, over {BASELINE / MiB:.0f} MiB"
