"""A real Kubernetes control plane on loopback for tests and local runs: etcd, kube-apiserver,
kube-controller-manager, kube-scheduler and kwok (fake nodes whose pods become Running and Ready).

Standard library only, so it runs before anything is pip-installed. CLI:
    python3 tests/cluster/localcluster.py build | up | down | status | env | pin-k8s VERSION
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __name__ == "__main__" and not __package__:  # run as a script: make `tests.cluster` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.cluster import build, flags, kubeapi
from tests.cluster.components import (
    Process,
    free_ports,
    is_running,
    rss_kib,
    spawn,
    stop,
    wait_healthy,
)
from tests.cluster.flags import KWOK_NODE_ANNOTATION
from tests.cluster.pki import Pki, create_pki

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_DIR = REPO_ROOT / ".local-cluster"
STOP_TIMEOUT = 10.0


@dataclass
class ClusterInfo:
    """What a client needs: the kubeconfig (admin, verified against our CA) and the API server URL."""

    kubeconfig: Path
    server: str
    workdir: Path | None = None
    nodes: list[str] = field(default_factory=list)


def _fake_node(name: str) -> dict[str, Any]:
    """A Node that kwok adopts (by annotation) and keeps Ready; big enough that tests never run out."""
    resources = {"cpu": "32", "memory": "256Gi", "pods": "1000"}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {KWOK_NODE_ANNOTATION: "fake", "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {
                "type": "kwok",
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
            },
        },
        "spec": {},
        "status": {"capacity": resources, "allocatable": resources},
    }


def _kwok_binding() -> dict[str, Any]:
    """kwok patches node/pod status, renews leases and finishes pod deletion anywhere: cluster-admin."""
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": "kubechat:kwok"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "kubechat:kwok"}],
    }


def _is_ready(node: dict[str, Any]) -> bool:
    conditions = node.get("status", {}).get("conditions", [])
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


class LocalCluster:
    """Starts and stops one control plane whose files live in `workdir` (certs, kubeconfigs, logs, state).

    etcd's data goes to a fresh temp dir (under `data_parent` if given) that stop() removes. With
    tie_to_parent the kernel also kills the components if this process dies without cleaning up (used by
    pytest; not by the `up` CLI, which exits and leaves the cluster running).
    """

    def __init__(
        self,
        workdir: Path,
        nodes: int = 2,
        tie_to_parent: bool = False,
        timeout: float = 120.0,
        data_parent: Path | None = None,
    ) -> None:
        self.workdir = workdir.resolve()
        self.node_names = [f"kwok-node-{i}" for i in range(nodes)]
        self.tie_to_parent = tie_to_parent
        self.data_parent = data_parent
        self.timeout = timeout
        self.processes: list[Process] = []
        self.data_dir: Path | None = None
        self.server = ""
        self.kubeconfig = self.workdir / "kubeconfig"
        self.state_file = self.workdir / "state.json"
        self.log_dir = self.workdir / "logs"

    # ---- lifecycle -------------------------------------------------------------------------------------
    def start(self) -> ClusterInfo:
        """Build missing binaries, then bring every component up in dependency order; all or nothing."""
        binaries = build.ensure_built(build.CONTROL_PLANE)
        stages = build.ensure_kwok_stages()
        try:
            self._start(binaries, stages)
        except BaseException:
            self.stop()
            raise
        return ClusterInfo(self.kubeconfig, self.server, self.workdir, list(self.node_names))

    def _start(self, binaries: dict[str, Path], stages: Path) -> None:
        started = time.monotonic()
        shutil.rmtree(self.log_dir, ignore_errors=True)
        shutil.rmtree(self.workdir / "pki", ignore_errors=True)
        self.data_dir = Path(tempfile.mkdtemp(prefix="kubechat-etcd-", dir=self.data_parent))
        pki = create_pki(self.workdir / "pki")
        ports = flags.Ports(*free_ports(5))
        self.server = f"https://127.0.0.1:{ports.apiserver}"
        layout = flags.Layout(binaries, pki, ports, self.data_dir, self._write_kubeconfigs(pki), stages)
        admin = kubeapi.tls_context(pki.ca_cert, pki.cert("admin"), pki.key("admin"))
        verify = kubeapi.tls_context(pki.ca_cert)

        etcd = self._spawn("etcd", flags.etcd(layout))
        self._wait(etcd, lambda: kubeapi.request(f"http://127.0.0.1:{ports.etcd}/health")["health"] == "true")
        api = self._spawn("kube-apiserver", flags.kube_apiserver(layout))
        self._wait(api, lambda: kubeapi.request(f"{self.server}/readyz", admin) == "ok", "ready")
        self._bootstrap(admin)

        cm = self._spawn("kube-controller-manager", flags.kube_controller_manager(layout))
        sched = self._spawn("kube-scheduler", flags.kube_scheduler(layout))
        kwok = self._spawn("kwok", flags.kwok(layout))
        self._wait(cm, lambda: self._healthz(ports.controller_manager, verify))
        self._wait(sched, lambda: self._healthz(ports.scheduler, verify))
        self._wait(kwok, lambda: self._nodes_ready(admin), "making its nodes Ready")
        # The serviceaccount controller's first act: proves controllers run with working credentials.
        default_sa = f"{self.server}/api/v1/namespaces/default/serviceaccounts/default"
        self._wait(cm, lambda: bool(kubeapi.request(default_sa, admin)), "creating service accounts")
        self._log(f"control plane ready at {self.server} in {time.monotonic() - started:.1f} s")

    def _bootstrap(self, admin: ssl.SSLContext) -> None:
        """Objects that must exist before the clients start: kwok's RBAC and the fake nodes."""
        bindings = "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings"
        kubeapi.create(self.server, admin, bindings, _kwok_binding())
        for name in self.node_names:
            kubeapi.create(self.server, admin, "/api/v1/nodes", _fake_node(name))

    def stop(self) -> None:
        """Stop clients, then the API server, then etcd (SIGTERM, SIGKILL after a timeout); idempotent."""
        tiers = [["kwok", "kube-scheduler", "kube-controller-manager"], ["kube-apiserver"], ["etcd"]]
        rest = [p for p in self.processes if not any(p.name in tier for tier in tiers)]
        for group in [rest, *([p for p in self.processes if p.name in tier] for tier in tiers)]:
            if group:
                stop(group, STOP_TIMEOUT)
        self.processes = []
        if self.data_dir is not None:
            shutil.rmtree(self.data_dir, ignore_errors=True)
            self.data_dir = None
        for leftover in (self.state_file, self.kubeconfig):
            leftover.unlink(missing_ok=True)
        shutil.rmtree(self.workdir / "pki", ignore_errors=True)

    def __enter__(self) -> ClusterInfo:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- state (so `down` in another process can stop what `up` started) --------------------------------
    def save_state(self) -> None:
        state = {
            "server": self.server,
            "kubeconfig": str(self.kubeconfig),
            "data_dir": str(self.data_dir) if self.data_dir else None,
            "processes": [
                {"name": p.name, "pid": p.pid, "argv": p.argv, "log": str(p.log)} for p in self.processes
            ],
        }
        self.workdir.mkdir(parents=True, exist_ok=True)
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2) + "\n")
        tmp.rename(self.state_file)

    @classmethod
    def from_state(cls, workdir: Path) -> LocalCluster | None:
        cluster = cls(workdir)
        if not cluster.state_file.exists():
            return None
        state = json.loads(cluster.state_file.read_text())
        cluster.server = state["server"]
        cluster.data_dir = Path(state["data_dir"]) if state.get("data_dir") else None
        cluster.processes = [
            Process(p["name"], p["pid"], p["argv"], Path(p["log"])) for p in state["processes"]
        ]
        return cluster

    # ---- helpers ----------------------------------------------------------------------------------------
    def _log(self, message: str) -> None:
        print(f"[localcluster] {message}", file=sys.stderr, flush=True)

    def _spawn(self, name: str, argv: list[str]) -> Process:
        env = dict(os.environ)
        env["HOME"] = str(self.workdir / "home")  # keep ~/.kwok and friends of the developer out of it
        process = spawn(name, argv, self.log_dir, env, self.tie_to_parent)
        self.processes.append(process)
        self.save_state()
        return process

    def _wait(self, process: Process, check: Callable[[], bool], what: str = "healthy") -> None:
        waited = wait_healthy(process, check, self.timeout, what)
        self._log(f"{process.name} (pid {process.pid}) {what} after {waited:.1f} s")

    def _healthz(self, port: int, context: ssl.SSLContext) -> bool:
        return bool(kubeapi.request(f"https://127.0.0.1:{port}/healthz", context) == "ok")

    def _nodes_ready(self, context: ssl.SSLContext) -> bool:
        nodes = kubeapi.request(f"{self.server}/api/v1/nodes", context)["items"]
        ready = {n["metadata"]["name"] for n in nodes if _is_ready(n)}
        return set(self.node_names) <= ready

    def _write_kubeconfigs(self, pki: Pki) -> dict[str, Path]:
        kubeapi.write_kubeconfig(
            self.kubeconfig, self.server, pki.ca_cert, pki.cert("admin"), pki.key("admin"), "admin"
        )
        paths = {}
        for name in ("controller-manager", "scheduler", "kwok"):
            paths[name] = pki.directory / f"{name}.kubeconfig"
            kubeapi.write_kubeconfig(
                paths[name], self.server, pki.ca_cert, pki.cert(name), pki.key(name), name
            )
        return paths


