"""What ``status.usage`` costs the API server: N bots whose usage the operator collects, in one run.

    .venv/bin/python bench/usage_writes.py --bots 200 --interval 5 --rounds 4

A fresh local control plane (kwok's nodes; no kwok pods: the bots have ``replicas: 0``, and kwok's
made-up pod IPs must never be contacted). Each bot gets one stand-in pod (tests/support/stand_in.py)
whose process is one of ``--processes`` real ``kubechat serve`` on loopback, all on one fake upstream.
The operator runs with ``--usage-interval``. Counted by the API server itself (``apiserver_request_total``):

- the first round (every bot's usage written once: zeros),
- ``--rounds`` idle intervals (nothing served: the status is not written),
- ``--rounds`` busy intervals (every process serves a turn per interval, so every bot's usage grows).

Prints requests per round and per bot; asserts nothing. Everything it starts is stopped at the end.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import sys
import tempfile
import time
from collections import Counter
from contextlib import ExitStack
from pathlib import Path
from typing import Any, cast

REPO = Path(__file__).resolve().parents[1]
SHARED_TIKTOKEN = REPO.parent / "shared" / "tiktoken"
KUBECHAT = str(Path(sys.executable).with_name("kubechat"))  # this venv's CLI seeds the encodings
sys.path[:0] = [str(REPO), str(REPO / "operator"), str(REPO / "bench")]

import httpx2  # noqa: E402
from kubernetes import client, config  # noqa: E402
from service_overhead import seed_tiktoken  # noqa: E402

from localcluster.cluster import LocalCluster  # noqa: E402
from tests.support.bot_process import bot_environment, kubechat_serve  # noqa: E402
from tests.support.fake_openai import FakeOpenAI  # noqa: E402
from tests.support.operator import install_crds, metered_operator  # noqa: E402
from tests.support.servers import serving  # noqa: E402
from tests.support.stand_in import create_stand_in  # noqa: E402

GROUP, VERSION, PLURAL = "kubechat.dev", "v1alpha1", "chatbots"
METRIC = re.compile(r"^apiserver_request_total\{(?P<labels>[^}]*)\} (?P<value>\d+)", re.M)


def requests(api: client.ApiClient) -> Counter[str]:
    """Requests the API server has served so far, as "VERB resource[/subresource]" (its own counter)."""
    text = api.call_api(*api.param_serialize("GET", "/metrics", auth_settings=["BearerToken"])[:2]).read()  # type: ignore[no-untyped-call]
    counts: Counter[str] = Counter()
    for match in METRIC.finditer(text.decode()):
        labels = dict(re.findall(r'(\w+)="([^"]*)"', match["labels"]))
        sub = "/" + labels["subresource"] if labels.get("subresource") else ""
        counts[f"{labels.get('verb')} {labels.get('resource', '')}{sub}"] += int(match["value"])
    return counts


def operator_value(url: str, name: str) -> float:
    text = httpx2.get(url, timeout=10).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


def usage_writes(url: str) -> float:
    return operator_value(url, "kubechat_operator_usage_writes_total")


def wait_rounds(url: str, rounds: int, timeout: float) -> None:
    """Until the collector has finished ``rounds`` more rounds (its own counter)."""
    target = operator_value(url, "kubechat_operator_usage_rounds_total") + rounds
    deadline = time.monotonic() + timeout
    while operator_value(url, "kubechat_operator_usage_rounds_total") < target:
        if time.monotonic() > deadline:
            raise SystemExit(f"the collector did not finish {rounds} rounds in {timeout:.0f} s")
        time.sleep(0.2)


def settle(url: str, quiet: float = 5.0) -> None:
    """Until the operator's reconciles have not moved for ``quiet`` seconds and its queue is empty."""
    last, since = -1.0, time.monotonic()
    while True:
        now = operator_value(url, "kubechat_operator_reconciles_total")
        busy = operator_value(url, 'kubechat_operator_queue_depth{state="queued"}') + operator_value(
            url, 'kubechat_operator_queue_depth{state="processing"}'
        )
        if now != last or busy:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return
        time.sleep(0.5)


def show(title: str, before: Counter[str], after: Counter[str], rounds: int, bots: int) -> None:
    # what the operator's requests can be (the controller-manager's own writes are not of interest)
    ours = ("chatbots", "pods", "configmaps", "services", "deployments", "secrets")
    delta = {
        k: after[k] - before[k]
        for k in after
        if after[k] - before[k] and k.split(" ", 1)[1].split("/")[0] in ours and not k.startswith("PUT ")
    }
    print(f"\n{title} ({rounds} round(s))")
    for key, n in sorted(delta.items()):
        print(f"  {key:40} {n:6}  = {n / rounds:8.1f} per round, {n / rounds / bots:6.3f} per bot per round")


