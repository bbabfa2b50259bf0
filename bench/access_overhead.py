"""What authentication plus limits add to a chat completion, side by side with them off, in one run.

    .venv/bin/python bench/access_overhead.py [--seconds 5] [--rounds 3] [--baseline DIR]

The set-up of ``service_overhead.py``: the Go upstream and the Go load generator on CPU 0, each bot
process alone on CPU 1 while it is measured. Five ``kubechat serve`` processes run side by side: access
and limits off (the anchor); an API key with memory counters; an OIDC JWT (a local HTTPS issuer, its
CA trusted through SSL_CERT_FILE) with memory counters; and the same two with the counters in Redis.
Limits are set high enough never to refuse (requests and tokens per minute, a daily token budget and
a monthly cost budget per identity, a daily token budget for the bot), so every request pays the
whole path: authenticate, plan, reserve, settle. Rounds interleave the five, so a noisy neighbour
hurts all of them alike; the figures are medians over the rounds. Everything started is stopped by PID.

``--baseline DIR`` (a source tree, e.g. ``git archive main | tar -x -C DIR``) adds the two Redis rows run
from that tree's ``chatbot_service`` (first on PYTHONPATH), interleaved with the others: a change to the
Redis path measured against what it replaces, in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(1, str(BENCH.parent))

import service_overhead as so  # noqa: E402

from tests.support.fake_azure.tls import TestCA  # noqa: E402
from tests.support.oidc_issuer import Issuer  # noqa: E402
from tests.support.servers import serving  # noqa: E402

API_KEY = so.API_KEY
AUDIENCE = "api://bench"
LIMITS = so.LIMITS


def configurations(issuer: Issuer, keys_dir: Path, redis_url: str) -> dict[str, dict[str, str]]:
    key = {"KUBECHAT_ACCESS": '{"apiKeys": {}}', "KUBECHAT_API_KEYS_DIR": str(keys_dir)}
    jwt = {"KUBECHAT_ACCESS": json.dumps({"oidc": {"issuer": issuer.url, "audience": AUDIENCE}})}
    limits = {"KUBECHAT_LIMITS": json.dumps(LIMITS)}
    redis = {"KUBECHAT_SESSION_STORE": "redis", "KUBECHAT_REDIS_URL": redis_url}
    return {
        "off (anchor)": {},
        "API key + memory": key | limits,
        "JWT + memory": jwt | limits,
        "API key + Redis": key | limits | redis,
        "JWT + Redis": jwt | limits | redis,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per row")
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--baseline", type=Path, help="a source tree whose Redis rows run side by side")
    parser.add_argument("--tiktoken-from", type=Path, default=BENCH.parent.parent / "shared" / "tiktoken")
    args = parser.parse_args(argv)
    pin = shutil.which("taskset") is not None and (os.cpu_count() or 1) >= 2
    procs = so.Processes()
    work = Path(tempfile.mkdtemp(prefix="kubechat-access-bench-"))
    cache = Path(os.environ.get("KUBECHAT_CACHE", Path.home() / ".cache" / "kubechat")) / "bench"
    load = so.LoadTool(so.build("load", cache), pin, args.warmup, args.seconds)
    upstream_bin = so.build("upstream", cache)
    kubechat = str(Path(sys.executable).parent / "kubechat")
    ca = TestCA(work)
    os.environ["SSL_CERT_FILE"] = str(ca.ca_file)  # the bots inherit it: they trust the local issuer
    issuer = Issuer()
    started = time.time()
    try:
        with serving(issuer.app, **ca.server_cert("127.0.0.1")) as served:
            issuer.url = served.url.replace("http://", "https://")
            upstream = _upstream(procs, upstream_bin, work, pin)
            redis_port = so.free_port()
            redis_argv = [shutil.which("redis-server") or "redis-server", "--bind", "127.0.0.1"]
            redis_argv += ["--port", str(redis_port), "--save", "", "--appendonly", "no"]
            procs.start(so.pinned(so.LOAD_CPU, redis_argv, pin), work / "redis.log")
            keys_dir = work / "keys"
            keys_dir.mkdir()
            (keys_dir / "bench").write_text(API_KEY)
            env = so.bench_env(upstream + "/v1", so.seed_tiktoken(kubechat, args.tiktoken_from))
            token = issuer.token(AUDIENCE, sub="bench", lifetime=7200)
            headers = {"API key": f"Authorization: Bearer {API_KEY}", "JWT": f"Authorization: Bearer {token}"}
            bots: dict[str, tuple[str, int, str]] = {}
            setups = configurations(issuer, keys_dir, f"redis://127.0.0.1:{redis_port}/0")
            if args.baseline:
                tree = str(args.baseline.resolve())
                setups |= {
                    f"{n} (baseline)": e | {"PYTHONPATH": tree}
                    for n, e in list(setups.items())
                    if "Redis" in n
                }
            for name, extra in setups.items():
                port = so.free_port()
                argv = [kubechat, "serve", "--host", "127.0.0.1", "--port", str(port), "--log-level", "info"]
                log = work / f"{name.split()[0]}-{port}.log"
                proc = procs.start(so.pinned(so.TEST_CPU, argv, pin), log, env | extra)
                so.wait_ready(f"http://127.0.0.1:{port}/readyz", proc, log)
                header = next((h for k, h in headers.items() if name.startswith(k)), "")
                bots[name] = (f"http://127.0.0.1:{port}/v1/chat/completions", proc.pid, header)
            in_process(issuer, token, f"redis://127.0.0.1:{redis_port}/0", args.rounds, args.baseline)
            body = so.completion_body(False)
            for url, _, header in bots.values():  # first requests: tokenizer, connections, JWKS
                load.run(url, "plain", 1, "-body", body, *(["-header", header] if header else []), seconds=1)
            p50: dict[str, list[float]] = {n: [] for n in bots}
            cpu: dict[str, list[float]] = {n: [] for n in bots}
            for round_number in range(args.rounds):
                for name, (url, pid, header) in bots.items():
                    before = so.cpu_seconds(pid)
                    result = load.run(
                        url, "plain", 1, "-body", body, *(["-header", header] if header else [])
                    )
                    if result.errors:
                        raise SystemExit(f"{name}: {result.errors} errors, first: {result.first_error}")
                    p50[name].append(result.p50)
                    cpu[name].append(
                        1e6 * (so.cpu_seconds(pid) - before) / (result.requests + result.warmup_requests)
                    )
                    print(
                        f"round {round_number + 1} {name:<18} p50 {result.p50:.3f} ms"
                        f"  {result.rps:.0f} rps  {cpu[name][-1]:.0f} CPU µs/req",
                        flush=True,
                    )
    finally:
        procs.stop_all()
        shutil.rmtree(work, ignore_errors=True)
    anchor = "off (anchor)"
    rows = []
    for name in p50:
        added = [a - b for a, b in zip(p50[name], p50[anchor], strict=True)]
        more = [a - b for a, b in zip(cpu[name], cpu[anchor], strict=True)]
        rows.append(
            [
                name,
                f"{statistics.median(p50[name]):.3f}",
                f"{statistics.median(added):+.3f}",
                f"{statistics.median(cpu[name]):.0f}",
                f"{statistics.median(more):+.0f}",
                f"{statistics.median(cpu[name]) / statistics.median(cpu[anchor]):.2f}",
            ]
        )
    columns = ["configuration", "p50 ms", "added p50 ms", "CPU µs/req", "added CPU µs", "CPU ratio"]
    print()
    print(f"/v1/chat/completions, c=1, {args.rounds} interleaved rounds of {args.seconds:g} s, medians;")
    print(f"bots on CPU {so.TEST_CPU}, upstream + load on CPU {so.LOAD_CPU}" if pin else "unpinned")
    print(f"(the machine is shared: read ratios, not absolutes; {time.time() - started:.0f} s in all)")
    print("\n".join(so.table(columns, "lrrrrr", rows)))
    return 0


def in_process(
    issuer: Issuer, token: str, redis_url: str, rounds: int, baseline: Path | None, requests: int = 3000
) -> None:
    """The guard alone, in this process: authenticate, admit (plan + reserve), settle, per request,
    for each configuration, interleaved; no HTTP, so the noise of the machine matters less. CPU time
    (this process's; Redis's own is not in it) beside the wall time. With a baseline tree, its Redis
    counters (``redis_counters.py``) behind this tree's guard, as one more row."""
    import asyncio
    import importlib.util

    from chatbot_service.guard import Guard
    from chatbot_service.sessions import Stores
    from chatbot_service.settings import parse_settings

    base = {"openai_api_key": "sk-" + "x" * 20, "bot_name": "bench"}
    limits = {"limits": json.dumps(LIMITS)}
    key = {"access": '{"apiKeys": {}}', "api_keys": json.dumps({"bench": API_KEY})}
    oidc = {"access": json.dumps({"oidc": {"issuer": issuer.url, "audience": AUDIENCE}})}
    redis = {"session_store": "redis", "redis_url": redis_url}
    setups = {
        "off (anchor)": ({}, ""),
        "API key + memory": (key | limits, API_KEY),
        "JWT + memory": (oidc | limits, token),
        "API key + Redis": (key | limits | redis, API_KEY),
        "JWT + Redis": (oidc | limits | redis, token),
    }
    if baseline:
        setups["API key + Redis (baseline)"] = (key | limits | redis | {"bot_name": "baseline"}, API_KEY)
    reply = json.dumps(
        {
            "choices": [{"message": {"content": "Hi"}}],
            "usage": {"prompt_tokens": 20, "completion_tokens": 9, "total_tokens": 29},
        }
    ).encode()

    async def run() -> dict[str, list[tuple[float, float]]]:
        guards = {}
        for name, (extra, credential) in setups.items():
            settings = parse_settings(base | extra)
            guard = Guard(Stores())
            if name.endswith("(baseline)") and baseline:
                where = baseline / "chatbot_service" / "redis_counters.py"
                spec = importlib.util.spec_from_file_location("baseline_redis_counters", where)
                assert spec and spec.loader, where
                module = importlib.util.module_from_spec(spec)
                spec.loader.exec_module(module)
                guard._redis = module.RedisCounters(guard._stores.redis(settings))
            guards[name] = (guard, settings, f"Bearer {credential}" if credential else None)
        timings: dict[str, list[tuple[float, float]]] = {name: [] for name in setups}
        for round_number in range(rounds + 1):  # the first round warms up (JWKS, connections)
            for name, (guard, settings, header) in guards.items():
                started, cpu = time.perf_counter(), time.process_time()
                for _ in range(requests if round_number else 50):
                    caller = await guard.authenticate(settings, header)
                    ticket = await guard.admit(caller, settings, 20, {"max_tokens": 64})
                    await ticket.settle_raw(reply)
                await asyncio.sleep(0.1)  # settlements still waiting are sent, and counted, here
                if round_number:
                    wall = 1e6 * (time.perf_counter() - started - 0.1) / requests
                    timings[name].append((wall, 1e6 * (time.process_time() - cpu) / requests))
        return timings

    timings = asyncio.run(run())
    wall0 = statistics.median(w for w, _ in timings["off (anchor)"])
    cpu0 = statistics.median(c for _, c in timings["off (anchor)"])
    print(f"\nthe guard alone, in process ({rounds} interleaved rounds of {requests} requests, medians):")
    rows = []
    for name, t in timings.items():
        wall, cpu = statistics.median(w for w, _ in t), statistics.median(c for _, c in t)
        rows.append([name, f"{wall:.1f}", f"{wall - wall0:+.1f}", f"{cpu:.1f}", f"{cpu - cpu0:+.1f}"])
    columns = ["configuration", "µs/request", "added µs", "CPU µs/request", "added CPU µs"]
    print("\n".join(so.table(columns, "lrrrr", rows)), flush=True)
    print()


def _upstream(procs: so.Processes, binary: Path, work: Path, pin: bool) -> str:
    log = work / "upstream.log"
    proc = procs.start(so.pinned(so.LOAD_CPU, [str(binary), "-addr", "127.0.0.1:0"], pin), log)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        text = log.read_text() if log.exists() else ""
        if "listening on " in text:
            address = text.split("listening on ", 1)[1].split()[0]
            so.wait_ready(f"http://{address}/healthz", proc, log)
            return f"http://{address}"
        time.sleep(0.05)
    raise SystemExit(f"the upstream did not start; see {log}")


if __name__ == "__main__":
    raise SystemExit(main())
