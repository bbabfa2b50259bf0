"""The operator's own /metrics against the real API server: reconciles, API calls and errors move as bots
are created, wait for a Secret, or are refused; the gauges tell the bots by condition and the queue."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from localcluster.cluster import ClusterInfo
from tests.cluster.polling import eventually
from tests.support.operator import Operator, install_crds, kubectl, metered_operator
from tests.support.scrape import Scrape

pytestmark = pytest.mark.cluster

GROUP, VERSION = "kubechat.dev", "v1alpha1"


@pytest.fixture(scope="module")
def metered(cluster: ClusterInfo, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Operator, str]]:
    install_crds(cluster)
    with metered_operator(cluster, tmp_path_factory.mktemp("operator") / "operator.log") as running:
        yield running


def bot(namespace: str, name: str, **spec: object) -> str:
    return json.dumps(
        {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "ChatBot",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"systemPrompt": "You are counted.", "openAI": {"apiKeySecretRef": {"name": "openai"}}}
            | spec,
        }
    )


def test_reconciles_api_calls_and_errors_move(
    metered: tuple[Operator, str], cluster: ClusterInfo, namespace: str
) -> None:
    _, url = metered
    before = Scrape(url)
    kubectl(cluster, "-n", namespace, "create", "secret", "generic", "openai", "--from-literal=apiKey=sk-x")
    kubectl(cluster, "apply", "-f", "-", stdin=bot(namespace, "counted"))
    # the CRD cannot know every rule of a pod spec: the API server refuses the Deployment (Invalid)
    kubectl(cluster, "apply", "-f", "-", stdin=bot(namespace, "refused-bot", serviceAccountName="Not_A_Name"))
    kubectl(
        cluster,
        "apply",
        "-f",
        "-",
        stdin=bot(namespace, "keyless", openAI={"apiKeySecretRef": {"name": "nope"}}),
    )

    def moved() -> Scrape:
        now = Scrape(url)
        grew = {
            result: now.value("kubechat_operator_reconciles_total", result=result)
            - before.value("kubechat_operator_reconciles_total", result=result)
            for result in ("success", "waiting")
        }
        assert grew["success"] >= 2 and grew["waiting"] >= 1, grew  # counted and refused (reported) succeed
        refused = now.value(
            "kubechat_operator_api_errors_total", verb="PATCH", resource="deployments", reason="Invalid"
        )
        assert refused >= 1 + before.value(
            "kubechat_operator_api_errors_total", verb="PATCH", resource="deployments", reason="Invalid"
        )
        return now

    now = eventually(moved, timeout=30, interval=0.5, what="reconciles and errors counted")
    # every reconcile is one observation of the duration histogram
    reconciles = now.value("kubechat_operator_reconciles_total")
    assert now.value("kubechat_operator_reconcile_duration_seconds_count") == reconciles > 0
    # the writes went where they should: applies of each kind, a status patch, the Secret's lookup
    for resource in ("configmaps", "deployments", "chatbots/status"):
        assert (
            now.value("kubechat_operator_api_requests_total", verb="PATCH", resource=resource, code="2xx")
            >= 1
        )
    assert now.value("kubechat_operator_api_requests_total", verb="GET", resource="secrets", code="4xx") >= 1
    # bounded labels: no bot or namespace name in any series
    for name, labels, _ in now.samples:
        assert not {namespace, "counted", "refused-bot", "keyless"} & set(labels.values()), (name, labels)
    assert now.value("kubechat_operator_bots", condition="Ready", status="False") >= 2  # refused + waiting
    assert now.value("kubechat_operator_bots_known") >= 3
    depths = {ls["state"] for ls in now.series("kubechat_operator_queue_depth")}
    assert depths == {"queued", "processing", "waiting"}


def test_bots_naming_a_secret_just_found_do_not_ask_for_it_again(
    metered: tuple[Operator, str], cluster: ClusterInfo, namespace: str
) -> None:
    _, url = metered

    def secret_gets() -> float:
        return Scrape(url).value(
            "kubechat_operator_api_requests_total", verb="GET", resource="secrets", code="2xx"
        )

    def reconciled(*names: str) -> None:
        done = kubectl(cluster, "-n", namespace, "get", "chatbots", *names, "-o", "json")
        answer = json.loads(done.stdout)
        items = answer.get("items") or [answer]  # a List for several names, the bot for one
        for item in items:
            assert (item.get("status") or {}).get("observedGeneration") == item["metadata"]["generation"], (
                item
            )

    kubectl(cluster, "-n", namespace, "create", "secret", "generic", "shared", "--from-literal=apiKey=sk-x")
    before = secret_gets()
    key = {"apiKeySecretRef": {"name": "shared"}}
    kubectl(cluster, "apply", "-f", "-", stdin=bot(namespace, "first", openAI=key))
    eventually(lambda: reconciled("first"), timeout=30, what="the first bot reconciled")
    assert secret_gets() == before + 1  # found, once
    names = [f"next-{i}" for i in range(5)]
    items = ",".join(bot(namespace, n, openAI=key) for n in names)
    kubectl(cluster, "apply", "-f", "-", stdin=f'{{"apiVersion": "v1", "kind": "List", "items": [{items}]}}')
    eventually(lambda: reconciled(*names), timeout=30, what="the other bots reconciled")
    assert secret_gets() == before + 1  # the find counted for them too
