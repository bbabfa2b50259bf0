"""A restore that fails is retried until it succeeds: the operator runs as a ServiceAccount whose right
to write Deployments is revoked while a Deployment is deleted by hand, then granted again."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest

from localcluster.cluster import ClusterInfo
from tests.cluster.polling import eventually
from tests.integration.test_operator import Bots, bot_manifest
from tests.support.operator import Operator, install_crds, kubectl, service_account_cluster

pytestmark = pytest.mark.cluster

WRITE = ["get", "list", "watch", "create", "patch"]


def role(namespace: str, deployments: list[str]) -> dict[str, Any]:
    """What the operator needs in its namespace (the chart's rules), with the Deployment verbs given."""
    rules = [
        {"apiGroups": ["kubechat.dev"], "resources": ["chatbots"], "verbs": ["get", "list", "watch"]},
        {"apiGroups": ["kubechat.dev"], "resources": ["chatbots/status"], "verbs": ["get", "patch"]},
        {"apiGroups": [""], "resources": ["configmaps", "services"], "verbs": WRITE},
        {"apiGroups": ["apps"], "resources": ["deployments"], "verbs": deployments},
        {"apiGroups": [""], "resources": ["events"], "verbs": ["create"]},
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]},
    ]
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": {"name": "operator", "namespace": namespace},
        "rules": rules,
    }


@pytest.fixture
def restricted(cluster: ClusterInfo, namespace: str, tmp_path: Any) -> Iterator[ClusterInfo]:
    install_crds(cluster)
    seen = service_account_cluster(cluster, namespace, "operator", tmp_path / "operator.kubeconfig")
    discovery = f"{namespace}-discovery"
    cluster_role = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": discovery},
        "rules": [
            {
                "apiGroups": ["apiextensions.k8s.io"],
                "resources": ["customresourcedefinitions"],
                "verbs": ["list", "watch"],
            },
            {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["list", "watch"]},
        ],
    }
    kubectl(cluster, "apply", "-f", "-", stdin=json.dumps(cluster_role))
    account = f"--serviceaccount={namespace}:operator"
    kubectl(cluster, "create", "clusterrolebinding", discovery, f"--clusterrole={discovery}", account)
    kubectl(cluster, "apply", "-f", "-", stdin=json.dumps(role(namespace, WRITE)))
    kubectl(cluster, "-n", namespace, "create", "rolebinding", "operator", "--role=operator", account)
    try:
        yield seen
    finally:
        kubectl(cluster, "delete", "clusterrolebinding", discovery, check=False)
        kubectl(cluster, "delete", "clusterrole", discovery, check=False)


def test_a_restore_that_fails_is_retried_until_it_succeeds(
    cluster: ClusterInfo, restricted: ClusterInfo, kube_api: Any, namespace: str, tmp_path: Any
) -> None:
    operator = Operator(restricted, tmp_path / "operator.log", "--namespace", namespace)
    operator.start()
    try:
        bots = Bots(kube_api, namespace)
        bots.secret()
        bots.create(bot_manifest("sturdy"))
        bots.ready("sturdy", 1)

        kubectl(cluster, "apply", "-f", "-", stdin=json.dumps(role(namespace, ["get", "list", "watch"])))
        bots.apps.delete_namespaced_deployment("sturdy", namespace)
        failed = re.compile(rf"reconciling {re.escape(namespace)}/sturdy failed, retrying .*403 Forbidden")

        def failed_twice() -> None:
            assert len(failed.findall(operator.output())) >= 2, operator.output()[-2000:]

        eventually(failed_twice, timeout=30, what="two failed attempts to put the Deployment back")
        kubectl(cluster, "apply", "-f", "-", stdin=json.dumps(role(namespace, WRITE)))
        eventually(lambda: bots.deployment("sturdy"), timeout=90, what="the Deployment put back")
        bots.ready("sturdy", 1)
        assert any(e.reason == "Restored" for e in bots.events("sturdy"))
    finally:
        operator.stop()
