"""A real Kubernetes control plane on loopback for tests and local runs: etcd, kube-apiserver,
kube-controller-manager, kube-scheduler and either kwok (fake nodes whose pods become Running and Ready, the
fast path) or one real node (containerd, kubelet, kube-proxy: pods really run), which puts the whole cluster
inside a network + mount namespace of its own (node.py). The command line is cli.py.
"""

from __future__ import annotations

import json
import os
import shutil
import ssl
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from localcluster import build, flags, kubeapi, node
from localcluster.components import (
    Process,
    free_ports,
    is_running,
    spawn,
    stop,
    wait_healthy,
)
from localcluster.flags import KWOK_NODE_ANNOTATION
from localcluster.pki import CertSpec, Pki, create_pki

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DIR = REPO_ROOT / ".local-cluster"
STOP_TIMEOUT = 10.0
REAL_NODE_CERTS = (
    CertSpec(
        "kubelet",
        f"system:node:{node.NODE_NAME}",
        groups=("system:nodes",),
        sans=(f"IP:{node.NODE_IP}", f"DNS:{node.NODE_NAME}"),
        server=True,
    ),
    CertSpec("kube-proxy", "system:kube-proxy"),  # bound to system:node-proxier by the default RBAC
    # The API server's identity towards the kubelet (logs, exec, port-forward).
    CertSpec("apiserver-kubelet-client", "kube-apiserver-kubelet-client", groups=("system:masters",)),
)


