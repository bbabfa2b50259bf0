"""What the chat service adds to a chat completion, side by side with a bare pass-through, in one run.

    /work/venv/bin/python bench/service_overhead.py [--seconds 5] [--concurrency 1,8,32] [--profile DIR]

Set-up (as in the reference figures): a zero-latency OpenAI-compatible upstream written in Go and a Go
keep-alive load generator, both pinned on CPU 0 (``taskset -c 0``); each process under test alone on
CPU 1 (``taskset -c 1``). Measured, at each concurrency, after a warm-up:

- straight to the upstream (the limit, and the base of "added p50"),
- the bare pass-through (``bench/bare_passthrough.py``: FastAPI + uvicorn + ``openai.AsyncOpenAI``),
- kubechat ``/v1/chat/completions``, plain and streamed (11 chunks + usage + ``[DONE]``),
- kubechat ``/chat`` on sessions that grow for the whole run (a 4,096-token window bounds each request),

then the cost of one more ``/chat`` turn on sessions pre-grown to 1, 100 and 1,000 turns. Everything it
starts is stopped at the end, by PID. See bench/README.md for how to read the output.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
MODEL = "gpt-4o-mini"
PROMPT = "Hello! How are you today?"
CHAT_MESSAGE = "Hello! What can you tell me about Kubernetes operators?"
BASELINE = "kubechat (baseline)"
BARE = "bare pass-through"
FEATURED = "kubechat, every feature on"
API_KEY = "kc-bench-2f6e1a9d7c3b5e48"
BIG = 10**12
# High enough never to refuse, so every request pays the whole path: authenticate, plan, reserve, settle.
LIMITS = {
    "perIdentity": {
        "requestsPerMinute": BIG,
        "tokensPerMinute": BIG,
        "tokens": {"day": BIG},
        "cost": {"month": 1_000_000},
    },
    "bot": {"tokens": {"day": BIG}},
}
# The performance goals (shared/notes/performance.md), for kubechat with every feature on.
GOAL_RPS_RATIO = 2.0  # at least twice the bare pass-through's rps per core
GOAL_ADDED_P50 = {"plain": 0.6, "stream": 1.0}  # ms, at c=1
LOAD_CPU = "0"
TEST_CPU = "1"
CLK_TCK = os.sysconf("SC_CLK_TCK")


# -- results -------------------------------------------------------------------------------


@dataclass
class Load:
    """One run of the load generator (its JSON line)."""

    requests: int
    errors: int
    rps: float
    p50: float
    p99: float
    mean: float
    warmup_requests: int = 0
    first_error: str = ""
    sessions: list[str] = field(default_factory=list)
    last_usage: dict[str, int] = field(default_factory=dict)

    @classmethod
    def parse(cls, line: str) -> Load:
        raw: dict[str, Any] = json.loads(line)
        return cls(
            requests=int(raw["requests"]),
            errors=int(raw["errors"]),
            rps=float(raw["rps"]),
            p50=float(raw["p50_ms"]),
            p99=float(raw["p99_ms"]),
            mean=float(raw["mean_ms"]),
            warmup_requests=int(raw.get("warmup_requests", 0)),
            first_error=str(raw.get("first_error", "")),
            sessions=[str(s) for s in raw.get("sessions") or []],
            last_usage={str(k): int(v) for k, v in (raw.get("last_usage") or {}).items()},
        )


@dataclass
class Row:
    target: str
    route: str
    mode: str
    concurrency: int
    load: Load
    rss_mb: float | None
    cpu_us_per_request: float | None
    others_on_test_cpu: float | None  # share of the row's time CPU 1 spent on other processes
    base: str  # the mode of the direct row "added" is computed against


@dataclass
class Memory:
    """VmRSS of a process under test when ready, after its first requests, and at the end (MB);
    how long its very first request took (ms)."""

    ready: float | None
    primed: float | None
    end: float | None
    first_request_ms: float


@dataclass
class TurnCost:
    size: int
    sessions: int
    stored_messages: list[int]
    load: Load


# -- processes -----------------------------------------------------------------------------


class Processes:
    """Every process this run starts, stopped by PID at the end (terminate, then kill)."""

    def __init__(self) -> None:
        self.running: list[subprocess.Popen[bytes]] = []

    def start(
        self, argv: Sequence[str], log: Path, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        with log.open("ab") as out:
            proc = subprocess.Popen(list(argv), stdout=out, stderr=subprocess.STDOUT, env=env)
        self.running.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        if proc in self.running:
            self.running.remove(proc)

    def stop_all(self) -> None:
        for proc in reversed(list(self.running)):
            self.stop(proc)


def pinned(cpu: str, argv: Sequence[str], pin: bool) -> list[str]:
    return ["taskset", "-c", cpu, *argv] if pin else list(argv)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: the process exited ({proc.returncode}); see {log}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} not ready after {timeout:g} s; see {log}")


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read())


def rss_mb(pid: int) -> float | None:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return None


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime


def cpu_busy_seconds(cpu: str) -> float:
    """Busy time of one CPU since boot (all but idle and iowait), from /proc/stat."""
    for line in Path("/proc/stat").read_text().splitlines():
        fields = line.split()
        if fields[0] == f"cpu{cpu}":
            ticks = [int(x) for x in fields[1:8]]  # user nice system idle iowait irq softirq
            return (sum(ticks) - ticks[3] - ticks[4]) / CLK_TCK
    return 0.0


# -- the Go tools --------------------------------------------------------------------------


def go_binary() -> str:
    found = shutil.which("go") or ("/usr/local/go/bin/go" if Path("/usr/local/go/bin/go").exists() else None)
    if found is None:
        raise SystemExit(
            "service_overhead: the Go toolchain (go) is needed to build bench/upstream and bench/load"
        )
    return found


def build(name: str, cache: Path) -> Path:
    """``bench/<name>`` built into the cache, once per version of its source."""
    source = BENCH / name
    digest = hashlib.sha256()
    for path in sorted(source.glob("*")):
        if path.suffix in (".go", ".mod"):
            digest.update(path.name.encode() + b"\0" + path.read_bytes())
    binary = cache / f"{name}-{digest.hexdigest()[:12]}"
    if binary.exists():
        return binary
    cache.mkdir(parents=True, exist_ok=True)
    partial = binary.with_suffix(".partial")
    env = {**os.environ, "CGO_ENABLED": "0", "GOFLAGS": "-buildvcs=false"}
    subprocess.run([go_binary(), "build", "-o", str(partial), "."], cwd=source, env=env, check=True)
    partial.replace(binary)
    return binary


class LoadTool:
    def __init__(self, binary: Path, pin: bool, warmup: float, seconds: float) -> None:
        self.binary = binary
        self.pin = pin
        self.warmup = warmup
        self.seconds = seconds

    def run(
        self,
        url: str,
        mode: str,
        concurrency: int,
        *extra: str,
        warmup: float | None = None,
        seconds: float | None = None,
    ) -> Load:
        warm = self.warmup if warmup is None else warmup
        measured = self.seconds if seconds is None else seconds
        argv = [
            str(self.binary),
            "-url",
            url,
            "-mode",
            mode,
            "-c",
            str(concurrency),
            "-warmup",
            f"{warm}s",
            "-duration",
            f"{measured}s",
            *extra,
        ]
        done = subprocess.run(
            pinned(LOAD_CPU, argv, self.pin), capture_output=True, text=True, timeout=warm + measured + 120
        )
        if done.returncode != 0:
            raise RuntimeError(f"load generator failed: {done.stderr.strip()}")
        return Load.parse(done.stdout.strip().splitlines()[-1])


def responses_body(stream: bool) -> str:
    """The same question for ``/v1/responses`` (stored, the default, like OpenAI)."""
    body: dict[str, Any] = {"model": MODEL, "input": PROMPT, "max_output_tokens": 64}
    if stream:
        body["stream"] = True
    return json.dumps(body)


def completion_body(stream: bool) -> str:
    body: dict[str, Any] = {
        "model": MODEL,
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": 64,
    }
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return json.dumps(body)


# -- profiles (py-spy) ---------------------------------------------------------------------


def _function(frame: str) -> str:
    """``name (path/to/file.py:123)`` -> ``name (path/to/file.py)``: one entry per function."""
    name, _, where = frame.partition(" (")
    return f"{name} ({where.rsplit(':', 1)[0]})" if where else name


def _package(frame: str) -> str:
    where = frame.partition(" (")[2].rstrip(")").rsplit(":", 1)[0]
    if where.startswith("<frozen") or "/" not in where:
        return where or "?"
    return where.split("/", 1)[0]


def summarize_profile(path: Path, top: int = 15) -> str:
    """Where the busy samples go, from py-spy's collapsed ("raw") stacks: own time by package and by
    function, and inclusive time per function (every function of a stack counts once)."""
    own: Counter[str] = Counter()
    by_package: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    busy = idle = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [f for f in stack.split(";") if f and not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        if frames[-1].startswith(("EpollSelector.select ", "_worker (concurrent")):
            idle += count  # waiting in the event loop (or an idle thread pool)
            continue
        busy += count
        own[_function(frames[-1])] += count
        by_package[_package(frames[-1])] += count
        for function in {_function(f) for f in frames}:
            inclusive[function] += count
    if busy == 0:
        return f"(no busy samples in {path})"
    lines = [
        f"{busy + idle} samples, {busy} busy ({100 * busy / (busy + idle):.0f}%); shares of the busy ones",
        "",
    ]

    def share(counts: Sequence[tuple[str, int]], quote: bool = True) -> list[list[object]]:
        return [[f"{100 * n / busy:.1f}", f"`{name}`" if quote else name] for name, n in counts]

    below_server = [(f, n) for f, n in inclusive.most_common() if n < 0.9 * busy][: top * 2]
    lines += table(["own %", "package"], "rl", share(by_package.most_common(top), quote=False))
    lines += ["", *table(["own %", "function"], "rl", share(own.most_common(top)))]
    lines += ["", *table(["inclusive %", "function"], "rl", share(below_server))]
    return "\n".join(lines)


# -- the run -------------------------------------------------------------------------------


def bench_env(upstream_url: str, tiktoken_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KUBECHAT_", "OPENAI_", "AZURE_"))}
    env.update(
        OPENAI_API_KEY="bench-key",
        OPENAI_BASE_URL=upstream_url,
        TIKTOKEN_CACHE_DIR=str(tiktoken_dir),
        KUBECHAT_MODEL=MODEL,
        KUBECHAT_MAX_CONTEXT_TOKENS="4096",
        KUBECHAT_MAX_REPLY_TOKENS="256",
        KUBECHAT_MAX_RETRIES="0",
        KUBECHAT_SESSION_MAX_MESSAGES="1000000",
        KUBECHAT_SESSION_MAX_COUNT="100000",
        KUBECHAT_RELOAD_INTERVAL="3600",
    )
    return env


def seed_tiktoken(kubechat: str, source: Path) -> Path:
    existing = os.environ.get("TIKTOKEN_CACHE_DIR")
    if existing:
        return Path(existing)
    target = Path(tempfile.gettempdir()) / "bench-tiktoken"
    subprocess.run(
        [kubechat, "seed-encodings", "--from", str(source), "--to", str(target)],
        check=True,
        capture_output=True,
    )
    return target


class Bench:
    def __init__(self, args: argparse.Namespace, logs: Path) -> None:
        self.args = args
        self.logs = logs
        self.pin = args.pin
        self.procs = Processes()
        cache = Path(os.environ.get("KUBECHAT_CACHE", Path.home() / ".cache" / "kubechat")) / "bench"
        self.upstream_bin = build("upstream", cache)
        self.load = LoadTool(build("load", cache), self.pin, args.warmup, args.seconds)
        self.rows: list[Row] = []
        self.turns: list[TurnCost] = []
        self.profiles: list[tuple[str, str]] = []
        self.memory: dict[str, Memory] = {}
        self.kubechat = str(Path(sys.executable).parent / "kubechat")
        if not Path(self.kubechat).exists():
            self.kubechat = shutil.which("kubechat") or "kubechat"

    def start_upstream(self) -> str:
        log = self.logs / "upstream.log"
        proc = self.procs.start(
            pinned(LOAD_CPU, [str(self.upstream_bin), "-addr", "127.0.0.1:0"], self.pin), log
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            text = log.read_text() if log.exists() else ""
            if "listening on " in text:
                address = text.split("listening on ", 1)[1].split()[0]
                wait_ready(f"http://{address}/healthz", proc, log)
                return f"http://{address}"
            if proc.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError(f"the upstream did not start; see {log}")

    def measure(
        self,
        target: str,
        url: str,
        route: str,
        mode: str,
        base: str,
        pid: int | None,
        body: Callable[[bool], str] = completion_body,
        headers: Sequence[str] = (),
    ) -> None:
        for c in self.args.concurrency:
            extra = ["-message", CHAT_MESSAGE] if mode == "chat" else ["-body", body(mode == "stream")]
            extra += headers
            before, busy_before, started = (
                cpu_seconds(pid) if pid else 0.0,
                cpu_busy_seconds(TEST_CPU),
                time.monotonic(),
            )
            load = self.load.run(url + route, mode, c, *extra)
            cpu = others = None
            if pid and load.requests:
                spent = cpu_seconds(pid) - before
                cpu = 1e6 * spent / (load.requests + load.warmup_requests)
                if self.pin:
                    busy = cpu_busy_seconds(TEST_CPU) - busy_before
                    others = max(0.0, 100 * (busy - spent) / (time.monotonic() - started))
            rss = rss_mb(pid) if pid else None
            self.rows.append(Row(target, route, mode, c, load, rss, cpu, others, base))
            print(
                f"  {target:<24} {route:<22} {mode:<6} c={c:<3} {load.rps:>9.0f} rps  p50 {load.p50:7.3f} ms"
                f"  p99 {load.p99:7.3f} ms  errors {load.errors}"
                + ("" if others is None else f"  others on CPU {TEST_CPU} {others:.0f}%"),
                flush=True,
            )

    def start_python(self, name: str, argv: list[str], env: dict[str, str], ready: str, port: int) -> int:
        log = self.logs / f"{name}.log"
        proc = self.procs.start(pinned(TEST_CPU, argv, self.pin), log, env)
        wait_ready(f"http://127.0.0.1:{port}{ready}", proc, log)
        self._current = proc
        return proc.pid

    def prime(self, name: str, pid: int, url: str, headers: Sequence[str] = ()) -> None:
        """First requests (lazy loading, connection set-up) before anything is measured; RSS before/after."""
        ready = rss_mb(pid)
        body = ["-body", completion_body(False), *headers]
        first = self.load.run(url, "plain", 1, *body, "-requests", "1", warmup=0.0)
        self.load.run(url, "plain", 1, *body, warmup=0.0, seconds=1.0)
        self.memory[name] = Memory(ready, rss_mb(pid), None, first.p50)

    def stop_current(self, name: str) -> None:
        self.memory[name].end = rss_mb(self._current.pid)
        self.procs.stop(self._current)

    def profile(self, label: str, pid: int, url: str, mode: str, extra: list[str]) -> None:
        """py-spy on the process under test while a c=1 load runs (an extra run, not in the table)."""
        out_dir: Path = self.args.profile
        out_dir.mkdir(parents=True, exist_ok=True)
        py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        if not Path(py_spy).exists():
            print(f"  (no py-spy: skipping the profile of {label}; pip install py-spy)")
            return
        out = out_dir / f"{label}.txt"
        seconds = max(self.args.seconds, 5.0)
        # Blocking sampling (py-spy pauses the process for each sample) gives whole stacks; this run is
        # extra and not in the tables, so the pauses cost nothing that is reported.
        argv = [py_spy, "record", "--pid", str(pid), "--format", "raw", "--rate", "250"]
        argv += ["--duration", str(int(seconds)), "--output", str(out)]
        spy = self.procs.start(pinned(LOAD_CPU, argv, self.pin), self.logs / f"py-spy-{label}.log")
        time.sleep(0.5)
        self.load.run(url, mode, 1, *extra, warmup=0.0, seconds=seconds)
        spy.wait(timeout=seconds + 60)
        self.procs.stop(spy)
        if out.exists():
            self.profiles.append((label, summarize_profile(out)))

    def turn_costs(self, base_url: str) -> None:
        """One more /chat turn on sessions pre-grown to each size: grow them, then take turns on them."""
        reps = self.args.turn_reps
        for size in self.args.turn_sizes:
            # Enough sessions that the measured turns grow each by a tenth of its size at most, grown in
            # parallel by workers that each grow whole sessions.
            sessions = reps if size == 1 else max(1, min(reps, math.ceil(reps / max(size // 10, 1))))
            workers = max(w for w in range(1, 17) if sessions % w == 0)
            per_worker = sessions // workers * size
            growing = [
                "-message",
                CHAT_MESSAGE,
                "-per-worker",
                str(per_worker),
                "-turns-per-session",
                str(size),
            ]
            seconds = self.args.grow_seconds
            grown = self.load.run(base_url + "/chat", "chat", workers, *growing, warmup=0.0, seconds=seconds)
            ids = grown.sessions[:sessions]
            if grown.errors or len(ids) < sessions:
                raise RuntimeError(f"growing {sessions} sessions of {size} turns failed: {grown.first_error}")
            stored = [len(get_json(f"{base_url}/sessions/{sid}")["messages"]) for sid in ids]
            taking = ["-message", CHAT_MESSAGE, "-sessions", ",".join(ids), "-requests", str(reps)]
            measured = self.load.run(base_url + "/chat", "chat", 1, *taking, warmup=0.0, seconds=seconds)
            self.turns.append(TurnCost(size, sessions, stored, measured))
            print(
                f"  one more turn on {size}-turn sessions: p50 {measured.p50:.3f} ms"
                f"  p99 {measured.p99:.3f} ms  ({measured.requests} turns on {sessions} sessions)",
                flush=True,
            )

    def compare(self, env: dict[str, str], upstream: str) -> None:
        """This tree's kubechat and ``--baseline`` (another tree's ``kubechat``), interleaved round by
        round, each in a fresh process: /v1 plain and streamed, and /chat. Each round also measures
        the bare pass-through and this tree with every feature on (an API key, limits in memory,
        metrics), /v1 plain and streamed: the goals of performance.md are ratios between those two."""
        keys = self.logs / "api-keys"
        keys.mkdir(exist_ok=True)
        (keys / "bench").write_text(API_KEY)
        featured = env | {
            "KUBECHAT_ACCESS": '{"apiKeys": {}}',
            "KUBECHAT_API_KEYS_DIR": str(keys),
            "KUBECHAT_LIMITS": json.dumps(LIMITS),
        }
        auth = ["-header", f"Authorization: Bearer {API_KEY}"]
        for round_ in range(1, self.args.rounds + 1):
            label = f"{BARE} #{round_}"
            port = free_port()
            argv = [sys.executable, str(BENCH / "bare_passthrough.py"), "--port", str(port)]
            argv += ["--base-url", upstream + "/v1", "--log-level", self.args.log_level]
            pid = self.start_python(label, argv, env, "/healthz", port)
            self.prime(label, pid, f"http://127.0.0.1:{port}/v1/chat/completions")
            for mode in ("plain", "stream"):
                self.measure(BARE, f"http://127.0.0.1:{port}", "/v1/chat/completions", mode, mode, pid)
            self.stop_current(label)

            label = f"{FEATURED} #{round_}"
            port = free_port()
            argv = [self.kubechat, "serve", "--host", "127.0.0.1", "--port", str(port)]
            argv += ["--log-level", self.args.log_level]
            pid = self.start_python(label, argv, featured, "/readyz", port)
            url = f"http://127.0.0.1:{port}"
            self.prime(label, pid, url + "/v1/chat/completions", auth)
            for mode in ("plain", "stream"):
                self.measure(FEATURED, url, "/v1/chat/completions", mode, mode, pid, headers=auth)
            self.stop_current(label)
            for name, executable in ((BASELINE, str(self.args.baseline)), ("kubechat", self.kubechat)):
                label = f"{name} #{round_}"
                tree_env = env
                if name != BASELINE and self.args.image_allocator:
                    from service_memory import image_allocator  # a sibling script, as memory_parts

                    tree_env = {**env, **image_allocator()}
                port = free_port()
                base_url = f"http://127.0.0.1:{port}"
                argv = [executable, "serve", "--host", "127.0.0.1", "--port", str(port)]
                argv += ["--log-level", self.args.log_level]
                pid = self.start_python(label, argv, tree_env, "/readyz", port)
                time.sleep(2)  # idle: startup work and its garbage are done
                idle = rss_mb(pid)
                self.prime(label, pid, base_url + "/v1/chat/completions")
                self.memory[label].ready = idle
                for mode in ("plain", "stream"):
                    self.measure(name, base_url, "/v1/chat/completions", mode, mode, pid)
                self.measure(name, base_url, "/chat", "chat", "plain", pid)
                self.responses_rows(name, base_url, pid)
                self.stop_current(label)

    def responses_rows(self, name: str, base_url: str, pid: int) -> None:
        """``/v1/responses`` plain and streamed, beside ``/v1/chat/completions`` (a baseline may lack it)."""
        if "/v1/responses" in get_json(base_url + "/openapi.json")["paths"]:
            for mode in ("plain", "stream"):
                self.measure(name, base_url, "/v1/responses", mode, mode, pid, responses_body)

    def run(self) -> None:
        upstream = self.start_upstream()
        print(f"upstream {upstream} (CPU {LOAD_CPU}); processes under test on CPU {TEST_CPU}", flush=True)
        tiktoken_dir = seed_tiktoken(self.kubechat, self.args.tiktoken_from)
        env = bench_env(upstream + "/v1", tiktoken_dir)
        for mode in ("plain", "stream"):
            self.measure("direct (the limit)", upstream, "/v1/chat/completions", mode, mode, None)
        if self.args.baseline:
            self.compare(env, upstream)
            return

        port = free_port()
        bare = f"http://127.0.0.1:{port}"
        argv = [sys.executable, str(BENCH / "bare_passthrough.py"), "--port", str(port)]
        argv += ["--base-url", upstream + "/v1", "--log-level", self.args.log_level]
        pid = self.start_python("bare pass-through", argv, env, "/healthz", port)
        self.prime("bare pass-through", pid, bare + "/v1/chat/completions")
        for mode in ("plain", "stream"):
            self.measure("bare pass-through", bare, "/v1/chat/completions", mode, mode, pid)
        if self.args.profile:
            url = bare + "/v1/chat/completions"
            self.profile("bare-v1-plain", pid, url, "plain", ["-body", completion_body(False)])
        self.stop_current("bare pass-through")

        port = free_port()
        base_url = f"http://127.0.0.1:{port}"
        argv = [self.kubechat, "serve", "--host", "127.0.0.1", "--port", str(port)]
        argv += ["--log-level", self.args.log_level]
        pid = self.start_python("kubechat", argv, env, "/readyz", port)
        self.prime("kubechat", pid, base_url + "/v1/chat/completions")
        for mode in ("plain", "stream"):
            self.measure("kubechat", base_url, "/v1/chat/completions", mode, mode, pid)
        self.measure("kubechat", base_url, "/chat", "chat", "plain", pid)
        self.responses_rows("kubechat", base_url, pid)
        self.turn_costs(base_url)
        if self.args.profile:
            url = base_url + "/v1/chat/completions"
            self.profile("kubechat-v1-plain", pid, url, "plain", ["-body", completion_body(False)])
            self.profile("kubechat-v1-stream", pid, url, "stream", ["-body", completion_body(True)])
            self.profile("kubechat-chat", pid, base_url + "/chat", "chat", ["-message", CHAT_MESSAGE])
        self.stop_current("kubechat")
        if self.args.redis:
            self.redis_rows(env)

    def redis_rows(self, env: dict[str, str]) -> None:
        """The same /chat session mix with sessions in Redis: what sharing them across replicas costs."""
        binary = shutil.which("redis-server")
        if binary is None:
            print("  no redis-server: Redis rows skipped (apt-get install redis-server)", flush=True)
            return
        redis_port = free_port()
        redis_argv = [
            binary,
            "--bind",
            "127.0.0.1",
            "--port",
            str(redis_port),
            "--save",
            "",
            "--appendonly",
            "no",
        ]
        redis = self.procs.start(pinned(LOAD_CPU, redis_argv, self.pin), self.logs / "redis.log")
        time.sleep(0.5)
        if redis.poll() is not None:
            raise RuntimeError(f"redis-server did not start; see {self.logs / 'redis.log'}")
        name = "kubechat, Redis sessions"
        port = free_port()
        base_url = f"http://127.0.0.1:{port}"
        argv = [self.kubechat, "serve", "--host", "127.0.0.1", "--port", str(port)]
        argv += ["--log-level", self.args.log_level]
        redis_env = {
            **env,
            "KUBECHAT_SESSION_STORE": "redis",
            "KUBECHAT_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
        }
        pid = self.start_python(name, argv, redis_env, "/readyz", port)
        self.prime(name, pid, base_url + "/v1/chat/completions")
        self.measure(name, base_url, "/chat", "chat", "plain", pid)
        self.stop_current(name)
        self.procs.stop(redis)


# -- output --------------------------------------------------------------------------------


def fmt(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def table(header: Sequence[str], align: str, rows: Sequence[Sequence[object]]) -> list[str]:
    """A markdown table; ``align`` has one letter per column: l(eft) or r(ight)."""
    out = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|",
    ]
    out += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return out


def side_by_side(bench: Bench, direct: dict[tuple[str, int], float]) -> list[str]:
    header = ["process under test", "route", "mode", "c", "rps", "p50 ms", "p99 ms", "added p50 ms"]
    header += ["CPU µs/req", "RSS MB", "errors", "others on CPU 1"]
    rows = []
    for r in bench.rows:
        added = 0.0 if r.target.startswith("direct") else r.load.p50 - direct[(r.base, r.concurrency)]
        rows.append(
            [
                *(r.target, f"`{r.route}`", r.mode, r.concurrency, f"{r.load.rps:,.0f}", f"{r.load.p50:.3f}"),
                *(f"{r.load.p99:.3f}", f"{added:.3f}", fmt(r.cpu_us_per_request, 0), fmt(r.rss_mb)),
                r.load.errors,
                "n/a" if r.others_on_test_cpu is None else f"{r.others_on_test_cpu:.0f}%",
            ]
        )
    return table(header, "lllrrrrrrrrr", rows)


def reference_columns(bench: Bench, direct: dict[tuple[str, int], float]) -> list[str]:
    header = ["process under test (one core)", "added p50, plain", "rps, plain"]
    header += ["added p50, stream (11 chunks)", "rps, stream", "RSS"]
    targets = [
        ("direct (the limit)", "/v1/chat/completions"),
        ("bare pass-through", "/v1/chat/completions"),
        ("kubechat", "/v1/chat/completions"),
        ("kubechat", "/chat"),
        ("kubechat", "/v1/responses"),
    ]
    rows: list[list[object]] = []
    for target, route in targets:
        of_target = [r for r in bench.rows if r.target == target and r.route == route]
        if not of_target:
            continue
        cells: list[object] = [f"{target} `{route}`" if target == "kubechat" else target]
        for mode in ("chat", "none") if route == "/chat" else ("plain", "stream"):
            of_mode = [r for r in of_target if r.mode == mode]
            at_1 = [r.load.p50 - direct[(r.base, 1)] for r in of_mode if r.concurrency == 1]
            cells.append(f"{at_1[0]:.2f} ms" if at_1 else "n/a")
            cells.append(f"{max(r.load.rps for r in of_mode):,.0f}" if of_mode else "n/a")
        rss = [r.rss_mb for r in of_target if r.rss_mb is not None]
        cells.append(f"{max(rss):.0f} MB" if rss else "n/a")
        rows.append(cells)
    return table(header, "lrrrrr", rows)


def turn_table(bench: Bench, direct: dict[tuple[str, int], float]) -> list[str]:
    header = ["session size (turns)", "sessions", "stored messages before", "turns measured", "p50 ms"]
    header += ["p99 ms", "mean ms", "added p50 ms", "request tokens (ours)", "messages left out"]
    header += ["history tokens"]
    rows = []
    for t in bench.turns:
        u = t.load.last_usage
        stored = f"{min(t.stored_messages)} to {max(t.stored_messages)}" if t.stored_messages else "?"
        rows.append(
            [
                *(
                    f"{t.size:,}",
                    t.sessions,
                    stored,
                    t.load.requests,
                    f"{t.load.p50:.3f}",
                    f"{t.load.p99:.3f}",
                ),
                *(f"{t.load.mean:.3f}", f"{t.load.p50 - direct['plain', 1]:.3f}"),
                *(
                    u.get("counted_prompt_tokens", "?"),
                    u.get("dropped_messages", "?"),
                    u.get("history_tokens", "?"),
                ),
            ]
        )
    return table(header, "rrlrrrrrrrr", rows)


def baseline_table(bench: Bench, direct: dict[tuple[str, int], float]) -> list[str]:
    """This tree against the baseline, per route and mode at each concurrency: medians over the rounds,
    and the ratio (this tree / baseline)."""
    header = ["route", "mode", "c", "added p50 ms, baseline", "added p50 ms, this tree", "ratio"]
    header += ["rps, baseline", "rps, this tree", "ratio", "CPU µs/req, baseline", "this tree", "ratio"]
    header += ["others on CPU 1, baseline / this tree"]
    rows: list[list[object]] = []

    def keys_of(target: str) -> set[tuple[str, str, int]]:
        return {(r.route, r.mode, r.concurrency) for r in bench.rows if r.target == target}

    # Only what both measured: a baseline from before a route existed has no rows for it.
    for route, mode, c in sorted(keys_of("kubechat") & keys_of(BASELINE)):
        picked, others = {}, {}
        for target in (BASELINE, "kubechat"):
            of = [
                r
                for r in bench.rows
                if (r.target, r.route, r.mode, r.concurrency) == (target, route, mode, c)
            ]
            added = statistics.median(r.load.p50 - direct[(r.base, c)] for r in of)
            cpu = statistics.median(r.cpu_us_per_request or 0.0 for r in of)
            others[target] = statistics.median(r.others_on_test_cpu or 0.0 for r in of)
            picked[target] = (added, statistics.median(r.load.rps for r in of), cpu)
        (base_p50, base_rps, base_cpu), (p50, rps, cpu) = picked[BASELINE], picked["kubechat"]
        p50_ratio = f"{p50 / base_p50:.2f}" if base_p50 > 0 else "n/a"
        cells = [f"`{route}`", mode, c, f"{base_p50:.3f}", f"{p50:.3f}", p50_ratio]
        cells += [f"{base_rps:,.0f}", f"{rps:,.0f}", f"{rps / base_rps:.2f}"]
        cells += [f"{base_cpu:,.0f}", f"{cpu:,.0f}", f"{cpu / base_cpu:.2f}" if base_cpu else "n/a"]
        cells += [f"{others[BASELINE]:.0f}% / {others['kubechat']:.0f}%"]
        rows.append(cells)
    return table(header, "llrrrrrrrrrrr", rows)


def goals_table(bench: Bench, direct: dict[tuple[str, int], float]) -> list[str]:
    """This tree with every feature on against the bare pass-through of the same rounds, with the
    goals: at least ``GOAL_RPS_RATIO`` times its rps per core, added p50 under ``GOAL_ADDED_P50`` at c=1."""
    header = ["mode", "c", "rps, bare", "rps, every feature on", "ratio (goal >= 2)"]
    header += ["CPU µs/req, bare", "every feature on", "added p50 ms, every feature on", "goal", "met"]
    rows: list[list[object]] = []
    for mode in ("plain", "stream"):
        for c in bench.args.concurrency:
            picked = {}
            for target in (BARE, FEATURED):
                of = [r for r in bench.rows if (r.target, r.mode, r.concurrency) == (target, mode, c)]
                if not of:
                    break
                picked[target] = (
                    statistics.median(r.load.rps for r in of),
                    statistics.median(r.cpu_us_per_request or 0.0 for r in of),
                    statistics.median(r.load.p50 - direct[(r.base, c)] for r in of),
                )
            if len(picked) < 2:
                continue
            (bare_rps, bare_cpu, _), (rps, cpu, added) = picked[BARE], picked[FEATURED]
            ratio = rps / bare_rps
            goal = GOAL_ADDED_P50[mode] if c == 1 else None
            met = ratio >= GOAL_RPS_RATIO and (goal is None or added < goal)
            cells: list[object] = [mode, c, f"{bare_rps:,.0f}", f"{rps:,.0f}", f"{ratio:.2f}"]
            cells += [f"{bare_cpu:,.0f}", f"{cpu:,.0f}", f"{added:.3f}"]
            cells += ["n/a" if goal is None else f"< {goal} ms", "yes" if met else "NO"]
            rows.append(cells)
    return table(header, "lrrrrrrrrl", rows)


def report(bench: Bench, load_before: tuple[float, float, float], started: float) -> str:
    direct = {(r.mode, r.concurrency): r.load.p50 for r in bench.rows if r.target.startswith("direct")}
    out = ["", "## Side by side", "", *side_by_side(bench, direct)]
    if bench.args.baseline:
        out += [
            "",
            f"## This tree against the baseline ({bench.args.baseline}; "
            f"medians of {bench.args.rounds} rounds)",
        ]
        out += ["", *baseline_table(bench, direct)]
        out += ["", "## Every feature on (API key, limits in memory, metrics) against the bare pass-through"]
        out += ["", *goals_table(bench, direct)]
    title = (
        "## In the columns of the reference figures (added p50 at c=1; rps: the best over the concurrencies)"
    )
    out += ["", title, "", *reference_columns(bench, direct)]
    grown = [r for r in bench.rows if r.mode == "chat"]
    if grown:
        sizes = ", ".join(
            f"{(r.load.requests + r.load.warmup_requests) // r.concurrency} at c={r.concurrency}"
            for r in grown
        )
        out += [
            "",
            f"`/chat` rows: each worker grows its own session for the whole row; turns per session: {sizes}.",
        ]
    if bench.memory:
        header = ["process under test", "RSS when ready", "after its first requests", "at the end"]
        header += ["its first request"]
        rows = [
            [
                name,
                f"{fmt(m.ready)} MB",
                f"{fmt(m.primed)} MB",
                f"{fmt(m.end)} MB",
                f"{m.first_request_ms:.1f} ms",
            ]
            for name, m in bench.memory.items()
        ]
        out += ["", "## Memory (VmRSS)", "", *table(header, "lrrrr", rows)]
    if bench.turns:
        title = "## One more /chat turn on a session of 1, 100, 1,000 turns (c=1, 4,096-token window)"
        out += ["", title, "", *turn_table(bench, direct)]
    for label, summary in bench.profiles:
        out += ["", f"## Profile: {label} (py-spy, c=1)", "", summary]
    loads = [r.load for r in bench.rows] + [t.load for t in bench.turns]
    after = os.getloadavg()
    out += [
        "",
        f"Load average before: {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}; "
        f"after: {after[0]:.2f} {after[1]:.2f} {after[2]:.2f}. "
        f"Run took {time.monotonic() - started:.0f} s; {args_summary(bench.args)}.",
    ]
    disturbed = [r for r in bench.rows if (r.others_on_test_cpu or 0.0) > 10]
    if disturbed:
        names = "; ".join(f"{r.target} {r.route} {r.mode} c={r.concurrency}" for r in disturbed)
        out.append(f"DISTURBED: other processes took over 10% of CPU {TEST_CPU} during: {names}. Run again.")
    failed = [load for load in loads if load.errors]
    if failed:
        out.append(f"ERRORS in {len(failed)} runs; first: {failed[0].first_error}")
    return "\n".join(out)


def args_summary(args: argparse.Namespace) -> str:
    pin = f"pinned: load on CPU {LOAD_CPU}, under test on CPU {TEST_CPU}" if args.pin else "not pinned"
    return (
        f"warm-up {args.warmup:g} s + {args.seconds:g} s per row, concurrency "
        f"{','.join(map(str, args.concurrency))}, log level {args.log_level}, {pin}"
    )


def int_list(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per row (default 5)")
    parser.add_argument(
        "--warmup", type=float, default=1.0, help="warm-up seconds per row, not counted (default 1)"
    )
    parser.add_argument("--concurrency", type=int_list, default=[1, 8, 32], help="e.g. 1,8 (default 1,8,32)")
    parser.add_argument("--turn-sizes", type=int_list, default=[1, 100, 1000], help="session sizes in turns")
    parser.add_argument(
        "--turn-reps", type=int, default=100, help="turns measured per session size (default 100)"
    )
    parser.add_argument(
        "--grow-seconds", type=float, default=90.0, help="time bound of growing/measuring sessions"
    )
    parser.add_argument(
        "--log-level", default="info", help="of both Python servers (default info: access log on)"
    )
    parser.add_argument(
        "--profile", type=Path, help="also record py-spy profiles of kubechat into this folder"
    )
    parser.add_argument(
        "--tiktoken-from", type=Path, default=REPO.parent / "shared" / "tiktoken", help="encodings to seed"
    )
    parser.add_argument("--no-pin", dest="pin", action="store_false", help="do not use taskset")
    parser.add_argument(
        "--no-redis",
        dest="redis",
        action="store_false",
        help="skip the /chat rows with sessions in Redis (redis-server, on the load generator's CPU)",
    )
    parser.add_argument("--logs", type=Path, help="keep the servers' logs in this folder")
    parser.add_argument(
        "--baseline",
        type=Path,
        help="another tree's kubechat executable (e.g. ../main/.venv/bin/kubechat), or a tree with it in "
        ".venv/bin: compare it with this tree's, interleaved in one run, with the bare pass-through and "
        "this tree with every feature on in the same rounds, instead of the turn and Redis rows",
    )
    parser.add_argument(
        "--rounds", type=int, default=3, help="rounds of the --baseline comparison (default 3)"
    )
    parser.add_argument(
        "--image-allocator",
        action="store_true",
        help="run this tree's kubechat (not the baseline) on the chatbot image's allocator: the LD_PRELOAD "
        "and MALLOC_CONF of images/chatbot.Dockerfile (jemalloc)",
    )
    args = parser.parse_args(argv)
    if args.baseline is not None and args.baseline.is_dir():
        args.baseline = args.baseline / ".venv" / "bin" / "kubechat"
    if args.baseline is not None and not os.access(args.baseline, os.X_OK):
        parser.error(f"--baseline: no kubechat executable at {args.baseline} (see bench/README.md)")
    if args.pin and (shutil.which("taskset") is None or len(os.sched_getaffinity(0)) < 2):
        print("service_overhead: taskset or a second CPU is missing; running unpinned", file=sys.stderr)
        args.pin = False
    return args


@contextlib.contextmanager
def log_dir(keep: Path | None) -> Iterator[Path]:
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        yield keep
        return
    with tempfile.TemporaryDirectory(prefix="kubechat-bench-") as tmp:
        yield Path(tmp)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    load_before = os.getloadavg()
    print(
        f"load average {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}; {args_summary(args)}"
    )
    with log_dir(args.logs) as logs:
        bench = Bench(args, logs)
        try:
            bench.run()
        finally:
            bench.procs.stop_all()
        print(report(bench, load_before, started))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
