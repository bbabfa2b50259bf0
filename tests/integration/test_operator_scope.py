"""Several operator processes at once: peering lets only one act; a namespaced one stays in its lane."""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator
from typing import Any, cast

import pytest
from kubernetes import client

from localcluster.cluster import ClusterInfo
from tests.cluster.polling import eventually
from tests.integration.test_operator import Bots, bot_manifest
from tests.support.operator import Operator, install_crds, kubectl

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def crds(cluster: ClusterInfo) -> None:
    install_crds(cluster)


@pytest.fixture
def operators(cluster: ClusterInfo, tmp_path: Any, crds: None) -> Iterator[list[Operator]]:
    started: list[Operator] = []
    yield started
    for op in started:
        op.stop()


def test_with_peering_only_the_older_replica_acts(
    cluster: ClusterInfo, kube_api: Any, namespace: str, operators: list[Operator], tmp_path: Any
) -> None:
    peering = {"apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering", "metadata": {"name": namespace}}
    kubectl(cluster, "apply", "-f", "-", stdin=json.dumps(peering))
    older = Operator(cluster, tmp_path / "older.log", "--peering", namespace)
    younger = Operator(cluster, tmp_path / "younger.log", "--peering", namespace)
    operators += [older, younger]
    older.start()
    custom = client.CustomObjectsApi(kube_api)

    def registered(count: int) -> None:
        peering = cast(
            dict[str, Any],
            custom.get_cluster_custom_object("kopf.dev", "v1", "clusterkopfpeerings", namespace),
        )
        peers = peering.get("status")
        assert len(peers or {}) == count, peers

    eventually(lambda: registered(1), timeout=30, what="the first replica registered in the peering")
    younger.start()  # a rolling update: the new replica comes up beside the running one
    eventually(lambda: registered(2), timeout=30, what="the second replica registered")
    bots = Bots(kube_api, namespace)
    bots.secret()
    bots.create(bot_manifest("shared"))
    bots.ready("shared", 1)
    handled = f"{namespace}/shared: applied ConfigMap, Deployment, Service"
    assert handled in older.output()
    assert handled not in younger.output() and "Resuming operations" not in younger.output()

    older.stop()  # the standby takes over once the active replica has left the peering
    eventually(
        lambda: _contains(younger.output(), "Resuming operations"), timeout=60, what="the standby resumes"
    )
    bots.create(bot_manifest("later"))
    bots.ready("later", 1)
    assert f"{namespace}/later: applied ConfigMap, Deployment, Service" in younger.output()


def test_a_namespaced_operator_leaves_other_namespaces_alone(
    cluster: ClusterInfo, kube_api: Any, namespace: str, operators: list[Operator], tmp_path: Any
) -> None:
    other = f"{namespace[:50]}-other"
    core = client.CoreV1Api(kube_api)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=other)))
    try:
        op = Operator(cluster, tmp_path / "ns.log", "--namespace", namespace)
        operators.append(op)
        op.start()
        mine, theirs = Bots(kube_api, namespace), Bots(kube_api, other)
        for bots in (mine, theirs):
            account = functools.partial(bots.core.read_namespaced_service_account, "default", bots.ns)
            eventually(account, timeout=30, what="the namespace's default ServiceAccount")
            bots.secret()
        theirs.create(bot_manifest("outside"))
        mine.create(bot_manifest("inside"))
        mine.ready("inside", 1)
        assert not theirs.apps.list_namespaced_deployment(other).items
        assert "status" not in theirs.get("outside")
    finally:
        core.delete_namespace(other)


def _contains(text: str, needle: str) -> None:
    assert needle in text, f"{needle!r} not in the log yet"