# ---- CLI --------------------------------------------------------------------------------------------------
def cluster_dir() -> Path:
    return Path(os.environ.get("KUBECHAT_CLUSTER_DIR", DEFAULT_DIR))


def cmd_build(args: argparse.Namespace) -> int:
    started = time.monotonic()
    names = args.components or list(build.COMPONENTS)
    for name in names:
        component = build.COMPONENTS[name]
        state = "cached" if component.binary.exists() and not args.force else "to build"
        print(f"{name:24} {component.version:10} {state:9} {component.binary}")
    build.ensure_built(names, force=args.force)
    print(f"binaries ready in {time.monotonic() - started:.1f} s")
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    workdir = cluster_dir()
    running = LocalCluster.from_state(workdir)
    if running is not None:
        if running.processes and all(is_running(p) for p in running.processes):
            print(f"already running at {running.server}; kubeconfig: {running.kubeconfig}")
            return 0
        print("cleaning up a previous cluster that is no longer complete", file=sys.stderr)
        running.stop()
    cluster = LocalCluster(workdir, nodes=args.nodes, timeout=args.timeout)
    try:
        info = cluster.start()
    except (RuntimeError, OSError, subprocess.CalledProcessError) as err:  # ComponentError is a RuntimeError
        print(f"cluster-up failed: {err}", file=sys.stderr)
        return 1
    print(f"API server: {info.server}\nkubeconfig: {info.kubeconfig}\nlogs:       {cluster.log_dir}")
    print(f"export KUBECONFIG={info.kubeconfig}")
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    cluster = LocalCluster.from_state(cluster_dir())
    if cluster is None:
        print("no local cluster state: nothing to stop")
        return 0
    names = ", ".join(f"{p.name}={p.pid}" for p in cluster.processes)
    cluster.stop()
    print(f"stopped {names}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    cluster = LocalCluster.from_state(cluster_dir())
    if cluster is None:
        print("not running")
        return 1
    healthy = True
    print(f"API server: {cluster.server}\nkubeconfig: {cluster.kubeconfig}")
    for p in cluster.processes:
        alive = is_running(p)
        healthy &= alive
        rss = rss_kib(p.pid) if alive else None
        memory = f"{rss / 1024:.0f} MiB RSS" if rss else ""
        print(f"{p.name:24} pid {p.pid:<8} {'running' if alive else 'STOPPED':8} {memory}")
    return 0 if healthy else 1


def cmd_env(args: argparse.Namespace) -> int:
    print(f"export KUBECONFIG={cluster_dir() / 'kubeconfig'}")
    return 0


def cmd_pin_k8s(args: argparse.Namespace) -> int:
    build.pin_kubernetes(args.version)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p_build = sub.add_parser("build", help="build missing binaries into the cache")
    p_build.add_argument("components", nargs="*", metavar="COMPONENT", help=", ".join(build.COMPONENTS))
    p_build.add_argument("--force", action="store_true", help="rebuild even if cached")
    p_build.set_defaults(func=cmd_build)
    p_up = sub.add_parser("up", help=f"start a cluster in {DEFAULT_DIR} (or $KUBECHAT_CLUSTER_DIR)")
    p_up.add_argument("--nodes", type=int, default=2, help="number of fake kwok nodes")
    p_up.add_argument(
        "--timeout", type=float, default=120.0, help="seconds each component may take to be healthy"
    )
    p_up.set_defaults(func=cmd_up)
    sub.add_parser("down", help="stop the cluster by PID and delete its data").set_defaults(func=cmd_down)
    sub.add_parser("status", help="show PIDs, liveness and memory").set_defaults(func=cmd_status)
    sub.add_parser("env", help="print the KUBECONFIG export line").set_defaults(func=cmd_env)
    p_pin = sub.add_parser("pin-k8s", help="re-pin k8s.io/kubernetes (rewrites tests/cluster/go.mod)")
    p_pin.add_argument("version", help="e.g. v1.36.4")
    p_pin.set_defaults(func=cmd_pin_k8s)
    args = parser.parse_args(argv)
    unknown = set(getattr(args, "components", [])) - set(build.COMPONENTS)
    if unknown:
        parser.error(f"unknown component(s): {', '.join(sorted(unknown))}")
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
