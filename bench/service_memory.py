"""What a chat service's memory is made of, part by part, and what a real ``kubechat serve`` holds.

    .venv/bin/python bench/service_memory.py [--rounds 3] [--baseline OTHER/.venv/bin/kubechat]

1. **Parts.** A fresh interpreter imports what ``kubechat serve`` imports, in the order it does, and
   reads its VmRSS from /proc after each step: a step's figure is what it adds to the steps before it
   (what two parts share is counted with the first). Then the bot's tokenizer (o200k_base, as for
   gpt-4o-mini) is loaded the way ``tokens.get_encoding`` does: tiktoken's Python dict of ranks, the Rust
   tables built from it, then the dict dropped and the freed pages handed back. Last, what a default
   bot does not load (Redis, the Azure SDKs: imported only when configured), for the record.
2. **Processes.** A real ``kubechat serve`` (this tree's and ``--baseline``'s, interleaved, each round
   in fresh processes; this tree's also with the allocator its image gives it, jemalloc: the
   ``LD_PRELOAD`` and ``MALLOC_CONF`` of images/chatbot.Dockerfile) against ``bench/upstream`` (the
   zero-latency Go upstream of service_overhead.py): VmRSS, RssAnon and RssFile 2 s after ``/readyz``
   answers, and again after 60 requests (plain and streamed ``/v1/chat/completions``, ``/chat``).
   Memory does not depend on the machine's load the way timings do, so these are absolute figures;
   medians over the rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
DOCKERFILE = BENCH.parent / "images" / "chatbot.Dockerfile"
sys.path.insert(0, str(BENCH))  # the sibling scripts are not a package
from memory_parts import FIELDS, MODEL, status  # noqa: E402


def parts(python: str, env: dict[str, str]) -> list[list[str]]:
    out = subprocess.run(
        [python, str(BENCH / "memory_parts.py")], env=env, check=True, capture_output=True, text=True
    ).stdout
    steps = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    rows, previous = [], steps[0]
    for step in steps:
        added = step["VmRSS"] - previous["VmRSS"] if step is not steps[0] else step["VmRSS"]
        rows.append([step["label"], f"{added:+.1f}", f"{step['VmRSS']:.1f}", f"{step['RssAnon']:.1f}"])
        previous = step
    return rows


# -- 2. real processes ---------------------------------------------------------------------


def image_allocator() -> dict[str, str]:
    """``LD_PRELOAD`` and ``MALLOC_CONF`` as the chatbot image's ENV sets them."""
    text = DOCKERFILE.read_text()
    found = {name: re.search(rf"\b{name}=(\S+)", text) for name in ("LD_PRELOAD", "MALLOC_CONF")}
    return {name: match[1] for name, match in found.items() if match}


def post(url: str, body: dict[str, Any]) -> None:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"content-type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        response.read()


def requests(base: str) -> None:
    """60 requests: plain and streamed ``/v1/chat/completions`` and a growing ``/chat`` session."""
    messages = [{"role": "user", "content": "Hello! How are you today?"}]
    session: str | None = None
    for _ in range(20):
        post(base + "/v1/chat/completions", {"model": MODEL, "messages": messages})
        post(base + "/v1/chat/completions", {"model": MODEL, "messages": messages, "stream": True})
        body: dict[str, Any] = {"message": "What can you tell me about Kubernetes operators?"}
        if session:
            body["session_id"] = session
        request = urllib.request.Request(
            base + "/chat", data=json.dumps(body).encode(), headers={"content-type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            session = json.loads(response.read())["session_id"]


def measure_process(
    procs: Any, executable: str, env: dict[str, str], logs: Path, label: str
) -> dict[str, dict[str, float]]:
    from service_overhead import free_port, wait_ready

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = logs / f"{label}.log"
    argv = [executable, "serve", "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    proc = procs.start(argv, log, env)
    try:
        wait_ready(base + "/readyz", proc, log)
        time.sleep(2)
        ready = status(proc.pid)
        requests(base)
        time.sleep(1)
        return {"ready": ready, "after": status(proc.pid)}
    finally:
        procs.stop(proc)


def main(argv: Sequence[str] | None = None) -> int:
    sys.path.insert(0, str(BENCH))
    # service_overhead is a sibling script, not a package.
    from service_overhead import Processes, bench_env, build, seed_tiktoken

    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="fresh processes per tree (default 3)")
    parser.add_argument("--baseline", type=Path, help="another tree's kubechat executable, measured alike")
    parser.add_argument(
        "--tiktoken-from",
        type=Path,
        default=BENCH.parent.parent / "shared" / "tiktoken",
        help="encodings to seed",
    )
    args = parser.parse_args(argv)
    kubechat = str(Path(sys.executable).parent / "kubechat")
    procs = Processes()
    cache = Path(os.environ.get("KUBECHAT_CACHE", Path.home() / ".cache" / "kubechat")) / "bench"
    with tempfile.TemporaryDirectory(prefix="kubechat-memory-") as tmp:
        logs = Path(tmp)
        tiktoken_dir = seed_tiktoken(kubechat, args.tiktoken_from)
        upstream_log = logs / "upstream.log"
        upstream = procs.start([str(build("upstream", cache)), "-addr", "127.0.0.1:0"], upstream_log)
        try:
            while "listening on " not in (upstream_log.read_text() if upstream_log.exists() else ""):
                if upstream.poll() is not None:
                    raise RuntimeError(f"the upstream did not start; see {upstream_log}")
                time.sleep(0.05)
            address = upstream_log.read_text().split("listening on ", 1)[1].split()[0]
            env = bench_env(f"http://{address}/v1", tiktoken_dir)
            out = ["## What each part adds (VmRSS, MiB; one interpreter, in import order)", ""]
            header = ["step", "adds", "VmRSS", "RssAnon"]
            out += table(header, parts(sys.executable, env))
            allocator = image_allocator()
            trees = [
                ("this tree", kubechat, env),
                ("this tree, image allocator", kubechat, {**env, **allocator}),
            ]
            if args.baseline:
                trees.insert(0, ("baseline", str(args.baseline), env))
            results: dict[str, list[dict[str, dict[str, float]]]] = {name: [] for name, _, _ in trees}
            for round_ in range(1, args.rounds + 1):
                for name, executable, tree_env in trees:
                    label = f"{name}-{round_}".replace(" ", "_").replace(",", "")
                    results[name].append(measure_process(procs, executable, tree_env, logs, label))
                    print(f"  {name} #{round_}: {results[name][-1]}", file=sys.stderr, flush=True)
        finally:
            procs.stop_all()
    out += ["", f"## kubechat serve, model {MODEL} (MiB, median of {args.rounds} fresh processes)", ""]
    header = ["process", *(f"{f} ready" for f in FIELDS), *(f"{f} after 60 requests" for f in FIELDS)]
    rows = []
    for name, executable, tree_env in trees:
        extra = " ".join(f"{k}={v}" for k, v in allocator.items()) if tree_env is not env else ""
        cells = [f"{name} ({executable}{' ' + extra if extra else ''})"]
        for phase in ("ready", "after"):
            cells += [f"{statistics.median(r[phase][f] for r in results[name]):.1f}" for f in FIELDS]
        rows.append(cells)
    out += table(header, rows)
    print("\n".join(out))
    return 0


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]


if __name__ == "__main__":
    raise SystemExit(main())