def main() -> int:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--bots", type=int, default=200)
    parser.add_argument(
        "--processes", type=int, default=4, help="real kubechat serve processes behind the pods"
    )
    parser.add_argument("--interval", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()

    # The bots' processes read encodings from a seeded cache: they must never download one.
    os.environ["TIKTOKEN_CACHE_DIR"] = str(seed_tiktoken(KUBECHAT, SHARED_TIKTOKEN))
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}; {vars(args)}")
    workdir = Path(tempfile.mkdtemp(prefix="kubechat-bench-usage-"))
    cluster = LocalCluster(workdir, tie_to_parent=True, data_parent=workdir)
    info = cluster.start()
    try:
        with ExitStack() as stack:
            fake = FakeOpenAI()
            fake.keep_requests = False
            upstream = stack.enter_context(serving(fake.app))
            fake.url = upstream.url + "/v1"
            env = bot_environment(fake)
            procs = [stack.enter_context(kubechat_serve(env, timeout=120)) for _ in range(args.processes)]

            api = config.new_client_from_config(config_file=str(info.kubeconfig))  # type: ignore[no-untyped-call]
            install_crds(info)
            ns = "bench"
            core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
            core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
            core.create_namespaced_secret(
                ns,
                client.V1Secret(
                    metadata=client.V1ObjectMeta(name="openai"), string_data={"apiKey": "sk-bench"}
                ),
            )
            for i in range(args.bots):
                name = f"bot-{i:04d}"
                body: dict[str, Any] = {
                    "apiVersion": f"{GROUP}/{VERSION}",
                    "kind": "ChatBot",
                    "metadata": {"name": name},
                    "spec": {
                        "systemPrompt": "You are counted.",
                        "replicas": 0,
                        "openAI": {"apiKeySecretRef": {"name": "openai"}},
                    },
                }
                uid = cast(
                    dict[str, Any], custom.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, body)
                )["metadata"]["uid"]
                port = int(procs[i % len(procs)].url.rsplit(":", 1)[1])
                create_stand_in(core, ns, f"{name}-pod", name, uid, port)

            log = workdir / "operator.log"
            args_ = ("--usage-interval", str(args.interval))
            operator, url = stack.enter_context(metered_operator(info, log, *args_))
            deadline = time.monotonic() + 300
            while True:
                items = cast(
                    dict[str, Any], custom.list_namespaced_custom_object(GROUP, VERSION, ns, PLURAL)
                )["items"]
                if sum(1 for b in items if (b.get("status") or {}).get("usage")) == args.bots:
                    break
                if time.monotonic() > deadline or (operator.proc and operator.proc.poll() is not None):
                    raise SystemExit(f"not every bot got status.usage; see {workdir / 'operator.log'}")
                time.sleep(1)
            settle(url)  # the reconciles of the N bots are done: what follows is the collector's alone
            wait_rounds(url, 1, 10 * args.interval)  # the first round's writes are behind us
            print(f"every bot has status.usage; operator log {workdir / 'operator.log'}")

            before, writes = requests(api), usage_writes(url)
            wait_rounds(url, args.rounds, (args.rounds + 2) * args.interval * 4)
            show("idle: nothing served", before, requests(api), args.rounds, args.bots)
            print(f"  usage writes, the collector's own count: {usage_writes(url) - writes:.0f}")

            before, writes = requests(api), usage_writes(url)
            target = operator_value(url, "kubechat_operator_usage_rounds_total") + args.rounds
            while operator_value(url, "kubechat_operator_usage_rounds_total") < target:
                for proc in procs:  # every pod's counters grow in every interval
                    httpx2.post(
                        f"{proc.url}/chat", json={"message": "count me"}, timeout=30
                    ).raise_for_status()
                time.sleep(args.interval / 5)
            show(
                "busy: every bot's pod served in every interval",
                before,
                requests(api),
                args.rounds,
                args.bots,
            )
            print(f"  usage writes, the collector's own count: {usage_writes(url) - writes:.0f}")
            scrapes = operator_value(url, 'kubechat_operator_usage_scrapes_total{result="failed"}')
            print(f"\nfailed pod reads over the run: {scrapes:.0f}")
    finally:
        cluster.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
