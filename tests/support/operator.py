"""The operator and kubectl as real processes against a test cluster, shared by the cluster tests."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import yaml

from localcluster.cluster import ClusterInfo
from tests.cluster.polling import eventually
from tests.support.servers import free_port

REPO = Path(__file__).resolve().parents[2]
CRDS = REPO / "crds"


def table_row(output: str) -> dict[str, str]:
    """The first row of a kubectl table by its header's column positions (an empty cell stays a column:
    splitting on blanks would shift every column after it)."""
    header, row = output.splitlines()[:2]
    starts = [m.start() for m in re.finditer(r"\S+", header)]
    names = header.split()
    ends = [*starts[1:], None]
    return {name: row[a:b].strip() for name, a, b in zip(names, starts, ends, strict=True)}


def kubectl(
    cluster: ClusterInfo, *args: str, stdin: str | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig)}
    done = subprocess.run(
        ["kubectl", *args], input=stdin, env=env, capture_output=True, text=True, timeout=60
    )
    if check and done.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)} failed: {done.stderr}")
    return done


class Operator:
    """``kubechat-operator`` as a real process on the test cluster's kubeconfig."""

    def __init__(self, cluster: ClusterInfo, log: Path, *args: str) -> None:
        self.cluster, self.log, self.args = cluster, log, args
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {
            **os.environ,
            "KUBECONFIG": str(self.cluster.kubeconfig),
            "KUBECHAT_BOT_IMAGE": "kubechat/chatbot:test",
        }
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "kubechat_operator.main",
                    "--liveness",
                    "none",
                    "--log-level",
                    "info",
                    *self.args,
                ],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@contextmanager
def metered_operator(cluster: ClusterInfo, log: Path, *args: str) -> Iterator[tuple[Operator, str]]:
    """The operator serving its own /metrics on a free loopback port: yields it and that URL, once up."""
    import httpx2

    port = free_port()
    op = Operator(cluster, log, *args, "--metrics-address", f"127.0.0.1:{port}")
    op.start()
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        eventually(
            lambda: httpx2.get(url, timeout=2).raise_for_status(), timeout=60, what="operator /metrics"
        )
        yield op, url
    finally:
        op.stop()


def install_crds(cluster: ClusterInfo, folder: Path = CRDS) -> None:
    """Apply every CRD in ``folder`` and wait until the API server serves ChatBots (Established comes a
    moment before the new kind can be listed)."""
    kubectl(cluster, "apply", "--server-side", "-f", str(folder))
    names = [
        f"crd/{n}" for n in ("chatbots.kubechat.dev", "clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev")
    ]
    kubectl(cluster, "wait", "--for=condition=Established", *names, "--timeout=60s")
    eventually(lambda: kubectl(cluster, "get", "chatbots", "-A"), timeout=30, what="ChatBots served")


def service_account_cluster(cluster: ClusterInfo, namespace: str, account: str, path: Path) -> ClusterInfo:
    """The cluster as a ServiceAccount sees it: a kubeconfig with a token of ``account`` (created here),
    the way the operator's pod authenticates, so RBAC applies to it."""
    kubectl(cluster, "-n", namespace, "create", "serviceaccount", account)
    token = kubectl(cluster, "-n", namespace, "create", "token", account, "--duration=1h").stdout.strip()
    config = yaml.safe_load(cluster.kubeconfig.read_text())
    config["users"] = [{"name": account, "user": {"token": token}}]
    for context in config["contexts"]:
        context["context"]["user"] = account
    path.write_text(json.dumps(config))
    return ClusterInfo(path, cluster.server)
