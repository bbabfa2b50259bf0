"""pytest fixtures for tests that need a real Kubernetes control plane.

Enable with `pytest_plugins = ["tests.cluster.pytest_plugin"]` in tests/conftest.py. The control plane starts
once per test session (binaries are built first if missing) and is always stopped at the end. Set
KUBECHAT_KUBECONFIG to reuse a running cluster (e.g. one from `make cluster-up`) instead.

`real_cluster` is the cluster with one real kubelet node (tests marked `e2e`): starting it moves the test
process's main thread into the cluster's network namespace, so e2e tests are ordered after all others. Set
KUBECHAT_REAL_KUBECONFIG (`localcluster.py exec` does, running the command inside the namespace) to reuse one
started by `make cluster-up NODE=real`.
"""

from __future__ import annotations

import atexit
import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from localcluster.cluster import ClusterInfo, LocalCluster
from localcluster.kubeapi import read_kubeconfig_server
from tests.cluster.polling import eventually

NAMESPACE_LABEL = "kubechat.dev/test-namespace"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "cluster: needs the local Kubernetes control plane (localcluster)")
    config.addinivalue_line("markers", "e2e: needs the cluster with a real node (localcluster/node.py)")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """e2e tests last: once the real cluster starts, new connections of this thread are in its namespace."""
    items.sort(key=lambda item: item.get_closest_marker("e2e") is not None)


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterInfo]:
    """The control plane for this session: started here, or the one KUBECHAT_KUBECONFIG points at."""
    yield from _session_cluster(tmp_path_factory, "KUBECHAT_KUBECONFIG", "kubechat-cluster")


@pytest.fixture(scope="session")
def real_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterInfo]:
    """The cluster with a real node; this process's main thread runs inside its network namespace."""
    yield from _session_cluster(
        tmp_path_factory, "KUBECHAT_REAL_KUBECONFIG", "real", real_node=True, timeout=180
    )


def _session_cluster(
    tmp_path_factory: pytest.TempPathFactory, reuse_variable: str, name: str, **options: Any
) -> Iterator[ClusterInfo]:
    existing = os.environ.get(reuse_variable)
    if existing:
        kubeconfig = Path(existing).expanduser().resolve()
        yield ClusterInfo(kubeconfig, read_kubeconfig_server(kubeconfig))
        return
    # tie_to_parent: the kernel kills the components even if pytest is killed; atexit covers exits that
    # skip fixture teardown; the finally covers failures. stop() is idempotent. etcd's data lives in pytest's
    # temp dir, so even a killed run leaves nothing that pytest does not prune itself (a real node's pods and
    # cgroups are reaped by the next real node's start).
    workdir = tmp_path_factory.mktemp(name)
    local = LocalCluster(workdir, tie_to_parent=True, data_parent=workdir, **options)
    atexit.register(local.stop)
    try:
        yield local.start()
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
