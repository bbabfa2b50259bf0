"""pytest fixtures for tests that need a real Kubernetes control plane.

Enable with `pytest_plugins = ["tests.cluster.pytest_plugin"]` in tests/conftest.py. The control plane starts
once per test session (binaries are built first if missing) and is always stopped at the end. Set
KUBECHAT_KUBECONFIG to reuse a running cluster (e.g. one from `make cluster-up`) instead.

`real_cluster` is the cluster with one real kubelet node (tests marked `e2e`). It lives in a network
namespace of its own, and this process stays outside it: the API server is reached through a relay
subprocess inside (localcluster/relay.py; `real_cluster.kubeconfig` names it), and `real_node.reach` relays
to any other address in there (a Service's ClusterIP, a pod IP), so e2e tests run in any order among the
others. Set KUBECHAT_REAL_KUBECONFIG (`python3 -m localcluster exec` does, running the command inside the
namespace) to reuse one started by `make cluster-up NODE=real`.
"""

from __future__ import annotations

import atexit
import json
import os
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from localcluster import relay
from localcluster.cluster import ClusterInfo, LocalCluster
from localcluster.kubeapi import read_kubeconfig_server
from tests.cluster.polling import eventually

NAMESPACE_LABEL = "kubechat.dev/test-namespace"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "cluster: needs the local Kubernetes control plane (localcluster)")
    config.addinivalue_line("markers", "e2e: needs the cluster with a real node (localcluster/node.py)")


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterInfo]:
    """The control plane for this session: started here, or the one KUBECHAT_KUBECONFIG points at."""
    existing = os.environ.get("KUBECHAT_KUBECONFIG")
    if existing:
        kubeconfig = Path(existing).expanduser().resolve()
        yield ClusterInfo(kubeconfig, read_kubeconfig_server(kubeconfig))
        return
    with _session_cluster(tmp_path_factory, "kubechat-cluster") as local:
        yield local.info()


class Reach:
    """Addresses inside the real node's namespace, reached from this process through one relay each."""

    def __init__(self, netns: str | None, log_dir: Path) -> None:
        self.netns, self.log_dir = netns, log_dir  # netns None: this process is inside already
        self.relays: dict[tuple[str, int], relay.Relay] = {}

    def address(self, host: str, port: int) -> str:
        """`host:port` as seen from here: a loopback relay into the namespace, made on first use."""
        if self.netns is None:
            return f"{host}:{port}"
        if (host, port) not in self.relays:
            self.relays[host, port] = relay.start((host, port), self.log_dir, connect_netns=self.netns)
        return self.relays[host, port].address

    def stop(self) -> None:
        for forward in self.relays.values():
            forward.stop()
        self.relays.clear()


@dataclass
class RealNode:
    """The real-node cluster as this process reaches it: `info.kubeconfig` names the API server's relay."""

    info: ClusterInfo
    reach: Reach


@pytest.fixture(scope="session")
def real_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealNode]:
    """The cluster with a real node, started here (or reused: KUBECHAT_REAL_KUBECONFIG) and reached through
    relays, so this process never enters its namespace."""
    existing = os.environ.get("KUBECHAT_REAL_KUBECONFIG")
    if existing:  # set by `localcluster exec`: this process runs inside the namespace
        kubeconfig = Path(existing).expanduser().resolve()
        yield RealNode(ClusterInfo(kubeconfig, read_kubeconfig_server(kubeconfig)), Reach(None, Path()))
        return
    options: dict[str, Any] = {"real_node": True, "timeout": 180, "stay_in_namespace": False}
    with _session_cluster(tmp_path_factory, "real", **options) as local:
        reach = Reach(local.netns, local.workdir / "relays")
        try:
            yield RealNode(_relayed_info(local, reach), reach)
        finally:
            reach.stop()


def _relayed_info(local: LocalCluster, reach: Reach) -> ClusterInfo:
    """The cluster's ClusterInfo with the API server at its relay (its certificate names 127.0.0.1)."""
    inside = urlsplit(local.server)
    assert inside.hostname is not None and inside.port is not None, local.server
    server = f"https://{reach.address(inside.hostname, inside.port)}"
    config = json.loads(local.kubeconfig.read_text())
    for entry in config["clusters"]:
        entry["cluster"]["server"] = server
    kubeconfig = local.workdir / "relayed.kubeconfig"
    kubeconfig.write_text(json.dumps(config, indent=2) + "\n")
    kubeconfig.chmod(0o600)
    info = local.info()
    return ClusterInfo(kubeconfig, server, info.workdir, info.nodes, info.holder_pid)


@pytest.fixture(scope="session")
def real_cluster(real_node: RealNode) -> ClusterInfo:
    """The cluster with a real node, as a client outside its namespace reaches it."""
    return real_node.info


@contextmanager
def _session_cluster(
    tmp_path_factory: pytest.TempPathFactory, name: str, **options: Any
) -> Iterator[LocalCluster]:
    # tie_to_parent: the kernel kills the components even if pytest is killed; atexit covers exits that
    # skip fixture teardown; the finally covers failures. stop() is idempotent. etcd's data lives in pytest's
    # temp dir, so even a killed run leaves nothing that pytest does not prune itself (a real node's pods and
    # cgroups are reaped by the next real node's start).
    workdir = tmp_path_factory.mktemp(name)
    local = LocalCluster(workdir, tie_to_parent=True, data_parent=workdir, **options)
    atexit.register(local.stop)
    try:
        local.start()
        yield local
    finally:
        local.stop()
        atexit.unregister(local.stop)


@pytest.fixture
def kube_api(cluster: ClusterInfo) -> Iterator[Any]:
    """A kubernetes.client.ApiClient authenticated as cluster admin, verifying the server against our CA."""
    yield from _admin_client(cluster)


@pytest.fixture
def real_kube_api(real_cluster: ClusterInfo) -> Iterator[Any]:
    """`kube_api` on the real-node cluster."""
    yield from _admin_client(real_cluster)


def _admin_client(info: ClusterInfo) -> Iterator[Any]:
    api = config.new_client_from_config(config_file=str(info.kubeconfig))  # type: ignore[no-untyped-call]
    try:
        yield api
    finally:
        api.close()


def _namespace_name(test_name: str) -> str:
    stem = re.sub(r"[^a-z0-9-]+", "-", test_name.lower()).strip("-")[:40].rstrip("-")
    return f"{stem or 'test'}-{uuid.uuid4().hex[:6]}"


@pytest.fixture
def namespace(kube_api: Any, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace named after the test; deleted afterwards without waiting for it to go.

    Yielded only once its `default` ServiceAccount exists, since Pods cannot be created before that.
    """
    yield from _fresh_namespace(kube_api, request)


@pytest.fixture
def real_namespace(real_kube_api: Any, request: pytest.FixtureRequest) -> Iterator[str]:
    """`namespace` on the real-node cluster."""
    yield from _fresh_namespace(real_kube_api, request)


def _fresh_namespace(kube_api: Any, request: pytest.FixtureRequest) -> Iterator[str]:
    core = client.CoreV1Api(kube_api)
    name = _namespace_name(request.node.name)
    body = client.V1Namespace(metadata=client.V1ObjectMeta(name=name, labels={NAMESPACE_LABEL: "true"}))
    core.create_namespace(body)
    try:
        eventually(
            lambda: core.read_namespaced_service_account("default", name),
            timeout=30,
            what=f"ServiceAccount default in namespace {name}",
        )
        yield name
    finally:
        try:
            core.delete_namespace(name, propagation_policy="Background")
        except ApiException as err:
            if err.status != 404:
                raise