@dataclass
class ClusterInfo:
    """What a client needs: the kubeconfig (admin, verified against our CA) and the API server URL."""

    kubeconfig: Path
    server: str
    workdir: Path | None = None
    nodes: list[str] = field(default_factory=list)
    holder_pid: int | None = None  # real node: the process owning the cluster's network + mount namespace


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

    With real_node, the calling thread moves into the cluster's network namespace during start() (to check
    each component's health on the namespace's loopback); with stay_in_namespace it stays there (so it can
    reach the API server and pods) until stop(), else it moves back at the end of start() and reaches
    them through relays (relay.py).
    """

    def __init__(
        self,
        workdir: Path,
        nodes: int = 2,
        tie_to_parent: bool = False,
        timeout: float = 120.0,
        data_parent: Path | None = None,
        real_node: bool = False,
        images: Sequence[Path] | None = None,
        stay_in_namespace: bool = True,
    ) -> None:
        self.workdir = workdir.resolve()
        self.stay_in_namespace = stay_in_namespace
        self.real_node = real_node
        self.images = images  # real node: OCI archives to import; None: node_images()
        self.node_names = [node.NODE_NAME] if real_node else [f"kwok-node-{i}" for i in range(nodes)]
        self.tie_to_parent = tie_to_parent
        self.data_parent = data_parent
        self.timeout = timeout
        self.processes: list[Process] = []
        self.data_dir: Path | None = None
        self.server = ""
        self.kubeconfig = self.workdir / "kubeconfig"
        self.state_file = self.workdir / "state.json"
        self.log_dir = self.workdir / "logs"
        self.holder: Process | None = None
        self.node_layout: node.NodeLayout | None = None
        self._host_netns: int | None = None

    # ---- lifecycle -------------------------------------------------------------------------------------
    def start(self) -> ClusterInfo:
        """Build missing binaries, then bring every component up in dependency order; all or nothing."""
        binaries, stages, images = prepare(self.real_node, self.images)
        try:
            self._start(binaries, stages, images)
        except BaseException:
            self.stop()
            raise
        if not self.stay_in_namespace:
            self._leave_network()
        return self.info()

    def info(self) -> ClusterInfo:
        holder = self.holder.pid if self.holder else None
        return ClusterInfo(self.kubeconfig, self.server, self.workdir, list(self.node_names), holder)

    def _start(self, binaries: dict[str, Path], stages: Path, images: list[Path]) -> None:
        started = time.monotonic()
        shutil.rmtree(self.log_dir, ignore_errors=True)
        shutil.rmtree(self.workdir / "pki", ignore_errors=True)
        self.data_dir = Path(tempfile.mkdtemp(prefix="kubechat-etcd-", dir=self.data_parent))
        if self.real_node:
            self._start_namespace()
        pki = create_pki(self.workdir / "pki", REAL_NODE_CERTS if self.real_node else ())
        ports = flags.Ports(*free_ports(5))
        self.server = f"https://127.0.0.1:{ports.apiserver}"
        layout = flags.Layout(
            binaries, pki, ports, self.data_dir, self._write_kubeconfigs(pki), stages, self.real_node
        )
        admin = kubeapi.tls_context(pki.ca_cert, pki.cert("admin"), pki.key("admin"))
        verify = kubeapi.tls_context(pki.ca_cert)

        etcd = self._spawn("etcd", flags.etcd(layout))
        self._wait(etcd, lambda: kubeapi.request(f"http://127.0.0.1:{ports.etcd}/health")["health"] == "true")
        api = self._spawn("kube-apiserver", flags.kube_apiserver(layout))
        self._wait(api, lambda: kubeapi.request(f"{self.server}/readyz", admin) == "ok", "ready")
        self._bootstrap(admin)

        cm = self._spawn("kube-controller-manager", flags.kube_controller_manager(layout))
        sched = self._spawn("kube-scheduler", flags.kube_scheduler(layout))
        if self.real_node:
            self._start_node(binaries, pki, images, admin)
        else:
            kwok = self._spawn("kwok", flags.kwok(layout))
        self._wait(cm, lambda: self._healthz(ports.controller_manager, verify))
        self._wait(sched, lambda: self._healthz(ports.scheduler, verify))
        if not self.real_node:
            self._wait(kwok, lambda: self._nodes_ready(admin), "making its nodes Ready")
        # The serviceaccount controller's first act: proves controllers run with working credentials.
        default_sa = f"{self.server}/api/v1/namespaces/default/serviceaccounts/default"
        self._wait(cm, lambda: bool(kubeapi.request(default_sa, admin)), "creating service accounts")
        self._log(f"control plane ready at {self.server} in {time.monotonic() - started:.1f} s")

    def _start_namespace(self) -> None:
        """The holder of the cluster's namespaces, set up, with this thread inside its network."""
        for stale in node.reap_stale_nodes():
            self._log(f"removed what a killed run left in cgroup {stale}")
        self.holder = spawn(
            "netns-holder", node.HOLDER_ARGV, self.log_dir, None, self.tie_to_parent, node.HOLDER_WRAPPER
        )
        self.node_layout = node.NodeLayout.for_holder(self.holder.pid)
        self.save_state()
        node.wait_for_namespace(self.holder.pid)
        node.write_scratch(self.node_layout)
        node.setup_namespace(self.holder.pid, self.node_layout, flags.SERVICE_CIDR)
        self._host_netns = node.switch_network(f"/proc/{self.holder.pid}/ns/net")

    def _start_node(
        self, binaries: dict[str, Path], pki: Pki, images: list[Path], admin: ssl.SSLContext
    ) -> None:
        """containerd (with our images imported), then the kubelet and kube-proxy; until the node is Ready."""
        assert self.holder is not None and self.node_layout is not None
        layout = self.node_layout
        kubelet_kc, proxy_kc = pki.directory / "kubelet.kubeconfig", pki.directory / "kube-proxy.kubeconfig"
        kubeapi.write_kubeconfig(
            kubelet_kc, self.server, pki.ca_cert, pki.cert("kubelet"), pki.key("kubelet"), "kubelet"
        )
        kubeapi.write_kubeconfig(
            proxy_kc, self.server, pki.ca_cert, pki.cert("kube-proxy"), pki.key("kube-proxy"), "kube-proxy"
        )
        node.create_cgroups(layout.cgroup_root)
        node.write_configs(
            layout, pki.ca_cert, pki.cert("kubelet"), pki.key("kubelet"), proxy_kc, free_ports(3)
        )
        containerd = self._spawn("containerd", node.containerd_argv(layout))
        self._wait(containerd, lambda: bool(node.ctr(self.holder_pid, layout, "version")), "serving")
        imported = time.monotonic()
        for archive in images:
            node.import_image(self.holder_pid, layout, archive)
        self._log(f"imported {len(images)} images in {time.monotonic() - imported:.1f} s")
        kubelet = self._spawn("kubelet", node.kubelet_argv(binaries["kubelet"], layout, kubelet_kc))
        proxy = self._spawn("kube-proxy", node.kube_proxy_argv(binaries["kube-proxy"], layout))
        self._wait(kubelet, lambda: self._nodes_ready(admin), "making its node Ready")
        proxy_health = f"http://127.0.0.1:{node.kube_proxy_healthz_port(layout)}/healthz"
        self._wait(proxy, lambda: bool(kubeapi.request(proxy_health)), "healthy")

    @property
    def holder_pid(self) -> int:
        assert self.holder is not None
        return self.holder.pid

    def _bootstrap(self, admin: ssl.SSLContext) -> None:
        """Objects that must exist before the clients start: kwok's RBAC and the fake nodes."""
        if self.real_node:
            return  # the kubelet registers its own Node
        bindings = "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings"
        kubeapi.create(self.server, admin, bindings, _kwok_binding())
        for name in self.node_names:
            kubeapi.create(self.server, admin, "/api/v1/nodes", _fake_node(name))

    def stop(self) -> None:
        """Stop the node (kubelet, kube-proxy, pods, containerd, shims), then the clients, the API server and
        etcd (SIGTERM, SIGKILL after a timeout), then the namespace and the node's cgroups; idempotent."""
        self._stop_node()
        tiers = [["kwok", "kube-scheduler", "kube-controller-manager"], ["kube-apiserver"], ["etcd"]]
        rest = [p for p in self.processes if not any(p.name in tier for tier in tiers)]
        for group in [rest, *([p for p in self.processes if p.name in tier] for tier in tiers)]:
            if group:
                stop(group, STOP_TIMEOUT)
        self.processes = []
        self._stop_namespace()
        if self.data_dir is not None:
            shutil.rmtree(self.data_dir, ignore_errors=True)
            self.data_dir = None
        for leftover in (self.state_file, self.kubeconfig):
            leftover.unlink(missing_ok=True)
        shutil.rmtree(self.workdir / "pki", ignore_errors=True)

    def _stop_node(self) -> None:
        """The kubelet and kube-proxy first (nothing restarts pods then), then what runs in the node's cgroups
        (the pods and containerd's shims), then containerd. Anything else left in the namespace goes with it
        in _stop_namespace."""
        agents = [p for p in self.processes if p.name in ("kubelet", "kube-proxy")]
        stop(agents, STOP_TIMEOUT)
        if self.node_layout is not None:
            node.kill_all(node.cgroup_members(self.node_layout.cgroup_root))
        stop([p for p in self.processes if p.name == "containerd"], STOP_TIMEOUT)
        self.processes = [p for p in self.processes if p.name not in ("kubelet", "kube-proxy", "containerd")]

    def _leave_network(self) -> None:
        """This thread back in the network namespace it was in before start()."""
        if self._host_netns is not None:
            node.switch_network(self._host_netns)
            os.close(self._host_netns)
            self._host_netns = None

    @property
    def netns(self) -> str | None:
        """The cluster's network namespace (a real node's), for relays and sockets made in there."""
        return f"/proc/{self.holder.pid}/ns/net" if self.holder is not None else None

    def _stop_namespace(self) -> None:
        self._leave_network()
        if self.holder is not None:
            node.kill_all(node.namespace_members(self.holder.pid))  # anything a test left running in it
            stop([self.holder], STOP_TIMEOUT)
            self.holder = None
        if self.node_layout is not None:
            left = node.remove_cgroups(self.node_layout.cgroup_root)
            if left:
                self._log(f"could not remove cgroups: {', '.join(map(str, left))}")
            shutil.rmtree(self.node_layout.scratch, ignore_errors=True)
            self.node_layout = None

    def is_complete(self) -> bool:
        """Every recorded process (and a real node's namespace holder) still runs."""
        holder = [self.holder] if self.holder is not None else []
        return bool(self.processes) and all(is_running(p) for p in [*self.processes, *holder])

    def __enter__(self) -> ClusterInfo:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- state (so `down` in another process can stop what `up` started) --------------------------------
    def save_state(self) -> None:
        layout = self.node_layout
        state = {
            "server": self.server,
            "real_node": self.real_node,
            "holder": _process_state(self.holder) if self.holder else None,
            "node": {"scratch": str(layout.scratch), "cgroup_root": layout.cgroup_root} if layout else None,
            "kubeconfig": str(self.kubeconfig),
            "data_dir": str(self.data_dir) if self.data_dir else None,
            "processes": [_process_state(p) for p in self.processes],
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
        cluster.processes = [_process_from_state(p) for p in state["processes"]]
        cluster.real_node = bool(state.get("real_node"))
        if cluster.real_node:
            cluster.node_names = [node.NODE_NAME]
        if state.get("holder"):
            cluster.holder = _process_from_state(state["holder"])
        if state.get("node"):
            cluster.node_layout = node.NodeLayout(
                Path(state["node"]["scratch"]), state["node"]["cgroup_root"]
            )
        return cluster

    # ---- helpers ----------------------------------------------------------------------------------------
    def _log(self, message: str) -> None:
        print(f"[localcluster] {message}", file=sys.stderr, flush=True)

    def _spawn(self, name: str, argv: list[str]) -> Process:
        env = dict(os.environ)
        env["HOME"] = str(self.workdir / "home")  # keep ~/.kwok and friends of the developer out of it
        wrapper = node.enter_argv(self.holder.pid, []) if self.holder else []
        process = spawn(name, argv, self.log_dir, env, self.tie_to_parent, wrapper)
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


def _process_state(p: Process) -> dict[str, Any]:
    return {"name": p.name, "pid": p.pid, "argv": p.argv, "log": str(p.log)}


def _process_from_state(p: dict[str, Any]) -> Process:
    return Process(p["name"], p["pid"], p["argv"], Path(p["log"]))


def cluster_dir() -> Path:
    return Path(os.environ.get("KUBECHAT_CLUSTER_DIR", DEFAULT_DIR))


def prepare(
    real_node: bool, images: Sequence[Path] | None = None, extra: Sequence[str] = ()
) -> tuple[dict[str, Path], Path, list[Path]]:
    """Everything a cluster needs that may come from the network (Go modules, Debian packages for the image
    base, wheels, encodings), fetched and built now: once this thread is in a real node's namespace, nothing
    can be downloaded any more. Returns the binaries (with `extra` ones, e.g. helm), kwok's stages and the
    images to import."""
    binaries = build.ensure_built([*build.CONTROL_PLANE, *(build.REAL_NODE if real_node else ()), *extra])
    stages = build.ensure_kwok_stages()
    archives = list(images if images is not None else node_images()) if real_node else []
    return binaries, stages, archives


def node_images() -> list[Path]:
    """The images a real node needs, built (or taken from the cache) by localcluster/images.py: the sandbox
    (pause) image, the chat service (every bot's pods) and the operator."""
    from localcluster import images

    return [images.build_pause().path, *(images.build_image(kind).path for kind in images.KINDS)]
