"""Operator benchmark: N bots applied at once on a fresh local control plane.

Measures, in one run: the time until every bot's Deployment exists and until every bot reports
Ready (pods simulated by kwok), the API writes the whole job cost per bot (from the API server's own
``apiserver_request_total``), the operator's peak RSS, and then how long one bot's prompt change
takes to reach its Deployment while the N exist. Run it pinned the way the reference was measured:

    taskset -c 0 .venv/bin/python bench/operator_scale.py --bots 200

(the control plane inherits CPU 0; the operator is started on CPU 1). Prints figures, asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, cast

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "operator")]

from kubernetes import client, config  # noqa: E402

from localcluster.cluster import LocalCluster  # noqa: E402

GROUP, VERSION, PLURAL = "kubechat.dev", "v1alpha1", "chatbots"
WRITE_VERBS = {"POST", "PUT", "PATCH", "APPLY", "DELETE"}
METRIC = re.compile(r"^apiserver_request_total\{(?P<labels>[^}]*)\} (?P<value>\d+)", re.M)


def writes(api: client.ApiClient) -> Counter[str]:
    """Write requests the API server has served so far, by resource (its own counter)."""
    text = api.call_api(*api.param_serialize("GET", "/metrics", auth_settings=["BearerToken"])[:2]).read()  # type: ignore[no-untyped-call]
    counts: Counter[str] = Counter()
    for match in METRIC.finditer(text.decode()):
        labels = dict(re.findall(r'(\w+)="([^"]*)"', match["labels"]))
        if labels.get("verb") in WRITE_VERBS:
            resource = labels.get("resource", "") + (
                "/" + labels["subresource"] if labels.get("subresource") else ""
            )
            counts[resource] += int(match["value"])
    return counts


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def bot(name: str, replicas: int) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ChatBot",
        "metadata": {"name": name},
        "spec": {
            "systemPrompt": f"You are bot {name}.",
            "replicas": replicas,
            "openAI": {"apiKeySecretRef": {"name": "openai"}},
        },
    }


def main() -> int:
    # `timeout` and Ctrl-C end the run through the finally below, which stops the operator and the cluster.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bots", type=int, default=200)
    parser.add_argument("--parallel", type=int, default=16)
    parser.add_argument(
        "--replicas", type=int, default=1, help="per bot; 0 leaves pods (kwok) out of the picture"
    )
    parser.add_argument("--changes", type=int, default=20)
    parser.add_argument("--timeout", type=float, default=300)
    parser.add_argument("--profile", help="record the operator with py-spy into this file (collapsed stacks)")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="kubechat-bench-"))
    print(f"work dir (operator log): {workdir}")
    cluster = LocalCluster(workdir, tie_to_parent=True, data_parent=workdir)
    info = cluster.start()
    operator = None
    try:
        api = config.new_client_from_config(config_file=str(info.kubeconfig))  # type: ignore[no-untyped-call]
        api.configuration.connection_pool_maxsize = args.parallel
        env = {**os.environ, "KUBECONFIG": str(info.kubeconfig)}
        subprocess.run(
            ["kubectl", "apply", "--server-side", "-f", str(REPO / "crds")],
            env=env,
            check=True,
            capture_output=True,
        )
        subprocess.run(
            ["kubectl", "wait", "--for=condition=Established", "crd/chatbots.kubechat.dev"],
            env=env,
            check=True,
            capture_output=True,
        )
        ns = "bench"
        core, apps, custom = client.CoreV1Api(api), client.AppsV1Api(api), client.CustomObjectsApi(api)
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
        core.create_namespaced_secret(
            ns,
            client.V1Secret(metadata=client.V1ObjectMeta(name="openai"), string_data={"apiKey": "sk-bench"}),
        )
        log = (workdir / "operator.log").open("wb")
        spy = (
            ["py-spy", "record", "--format", "raw", "--rate", "200", "-o", args.profile, "--"]
            if args.profile
            else []
        )
        operator = subprocess.Popen(
            [
                "taskset",
                "-c",
                "1",
                *spy,
                sys.executable,
                "-m",
                "kubechat_operator.main",
                "--liveness",
                "none",
                "--log-level",
                os.environ.get("BENCH_OPERATOR_LOG", "warning"),
            ],
            env={**env, "PYTHONPATH": str(REPO / "operator")},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        time.sleep(3)  # the operator is up and watching before the burst
        before = writes(api)
        cpu_before = cpu_seconds(operator.pid)
        apiserver = next(p.pid for p in cluster.processes if p.name == "kube-apiserver")
        api_cpu_before = cpu_seconds(apiserver)
        started = time.monotonic()
        with ThreadPoolExecutor(args.parallel) as pool:
            list(
                pool.map(
                    lambda i: custom.create_namespaced_custom_object(
                        GROUP, VERSION, ns, PLURAL, bot(f"bot-{i:03d}", args.replicas)
                    ),
                    range(args.bots),
                )
            )
        created = time.monotonic() - started
        deployments_at = ready_at = None
        deadline = started + args.timeout
        while time.monotonic() < deadline and ready_at is None:
            # lists served from the API server's watch cache, twice a second: the observer stays cheap
            if (
                deployments_at is None
                and len(apps.list_namespaced_deployment(ns, resource_version="0").items) >= args.bots
            ):
                deployments_at = time.monotonic() - started
            items = cast(
                dict[str, Any],
                custom.list_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, resource_version="0"),
            )["items"]
            ready = sum(
                any(
                    c["type"] == "Ready" and c["status"] == "True"
                    for c in (b.get("status") or {}).get("conditions", ())
                )
                for b in items
            )
            if ready >= args.bots:
                ready_at = time.monotonic() - started
            time.sleep(0.5)
        time.sleep(2)  # let trailing status writes land before counting
        spent = writes(api) - before
        cpu_burst = cpu_seconds(operator.pid) - cpu_before
        api_cpu = cpu_seconds(apiserver) - api_cpu_before

        latencies = []
        for i in range(args.changes):
            name = f"bot-{i % args.bots:03d}"
            old = apps.read_namespaced_deployment(name, ns).spec.template.metadata.annotations  # type: ignore[union-attr]
            t0 = time.monotonic()
            custom.patch_namespaced_custom_object(
                GROUP, VERSION, ns, PLURAL, name, {"spec": {"systemPrompt": f"Changed {i}."}}
            )
            while apps.read_namespaced_deployment(name, ns).spec.template.metadata.annotations == old:  # type: ignore[union-attr]
                if time.monotonic() - t0 > 30:
                    break
                time.sleep(0.002)
            latencies.append((time.monotonic() - t0) * 1000)
        rss = peak_rss_mib(operator.pid)

        print(
            f"## kubechat operator: {args.bots} bots of {args.replicas} replica(s), "
            f"{args.parallel} parallel creates"
        )
        print("| figure | value |\n|---|---|")
        print(f"| creates sent | {created:.2f} s |")
        print(
            f"| every Deployment exists | {deployments_at:.2f} s |"
            if deployments_at
            else "| Deployments | TIMEOUT |"
        )
        print(f"| every bot Ready | {ready_at:.2f} s |" if ready_at else "| Ready | TIMEOUT |")
        print(
            f"| one prompt change -> Deployment, p50 / max of {args.changes} | "
            f"{statistics.median(latencies):.0f} ms / {max(latencies):.0f} ms |"
        )
        print(f"| operator peak RSS | {rss:.0f} MiB |")
        print(f"| operator CPU during the burst | {cpu_burst:.1f} s |")
        print(f"| kube-apiserver CPU during the burst | {api_cpu:.1f} s |")
        total = sum(spent.values())
        print(f"| API writes per bot (all clients, controllers too) | {total / args.bots:.1f} |")
        for resource, count in spent.most_common():
            print(f"|   {resource} | {count / args.bots:.2f} |")
    finally:
        if operator is not None:
            operator.terminate()
            operator.wait(timeout=30)
        cluster.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
