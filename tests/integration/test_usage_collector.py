"""``status.usage`` collected by the operator from real bots' ``/metrics``, against the real API server.

The pods are real ``kubechat serve`` processes on loopback, each stood for by a Pod object carrying the
labels, owner and port the operator's own Deployment would give it, and the status a kubelet would write
(Running, Ready, its IP). The bot has ``replicas: 0`` so that kwok's pods (whose made-up IPs must never be
contacted) are not among them; the stand-ins name the bot as their controller, so no ReplicaSet adopts them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any, cast

import httpx2 as httpx
import pytest
from kubernetes import client

from chatbot_service.prices import DEFAULT_TABLE
from localcluster.cluster import ClusterInfo
from tests.cluster.polling import eventually
from tests.support.bot_process import BotProcess, bot_environment, kubechat_serve
from tests.support.fake_openai import FakeOpenAI
from tests.support.operator import Operator, install_crds, kubectl, metered_operator, table_row
from tests.support.scrape import Scrape, delta
from tests.support.stand_in import create_stand_in

pytestmark = pytest.mark.cluster

GROUP, VERSION, PLURAL = "kubechat.dev", "v1alpha1", "chatbots"
INTERVAL = 5  # the smallest --usage-interval the operator accepts
BOT = "metered"


@pytest.fixture(scope="module")
def collecting_operator(
    cluster: ClusterInfo, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Operator, str]]:
    """The operator reading usage every INTERVAL, and the URL of its own /metrics."""
    install_crds(cluster)
    log = tmp_path_factory.mktemp("operator") / "operator.log"
    with metered_operator(cluster, log, "--usage-interval", str(INTERVAL)) as running:
        yield running


@pytest.fixture
def processes(upstream: FakeOpenAI) -> Iterator[list[BotProcess]]:
    with ExitStack() as stack:
        env = bot_environment(upstream, api_key="sk-test-4f8a1c2e9b7d")
        yield [stack.enter_context(kubechat_serve(env, timeout=120)) for _ in range(3)]  # a busy machine


class Stand:
    def __init__(self, api: Any, namespace: str) -> None:
        self.core, self.custom, self.ns = client.CoreV1Api(api), client.CustomObjectsApi(api), namespace

    def bot(self) -> dict[str, Any]:
        return cast(
            dict[str, Any], self.custom.get_namespaced_custom_object(GROUP, VERSION, self.ns, PLURAL, BOT)
        )

    def usage(self) -> dict[str, Any]:
        return cast(dict[str, Any], (self.bot().get("status") or {}).get("usage") or {})

    def pod_for(self, index: int, process: BotProcess, owner_uid: str) -> None:
        port = int(process.url.rsplit(":", 1)[1])
        create_stand_in(self.core, self.ns, f"{BOT}-stand-in-{index}", BOT, owner_uid, port)


def chat(process: BotProcess, message: str) -> dict[str, Any]:
    response = httpx.post(f"{process.url}/chat", json={"message": message}, timeout=10)
    response.raise_for_status()
    return cast(dict[str, Any], response.json())


def test_usage_adds_up_over_pods_and_survives_one_going(
    kube_api: Any,
    namespace: str,
    collecting_operator: tuple[Operator, str],
    processes: list[BotProcess],
    cluster: ClusterInfo,
) -> None:
    stand = Stand(kube_api, namespace)
    core = stand.core
    core.create_namespaced_secret(
        namespace, client.V1Secret(metadata=client.V1ObjectMeta(name="openai"), string_data={"apiKey": "k"})
    )
    manifest = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ChatBot",
        "metadata": {"name": BOT, "namespace": namespace},
        "spec": {
            "systemPrompt": "You are metered.",
            "replicas": 0,
            "openAI": {"apiKeySecretRef": {"name": "openai"}},
        },
    }
    kubectl(cluster, "apply", "-f", "-", stdin=json.dumps(manifest))
    uid = eventually(lambda: stand.bot()["metadata"]["uid"], timeout=30, what="the bot")
    for i, process in enumerate(processes):
        stand.pod_for(i, process, uid)

    replies = [chat(p, f"hello {i} from pod {n}") for n, p in enumerate(processes) for i in range(n + 2)]
    replies.append(chat(processes[0], "x" * 50))

    def expect(replies: list[dict[str, Any]]) -> dict[str, int]:
        tokens_in = sum(r["usage"]["prompt_tokens"] for r in replies)
        tokens_out = sum(r["usage"]["completion_tokens"] for r in replies)
        return {
            "requests": len(replies),
            "inputTokens": tokens_in,
            "outputTokens": tokens_out,
            "tokens": tokens_in + tokens_out,
            "errors": 0,
        }

    def cost_nano(replies: list[dict[str, Any]]) -> int:
        return sum(
            DEFAULT_TABLE.cost("gpt-4o-mini", r["usage"]["prompt_tokens"], r["usage"]["completion_tokens"])
            for r in replies
        )

    def adds_up(replies: list[dict[str, Any]]) -> dict[str, Any]:
        usage = stand.usage()
        for window in ("total", "lastHour", "last24Hours"):
            shown = {k: v for k, v in (usage.get(window) or {}).items() if k != "cost"}
            assert shown == expect(replies), (window, usage)
        assert abs(usage["totalCounts"][4] - cost_nano(replies)) <= len(processes), usage  # float rounding
        return usage

    first = eventually(lambda: adds_up(replies), timeout=4 * INTERVAL, interval=1, what="usage of 3 pods")
    assert cost_nano(replies) > 0 and float(first["total"]["cost"]) == pytest.approx(
        cost_nano(replies) / 1e9, abs=1e-6
    )
    assert len(first["pods"]) == 3

    # Shown where Kubernetes users look: `kubectl get -o wide` has the 24 h tokens and cost.
    wide = kubectl(cluster, "get", "chatbot", BOT, "-n", namespace, "-o", "wide").stdout
    columns = table_row(wide)
    assert (
        columns["TOKENS-24H"] == str(first["last24Hours"]["tokens"])
        and columns["COST-24H"] == first["last24Hours"]["cost"]
    )

    # Idle: two more rounds of the collector (its own metrics say so), and the status is not written again.
    metrics_url = collecting_operator[1]
    version = stand.bot()["metadata"]["resourceVersion"]
    idle = Scrape(metrics_url)
    rounds = idle.value("kubechat_operator_usage_rounds_total", result="ok")
    eventually(
        lambda: _at_least(Scrape(metrics_url).value("kubechat_operator_usage_rounds_total"), rounds + 2),
        timeout=4 * INTERVAL,
        interval=1,
        what="two more collector rounds",
    )
    assert stand.bot()["metadata"]["resourceVersion"] == version
    after_idle = Scrape(metrics_url)
    assert delta(idle, after_idle, "kubechat_operator_usage_writes_total") == 0
    assert delta(idle, after_idle, "kubechat_operator_usage_scrapes_total", result="ok") >= 3 * 2  # read all

    # The operator restarts: it goes on from what the status says, neither losing nor counting twice.
    operator = collecting_operator[0]
    operator.stop()
    operator.start()
    eventually(lambda: Scrape(metrics_url), timeout=60, interval=1, what="the restarted operator's /metrics")
    more_first = [chat(processes[0], "after the restart")]
    after_restart = replies + more_first  # counted exactly once: a double count would never add up
    eventually(lambda: adds_up(after_restart), timeout=6 * INTERVAL, interval=1, what="usage after restart")
    replies += more_first

    # A pod goes (its process too): what it served stays counted; the others go on adding.
    core.delete_namespaced_pod(f"{BOT}-stand-in-2", namespace, grace_period_seconds=0)
    processes[2].process.terminate()
    more = [chat(processes[1], f"after {i}") for i in range(3)]
    after = eventually(
        lambda: adds_up(replies + more), timeout=4 * INTERVAL, interval=1, what="usage after a pod went"
    )
    assert len(after["pods"]) == 2  # the gone pod's entry was removed, its counts kept in the totals


def _at_least(value: float, floor: float) -> None:
    assert value >= floor, (value, floor)
