"""What the metrics cost a request: a real ``kubechat serve`` with metrics on beside one with them off.

    .venv/bin/python bench/metrics_overhead.py                     # about 3 minutes
    .venv/bin/python bench/metrics_overhead.py --rounds 3 --seconds 3 --concurrency 1,8
    .venv/bin/python bench/metrics_overhead.py --together          # a busy machine: both loaded at once

The set-up is ``bench/service_overhead.py``'s, imported from it (not copied): the zero-latency Go upstream
and the Go keep-alive load generator pinned on CPU 0, the process under test alone on CPU 1. Each round
starts two fresh processes of this tree's ``kubechat serve``, identical but for ``KUBECHAT_METRICS=on``
and ``off`` (the product setting: off, no instrument exists and ``/metrics`` answers 404), primes both,
then measures ``/v1/chat/completions`` plain and streamed on each in turn, mode by mode, the order
swapped every round (on-off, off-on, ...) so that drift in the machine's load falls on both alike.

Per row: CPU µs per request (the process's user+system CPU from ``/proc/PID/stat`` over the row, warm-up
included, divided by the requests it served) and added p50 (p50 minus the direct call's in the same
run). Printed: the medians over the rounds, the ratio on/off of CPU per request (the target: under
1.03) and the difference in added p50 (the target: none measurable), each also paired round by round
(the two processes of one round were measured next to each other) with the range over the rounds.
Then one ``/metrics`` scrape's CPU in the service (paid per scrape, e.g. every 30 s, not per request).
Asserts nothing; everything it starts is stopped at the end, by PID.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from service_overhead import (
    LOAD_CPU,
    REPO,
    TEST_CPU,
    Bench,
    Row,
    bench_env,
    cpu_seconds,
    free_port,
    int_list,
    log_dir,
    rss_mb,
    seed_tiktoken,
    table,
)

ON, OFF = "metrics on", "metrics off"
ROUTE = "/v1/chat/completions"
MODES = ("plain", "stream")


def start(bench: Bench, name: str, env: dict[str, str]) -> tuple[int, str]:
    """A fresh ``kubechat serve`` on CPU 1, ready and primed; (pid, base URL)."""
    port = free_port()
    argv = [bench.kubechat, "serve", "--host", "127.0.0.1", "--port", str(port)]
    argv += ["--log-level", bench.args.log_level]
    pid = bench.start_python(name, argv, env, "/readyz", port)
    base = f"http://127.0.0.1:{port}"
    bench.prime(name, pid, base + ROUTE)
    return pid, base


def scrape_cpu_us(pid: int, base: str, scrapes: int = 50) -> float:
    before = cpu_seconds(pid)
    for _ in range(scrapes):
        with urllib.request.urlopen(base + "/metrics", timeout=30) as response:
            response.read()
    return (cpu_seconds(pid) - before) / scrapes * 1e6


def check_off(base: str) -> None:
    """The metrics-off process really has them off (``/metrics`` answers 404)."""
    try:
        urllib.request.urlopen(base + "/metrics", timeout=10).close()
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return
        raise
    raise RuntimeError("the metrics-off process served /metrics: KUBECHAT_METRICS=off did not take")


def run(bench: Bench) -> float:
    """The interleaved rounds; returns one scrape's CPU µs (the last metrics-on process)."""
    upstream = bench.start_upstream()
    print(f"upstream {upstream} (CPU {LOAD_CPU}); processes under test on CPU {TEST_CPU}", flush=True)
    env = bench_env(upstream + "/v1", seed_tiktoken(bench.kubechat, bench.args.tiktoken_from))
    envs = {ON: {**env, "KUBECHAT_METRICS": "on"}, OFF: {**env, "KUBECHAT_METRICS": "off"}}
    for mode in MODES:
        bench.measure("direct (the limit)", upstream, ROUTE, mode, mode, None)
    scrape_us = 0.0
    for round_ in range(1, bench.args.rounds + 1):
        order = (ON, OFF) if round_ % 2 else (OFF, ON)
        started = {name: start(bench, f"{name} #{round_}", envs[name]) for name in order}
        for mode in MODES:
            if bench.args.together:  # both at once: the machine's noise falls on both at the same moments
                with ThreadPoolExecutor(2) as pool:
                    for done in [
                        pool.submit(
                            bench.measure, name, started[name][1], ROUTE, mode, mode, started[name][0]
                        )
                        for name in order
                    ]:
                        done.result()
                continue
            for name in order:
                pid, base = started[name]
                bench.measure(name, base, ROUTE, mode, mode, pid)
        on_pid, on_base = started[ON]
        scrape_us = scrape_cpu_us(on_pid, on_base)
        check_off(started[OFF][1])
        for name in order:
            label = f"{name} #{round_}"
            bench.memory[label].end = rss_mb(started[name][0])
            bench.procs.stop(next(p for p in bench.procs.running if p.pid == started[name][0]))
    return scrape_us


def spread(values: Sequence[float], sign: str = "") -> str:
    return f"{min(values):{sign}.3f} to {max(values):{sign}.3f}"


