"""What the metrics cost a request: the instrumentation's CPU beside a real request's, in one run.

    .venv/bin/python bench/metrics_overhead.py [--requests 400] [--rounds 5]

The service has no switch that turns its metrics off, so the two are measured side by side, interleaved
round by round:

- a real ``kubechat serve`` process answering ``POST /v1/chat/completions`` (plain, then streamed) from a
  fake OpenAI-compatible upstream in this process, one request at a time on a keep-alive connection: its
  process CPU per request (``/proc/PID/stat``, metrics included) and the client's p50;
- the exact instrumentation one such request runs, in this process with the service's own classes: the
  edge layer's timing and ``record_http`` (as ``middleware.Edge`` runs them) plus one ``Turn``
  (started, first token for streams, answered with the upstream's usage, served), in thread CPU time.

"More CPU per request with metrics" is instrumentation / (request - instrumentation); the p50 a request
would lose without metrics is at most the instrumentation's time (it runs on the request's path). A
scrape of ``/metrics`` is measured too (its CPU in the service process), being paid per scrape, not per
request. Prints figures; asserts nothing. Everything it starts is stopped at the end.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED_TIKTOKEN = REPO.parent / "shared" / "tiktoken"
KUBECHAT = str(Path(sys.executable).with_name("kubechat"))  # this venv's CLI seeds the encodings
sys.path[:0] = [str(REPO), str(REPO / "bench")]

import httpx2  # noqa: E402
from service_overhead import seed_tiktoken  # noqa: E402

from chatbot_service.metrics import Metrics  # noqa: E402
from chatbot_service.observe import Observer  # noqa: E402
from tests.support.bot_process import bot_environment, kubechat_serve  # noqa: E402
from tests.support.fake_openai import FakeOpenAI  # noqa: E402
from tests.support.servers import serving  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")
BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hello! How are you today?"}]}
REPLY = {"model": "gpt-4o-mini-2024-07-18", "usage": {"prompt_tokens": 13, "completion_tokens": 9}}


def process_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def serve_round(url: str, pid: int, n: int, stream: bool) -> tuple[float, float]:
    """(service CPU µs per request, client p50 ms) over ``n`` requests."""
    body = {**BODY, "stream": stream}
    latencies = []
    with httpx2.Client(timeout=30) as client:
        client.post(url, json=body).raise_for_status()  # the connection is open before counting
        cpu = process_cpu(pid)
        for _ in range(n):
            start = time.perf_counter()
            response = client.post(url, json=body)
            response.raise_for_status()
            latencies.append(time.perf_counter() - start)
        used = process_cpu(pid) - cpu
    return used / n * 1e6, statistics.median(latencies) * 1e3


def instrumentation_round(n: int, stream: bool) -> float:
    """Thread CPU µs per request of the metrics one request records."""
    metrics = Metrics()
    observer = Observer(metrics)
    route = "/v1/chat/completions"
    start = time.thread_time()
    for _ in range(n):  # what the edge layer (``middleware.Edge``) does for metrics on each request
        began = time.perf_counter()
        metrics.record_http(route, "POST", 200, time.perf_counter() - began)
    http = time.thread_time() - start
    start = time.thread_time()
    for _ in range(n):
        turn = observer.turn("gpt-4o-mini", conversation_id=None)
        if stream:
            turn.first_token()
        turn.answered(REPLY)
        turn.served("")
    turns = time.thread_time() - start
    return (http + turns) / n * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--requests", type=int, default=400, help="per round and mode")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    # The bots' processes read encodings from a seeded cache: they must never download one.
    os.environ["TIKTOKEN_CACHE_DIR"] = str(seed_tiktoken(KUBECHAT, SHARED_TIKTOKEN))
    load = os.getloadavg()
    print(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; machine shared; {vars(args)}")
    fake = FakeOpenAI()
    fake.keep_requests = False
    with serving(fake.app) as upstream:
        fake.url = upstream.url + "/v1"
        with kubechat_serve(bot_environment(fake), timeout=120) as bot:
            pid, url = bot.process.pid, bot.url + "/v1/chat/completions"
            rows: dict[str, list[tuple[float, float, float]]] = {"plain": [], "stream": []}
            for round_ in range(1, args.rounds + 1):
                for mode in ("plain", "stream"):
                    cpu, p50 = serve_round(url, pid, args.requests, mode == "stream")
                    instr = instrumentation_round(args.requests * 10, mode == "stream")
                    rows[mode].append((cpu, p50, instr))
                    print(
                        f"round {round_} {mode:6}: request {cpu:7.1f} µs CPU, p50 {p50:6.3f} ms; "
                        f"metrics {instr:5.1f} µs",
                        flush=True,
                    )
            cpu = process_cpu(pid)
            scrapes = 50
            with httpx2.Client(timeout=30) as client:
                for _ in range(scrapes):
                    client.get(bot.url + "/metrics").raise_for_status()
            scrape_us = (process_cpu(pid) - cpu) / scrapes * 1e6
    print("\nmedians over the rounds")
    print(
        "| mode | request CPU µs | metrics CPU µs | more CPU with metrics | p50 ms | metrics' share of p50 |"
    )
    print("|---|---|---|---|---|---|")
    for mode, values in rows.items():
        cpu = statistics.median(v[0] for v in values)
        p50 = statistics.median(v[1] for v in values)
        instr = statistics.median(v[2] for v in values)
        more, share = instr / (cpu - instr) * 100, instr / 1e3 / p50 * 100
        print(f"| {mode} | {cpu:.0f} | {instr:.1f} | {more:.2f} % | {p50:.3f} | {share:.2f} % |")
    print(f"\none /metrics scrape: {scrape_us:.0f} µs CPU in the service (paid per scrape, e.g. every 30 s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
