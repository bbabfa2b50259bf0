"""What a GitOps tool sees of a reconciled bot: the operator writes status, never the spec, so a
server-side diff of the manifest in Git against the live object is empty."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from localcluster.cluster import ClusterInfo
from tests.integration.test_operator import Bots, bot_manifest, operator
from tests.support.operator import Operator, kubectl

pytestmark = pytest.mark.cluster
__all__ = ["operator"]  # the module's own operator process (a module-scoped fixture)

GITOPS_MANAGER = "argocd-controller"  # the field manager a GitOps tool applies with


def test_a_gitops_diff_of_a_reconciled_bot_is_empty(
    kube_api: Any, cluster: ClusterInfo, namespace: str, operator: Operator
) -> None:
    bots = Bots(kube_api, namespace)
    bots.secret()
    manifest = bot_manifest("gitops", replicas=2, model="gpt-4o-mini", temperature=0.2)
    manifest["metadata"]["namespace"] = namespace
    document = yaml.safe_dump(manifest)
    kubectl(cluster, "apply", "--server-side", f"--field-manager={GITOPS_MANAGER}", "-f", "-", stdin=document)
    bots.ready("gitops", 2)
    bots.patch("gitops", {"metadata": {"annotations": {"kubechat.dev/refresh-requested-at": "now"}}})
    bots.ready("gitops", 2)  # reconciled again after a change that is not the spec's

    diff = kubectl(
        cluster,
        "diff",
        "--server-side",
        f"--field-manager={GITOPS_MANAGER}",
        "-f",
        "-",
        stdin=document,
        check=False,
    )
    assert diff.returncode == 0, f"a GitOps tool would see drift:\n{diff.stdout}{diff.stderr}"
    # And the field owners agree: only the GitOps manager owns spec fields, the operator only status.
    live = json.loads(
        kubectl(
            cluster, "get", "chatbot", "gitops", "-n", namespace, "-o", "json", "--show-managed-fields"
        ).stdout
    )
    for entry in live["metadata"]["managedFields"]:
        owns_spec = "f:spec" in (entry.get("fieldsV1") or {})
        if entry["manager"] != GITOPS_MANAGER:
            assert not owns_spec, f"{entry['manager']} wrote the spec: {entry}"