def report(bench: Bench, scrape_us: float, load_before: tuple[float, float, float], began: float) -> str:
    direct = {(r.mode, r.concurrency): r.load.p50 for r in bench.rows if r.target.startswith("direct")}

    def rows_of(target: str, mode: str, c: int) -> list[Row]:
        return [r for r in bench.rows if (r.target, r.mode, r.concurrency) == (target, mode, c)]

    header = ["mode", "c", "CPU µs/req, off", "on", "ratio on/off", "paired ratio (range)"]
    header += ["added p50 ms, off", "on", "on - off", "paired on - off (range)", "rps off / on"]
    header += ["others on CPU 1, off / on"]
    cells: list[list[object]] = []
    for mode in MODES:
        for c in bench.args.concurrency:
            on, off = rows_of(ON, mode, c), rows_of(OFF, mode, c)
            cpu_on = statistics.median(r.cpu_us_per_request or 0.0 for r in on)
            cpu_off = statistics.median(r.cpu_us_per_request or 0.0 for r in off)
            added_on = [r.load.p50 - direct[(mode, c)] for r in on]
            added_off = [r.load.p50 - direct[(mode, c)] for r in off]
            p50_on, p50_off = statistics.median(added_on), statistics.median(added_off)
            rps_on = statistics.median(r.load.rps for r in on)
            rps_off = statistics.median(r.load.rps for r in off)
            others_on = statistics.median(r.others_on_test_cpu or 0.0 for r in on)
            others_off = statistics.median(r.others_on_test_cpu or 0.0 for r in off)
            # The same round's two processes, measured next to each other: drift falls on both alike.
            ratios = [
                (a.cpu_us_per_request or 0.0) / (b.cpu_us_per_request or 1.0)
                for a, b in zip(on, off, strict=True)
            ]
            gaps = [a - b for a, b in zip(added_on, added_off, strict=True)]
            cells.append(
                [
                    mode,
                    c,
                    f"{cpu_off:,.0f}",
                    f"{cpu_on:,.0f}",
                    f"{cpu_on / cpu_off:.3f}" if cpu_off else "n/a",
                    f"{statistics.median(ratios):.3f} ({spread(ratios)})",
                    f"{p50_off:.3f}",
                    f"{p50_on:.3f}",
                    f"{p50_on - p50_off:+.3f}",
                    f"{statistics.median(gaps):+.3f} ({spread(gaps, '+')})",
                    f"{rps_off:,.0f} / {rps_on:,.0f}",
                    f"{others_off:.0f}% / {others_on:.0f}%",
                ]
            )
    after = os.getloadavg()
    out = [
        "",
        f"## Metrics on against off (`{ROUTE}`; medians of {bench.args.rounds} rounds, fresh processes each)",
        "",
        *table(header, "lrrrrrrrrrrr", cells),
        "",
        "Paired: per round, on / off (CPU) and on - off (added p50) of the two processes measured next to"
        " each other, then the median and the range over the rounds. Targets: CPU ratio under 1.03; a p50"
        " gap inside the range the rounds show.",
        "",
        f"One `/metrics` scrape: {scrape_us:,.0f} µs CPU in the service (paid per scrape, not per request).",
        "",
        f"Load average before: {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}; "
        f"after: {after[0]:.2f} {after[1]:.2f} {after[2]:.2f}. Run took {time.monotonic() - began:.0f} s; "
        f"warm-up {bench.args.warmup:g} s + {bench.args.seconds:g} s per row, "
        + ("pinned" if bench.pin else "NOT pinned")
        + (
            "; both processes loaded at once (--together: others on CPU 1 include the other one)"
            if bench.args.together
            else ""
        )
        + ".",
    ]
    disturbed = [r for r in bench.rows if (r.others_on_test_cpu or 0.0) > 10]
    if disturbed and not bench.args.together:
        out.append(f"DISTURBED: other processes took over 10% of CPU {TEST_CPU} in {len(disturbed)} rows.")
    failed = [r.load for r in bench.rows if r.load.errors]
    if failed:
        out.append(f"ERRORS in {len(failed)} rows; first: {failed[0].first_error}")
    return "\n".join(out)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6, help="rounds, fresh processes each (default 6)")
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per row (default 5)")
    parser.add_argument("--warmup", type=float, default=1.0, help="warm-up seconds per row (default 1)")
    parser.add_argument("--concurrency", type=int_list, default=[1], help="e.g. 1,8 (default 1)")
    parser.add_argument("--log-level", default="info", help="of the servers (default info: access log on)")
    parser.add_argument(
        "--tiktoken-from", type=Path, default=REPO.parent / "shared" / "tiktoken", help="encodings to seed"
    )
    parser.add_argument(
        "--together",
        action="store_true",
        help="load both processes at once, sharing CPU 1 (for a busy machine: its noise then falls on both "
        "alike; read CPU per request, not p50, which then includes their sharing)",
    )
    parser.add_argument("--no-pin", dest="pin", action="store_false", help="do not use taskset")
    parser.add_argument("--logs", type=Path, help="keep the servers' logs in this folder")
    args = parser.parse_args(argv)
    if args.pin and len(os.sched_getaffinity(0)) < 2:
        print("metrics_overhead: one CPU only; running unpinned", file=sys.stderr)
        args.pin = False
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    began, load_before = time.monotonic(), os.getloadavg()
    print(f"load average {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}; machine shared")
    with log_dir(args.logs) as logs:
        bench = Bench(args, logs)
        try:
            scrape_us = run(bench)
        finally:
            bench.procs.stop_all()
        print(report(bench, scrape_us, load_before, began))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
