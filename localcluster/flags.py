"""Command lines of the control-plane components, all bound to loopback and our own PKI.

Kept apart from the orchestration so a component is one more function here and one more row in
build.COMPONENTS. The real node's own command lines and configuration files are in node.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from localcluster.node import NODE_IP
from localcluster.pki import Pki

SERVICE_CIDR = "10.0.0.0/24"
# Pod IPs kwok hands out. Nothing routes them (pods on kwok nodes do not run): never send traffic there.
POD_CIDR = "10.244.0.0/16"
KWOK_NODE_ANNOTATION = "kwok.x-k8s.io/node"


@dataclass(frozen=True)
class Ports:
    etcd: int
    etcd_peer: int
    apiserver: int
    controller_manager: int
    scheduler: int


@dataclass(frozen=True)
class Layout:
    """Everything a command line refers to: binaries, certificates, kubeconfigs, ports and directories."""

    binaries: dict[str, Path]
    pki: Pki
    ports: Ports
    data_dir: Path
    kubeconfigs: dict[str, Path]  # per client component, named like its certificate
    kwok_stages: Path
    real_node: bool = False

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.ports.apiserver}"


def etcd(layout: Layout) -> list[str]:
    client, peer = f"http://127.0.0.1:{layout.ports.etcd}", f"http://127.0.0.1:{layout.ports.etcd_peer}"
    return [
        str(layout.binaries["etcd"]), "--name", "kubechat", "--data-dir", str(layout.data_dir),
        "--listen-client-urls", client, "--advertise-client-urls", client,
        "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
        "--initial-cluster", f"kubechat={peer}",
        "--unsafe-no-fsync",  # throwaway data: fsync only slows tests down
        "--log-level", "warn",
    ]  # fmt: skip


def kube_apiserver(layout: Layout) -> list[str]:
    pki = layout.pki
    return [
        str(layout.binaries["kube-apiserver"]), "--etcd-servers", f"http://127.0.0.1:{layout.ports.etcd}",
        *(_real_node_apiserver(layout) if layout.real_node else _kwok_apiserver()),
        "--secure-port", str(layout.ports.apiserver),
        "--cert-dir", str(pki.directory / "apiserver-generated"),
        "--tls-cert-file", str(pki.cert("apiserver")), "--tls-private-key-file", str(pki.key("apiserver")),
        "--client-ca-file", str(pki.ca_cert),
        # Request-header (front-proxy) settings: the API server then publishes this CA for the delegated
        # authentication of the controller-manager and scheduler, which otherwise log errors about it.
        "--requestheader-client-ca-file", str(pki.ca_cert),
        "--requestheader-allowed-names", "front-proxy-client",
        "--requestheader-username-headers", "X-Remote-User",
        "--requestheader-group-headers", "X-Remote-Group",
        "--requestheader-extra-headers-prefix", "X-Remote-Extra-",
        "--proxy-client-cert-file", str(pki.cert("front-proxy-client")),
        "--proxy-client-key-file", str(pki.key("front-proxy-client")),
        "--service-account-key-file", str(pki.sa_pub),
        "--service-account-signing-key-file", str(pki.sa_key),
        "--service-account-issuer", "https://kubernetes.default.svc.cluster.local",
        "--authorization-mode", "Node,RBAC",
        "--enable-admission-plugins", "NodeRestriction",
        "--service-cluster-ip-range", SERVICE_CIDR,
    ]  # fmt: skip


def _kwok_apiserver() -> list[str]:
    return [
        "--bind-address", "127.0.0.1", "--advertise-address", "127.0.0.1",
        # Endpoints may not hold a loopback IP, so the `kubernetes` Service gets none instead of log spam.
        "--endpoint-reconciler-type", "none",
    ]  # fmt: skip


def _real_node_apiserver(layout: Layout) -> list[str]:
    """Inside the node's namespace: listen on all of its addresses, so pods reach the `kubernetes` Service
    (advertised at the node IP), and dial kubelets by IP with a client cert, verifying theirs."""
    pki = layout.pki
    return [
        "--bind-address", "0.0.0.0", "--advertise-address", NODE_IP,
        "--kubelet-preferred-address-types", "InternalIP",
        "--kubelet-certificate-authority", str(pki.ca_cert),
        "--kubelet-client-certificate", str(pki.cert("apiserver-kubelet-client")),
        "--kubelet-client-key", str(pki.key("apiserver-kubelet-client")),
    ]  # fmt: skip


def _serving_client(layout: Layout, name: str, port: int) -> list[str]:
    """Flags shared by the controller-manager and scheduler: credentials, loopback serving, no election."""
    kubeconfig, pki = str(layout.kubeconfigs[name]), layout.pki
    return [
        "--kubeconfig", kubeconfig,
        "--authentication-kubeconfig", kubeconfig, "--authorization-kubeconfig", kubeconfig,
        "--bind-address", "127.0.0.1", "--secure-port", str(port),
        "--tls-cert-file", str(pki.cert(name)), "--tls-private-key-file", str(pki.key(name)),
        "--client-ca-file", str(pki.ca_cert),
        "--leader-elect=false",  # a single instance: no lease traffic, no wait to acquire it
    ]  # fmt: skip


def kube_controller_manager(layout: Layout) -> list[str]:
    pki = layout.pki
    return [
        str(layout.binaries["kube-controller-manager"]),
        *_serving_client(layout, "controller-manager", layout.ports.controller_manager),
        "--controllers", "*",  # all default controllers: garbage collector, deployment, namespace, ...
        "--use-service-account-credentials",
        # The default client limit (20 QPS) makes its start-up, which creates one ServiceAccount and token
        # per controller, take 5 s instead of 0.5 s, and slows garbage collection in tests.
        "--kube-api-qps", "200", "--kube-api-burst", "400",
        "--root-ca-file", str(pki.ca_cert),
        "--service-account-private-key-file", str(pki.sa_key),
        "--cluster-signing-cert-file", str(pki.ca_cert), "--cluster-signing-key-file", str(pki.ca_key),
        "--service-cluster-ip-range", SERVICE_CIDR,
    ]  # fmt: skip


def kube_scheduler(layout: Layout) -> list[str]:
    return [
        str(layout.binaries["kube-scheduler"]),
        *_serving_client(layout, "scheduler", layout.ports.scheduler),
    ]


def kwok(layout: Layout) -> list[str]:
    return [
        str(layout.binaries["kwok"]), "--kubeconfig", str(layout.kubeconfigs["kwok"]),
        "--config", str(layout.kwok_stages),
        "--manage-all-nodes=false",
        "--manage-nodes-with-annotation-selector", f"{KWOK_NODE_ANNOTATION}=fake",
        "--manage-nodes-with-label-selector=",
        # Node addresses stay on loopback, so anything that dials a "kubelet" can only reach this machine.
        "--node-ip", "127.0.0.1",
        "--cidr", POD_CIDR,
        "--node-lease-duration-seconds", "40",
    ]  # fmt: skip
