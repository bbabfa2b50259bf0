"""Every file in examples/ is accepted by a real API server with the CRDs installed, so none can rot."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from localcluster.cluster import ClusterInfo
from tests.cluster.polling import eventually
from tests.support.operator import REPO, kubectl

pytestmark = pytest.mark.cluster

EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))


@pytest.fixture(scope="module")
def crds(cluster: ClusterInfo) -> None:
    kubectl(cluster, "apply", "--server-side", "-f", str(REPO / "crds"))
    kubectl(cluster, "wait", "--for=condition=Established", "crd/chatbots.kubechat.dev", "--timeout=60s")


def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def test_the_examples_are_all_here() -> None:
    assert {p.name for p in EXAMPLES} >= {"helpdesk.yaml", "azure-appconfig.yaml", "hpa.yaml"}


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_the_api_server_accepts_the_example(
    cluster: ClusterInfo, crds: None, namespace: str, example: Path
) -> None:
    docs = documents(example)
    assert docs and all("namespace" not in d["metadata"] for d in docs), "examples go where kubectl points"
    out = kubectl(cluster, "-n", namespace, "apply", "--dry-run=server", "-f", str(example)).stdout
    assert out.count("(server dry run)") == len(docs), out


def test_the_azure_example_wires_workload_identity() -> None:
    docs = {d["kind"]: d for d in documents(REPO / "examples" / "azure-appconfig.yaml")}
    account, bot = docs["ServiceAccount"], docs["ChatBot"]
    assert "azure.workload.identity/client-id" in account["metadata"]["annotations"]
    assert bot["spec"]["serviceAccountName"] == account["metadata"]["name"]
    store = bot["spec"]["appConfiguration"]
    assert store["endpoint"].endswith(".azconfig.io") and store["label"]
    assert "openAI" not in bot["spec"], "the key comes from Key Vault through the store"


def test_the_hpa_example_reaches_the_bots_scale_subresource(
    cluster: ClusterInfo, crds: None, kube_api: Any, namespace: str
) -> None:
    """Applied for real: what the HPA controller reads through scaleTargetRef answers (no operator needed)."""
    example = REPO / "examples" / "hpa.yaml"
    kubectl(cluster, "-n", namespace, "apply", "-f", str(example))
    hpa = client.AutoscalingV2Api(kube_api).read_namespaced_horizontal_pod_autoscaler("faq", namespace)
    target = hpa.spec.scale_target_ref
    assert (target.api_version, target.kind, target.name) == ("kubechat.dev/v1alpha1", "ChatBot", "faq")
    raw = f"/apis/kubechat.dev/v1alpha1/namespaces/{namespace}/chatbots/faq/scale"
    scale = json.loads(kubectl(cluster, "get", "--raw", raw).stdout)
    assert scale["kind"] == "Scale" and scale["spec"]["replicas"] == 2
    kubectl(cluster, "-n", namespace, "scale", "chatbot/faq", "--replicas=4")  # what the HPA would do

    def scaled() -> None:
        bot = client.CustomObjectsApi(kube_api).get_namespaced_custom_object(
            "kubechat.dev", "v1alpha1", namespace, "chatbots", "faq"
        )
        assert bot["spec"]["replicas"] == 4, bot["spec"]

    eventually(scaled, timeout=10, what="spec.replicas set through the scale subresource")
