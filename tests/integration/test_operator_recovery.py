"""Failed writes of children, by an operator running as a ServiceAccount whose rights are revoked and
granted again: a restore that fails is retried until it succeeds; a settings change whose ConfigMap
cannot be written leaves the pods alone; a new bot whose Deployment cannot be written still gets the
children that do not wait for it."""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubechat_operator.render import BOT_LABEL, HASH_ANNOTATION, config_map_name

from localcluster.cluster import ClusterInfo
from tests.cluster.polling import eventually
from tests.integration.test_operator import Bots, bot_manifest
from tests.support.operator import Operator, install_crds, kubectl, service_account_cluster

pytestmark = pytest.mark.cluster

WRITE = ["get", "list", "watch", "create", "patch"]


def role(namespace: str, deployments: list[str], config_maps: list[str] = WRITE) -> dict[str, Any]:
    """What the operator needs in its namespace (the chart's rules), with the Deployment and ConfigMap
    verbs given."""
    rules = [
        {"apiGroups": ["kubechat.dev"], "resources": ["chatbots"], "verbs": ["get", "list", "watch"]},
        {"apiGroups": ["kubechat.dev"], "resources": ["chatbots/status"], "verbs": ["get", "patch"]},
        {"apiGroups": [""], "resources": ["configmaps"], "verbs": config_maps},
        {"apiGroups": [""], "resources": ["services"], "verbs": WRITE},
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


def _failed_twice(operator: Operator, namespace: str, bot: str, resource: str) -> None:
    """Wait until the operator has failed twice to write the bot's ``resource`` for want of the right."""
    failed = re.compile(
        rf"reconciling {re.escape(namespace)}/{bot} failed, retrying .*403 Forbidden.*{resource}"
    )

    def twice() -> None:
        assert len(failed.findall(operator.output())) >= 2, operator.output()[-2000:]

    eventually(twice, timeout=30, what=f"two failed attempts to write the {resource}")


@contextlib.contextmanager
def _operating(
    restricted: ClusterInfo, kube_api: Any, namespace: str, tmp_path: Path, bot: str, *args: str
) -> Iterator[tuple[Operator, Bots]]:
    """The restricted operator running (with ``args``), with the key Secret and ``bot`` created; stopped
    afterwards."""
    operator = Operator(restricted, tmp_path / "operator.log", "--namespace", namespace, *args)
    operator.start()
    try:
        bots = Bots(kube_api, namespace)
        bots.secret()
        bots.create(bot_manifest(bot))
        yield operator, bots
    finally:
        operator.stop()


def test_a_restore_that_fails_is_retried_until_it_succeeds(
    cluster: ClusterInfo, restricted: ClusterInfo, kube_api: Any, namespace: str, tmp_path: Any
) -> None:
    with _operating(restricted, kube_api, namespace, tmp_path, "sturdy") as (operator, bots):
        bots.ready("sturdy", 1)

        kubectl(cluster, "apply", "-f", "-", stdin=json.dumps(role(namespace, ["get", "list", "watch"])))
        bots.apps.delete_namespaced_deployment("sturdy", namespace)
        _failed_twice(operator, namespace, "sturdy", "deployments")
        kubectl(cluster, "apply", "-f", "-", stdin=json.dumps(role(namespace, WRITE)))
        eventually(lambda: bots.deployment("sturdy"), timeout=90, what="the Deployment put back")
        bots.ready("sturdy", 1)
        assert any(e.reason == "Restored" for e in bots.events("sturdy"))


def test_a_settings_change_waits_for_its_config_map_before_the_pods_roll(
    cluster: ClusterInfo, restricted: ClusterInfo, kube_api: Any, namespace: str, tmp_path: Any
) -> None:
    """The ConfigMap of a bot whose Deployment exists is applied before the Deployment: while it cannot
    be written, the pods keep their settings and no rollout starts; once it can, both follow."""
    with _operating(restricted, kube_api, namespace, tmp_path, "ordered") as (operator, bots):
        bots.ready("ordered", 1)
        before = bots.deployment("ordered").spec.template.metadata.annotations[HASH_ANNOTATION]

        read_only = ["get", "list", "watch", "create"]  # an apply of an existing object is a patch
        kubectl(cluster, "apply", "-f", "-", stdin=json.dumps(role(namespace, WRITE, read_only)))
        bots.patch("ordered", {"spec": {"systemPrompt": "Answer in French."}})
        _failed_twice(operator, namespace, "ordered", "configmaps")
        config = bots.core.read_namespaced_config_map(config_map_name("ordered"), namespace)
        assert config.data["system_prompt"] != "Answer in French."
        assert bots.deployment("ordered").spec.template.metadata.annotations[HASH_ANNOTATION] == before

        kubectl(cluster, "apply", "-f", "-", stdin=json.dumps(role(namespace, WRITE)))

        def rolled() -> None:
            config = bots.core.read_namespaced_config_map(config_map_name("ordered"), namespace)
            assert config.data["system_prompt"] == "Answer in French."
            assert bots.deployment("ordered").spec.template.metadata.annotations[HASH_ANNOTATION] != before

        eventually(rolled, timeout=60, what="the ConfigMap written, then the pods rolled")
        bots.ready("ordered", 1)


def test_a_new_bot_gets_the_children_that_do_not_wait_for_its_deployment(
    cluster: ClusterInfo, restricted: ClusterInfo, kube_api: Any, namespace: str, tmp_path: Any
) -> None:
    """A new bot's ConfigMap, Deployment and Service are applied at once: with Deployments not writable
    the ConfigMap and Service exist, the failure is retried and reported, and the Deployment follows
    once it may be written."""
    kubectl(cluster, "apply", "-f", "-", stdin=json.dumps(role(namespace, ["get", "list", "watch"])))
    with _operating(restricted, kube_api, namespace, tmp_path, "eager") as (operator, bots):
        _failed_twice(operator, namespace, "eager", "deployments")
        assert bots.core.read_namespaced_config_map(config_map_name("eager"), namespace).data["model"]
        assert bots.core.read_namespaced_service("eager", namespace).spec.ports[0].name == "http"
        assert not bots.apps.list_namespaced_deployment(namespace, label_selector=f"{BOT_LABEL}=eager").items

        kubectl(cluster, "apply", "-f", "-", stdin=json.dumps(role(namespace, WRITE)))
        bots.ready("eager", 1)


def test_every_child_is_applied_again_at_each_resync(
    restricted: ClusterInfo, kube_api: Any, namespace: str, tmp_path: Path
) -> None:
    """The periodic resync counts from the first time every child was written, and comes again."""
    with _operating(restricted, kube_api, namespace, tmp_path, "steady", "--resync-seconds", "2") as (
        operator,
        bots,
    ):
        bots.ready("steady", 1)
        applied = re.compile(rf"{re.escape(namespace)}/steady: applied ConfigMap, Deployment, Service ")

        def resynced_twice() -> None:
            assert len(applied.findall(operator.output())) >= 3, operator.output()[-2000:]

        eventually(resynced_twice, timeout=30, what="two resyncs after the first apply")
