"""What the real-node tests share: the bots' upstream on the node IP, the operator, and a ChatBot in a test
namespace with what the tests read of it."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from typing import Any, cast

import pytest
from kubernetes import client

from localcluster.cluster import ClusterInfo
from localcluster.node import NODE_IP, network_of
from tests.cluster.polling import eventually
from tests.cluster.pytest_plugin import RealNode
from tests.support.fake_openai import FakeOpenAI
from tests.support.operator import Operator, install_crds, kubectl
from tests.support.servers import ThreadedServer

GROUP, VERSION, PLURAL = "kubechat.dev", "v1alpha1", "chatbots"
BOT_IMAGE = "docker.io/kubechat/chatbot:dev"  # built and imported by the real-node cluster (node_images)
READY_TIMEOUT = 90.0
USAGE_INTERVAL = 5  # the smallest the operator accepts
KEY, ROTATED_KEY = f"sk-e2e-{secrets.token_hex(8)}", f"sk-e2e-rotated-{secrets.token_hex(8)}"


@pytest.fixture(scope="module")
def upstream(real_node: RealNode) -> Iterator[FakeOpenAI]:
    """The bots' OpenAI endpoint, on the node IP: pods reach it through their bridge's gateway. Its socket
    is made inside the cluster's namespace (the node IP exists only there); it serves from this process."""
    fake = FakeOpenAI(api_keys={KEY, ROTATED_KEY})
    with network_of(real_node.reach.netns):
        server = ThreadedServer(fake.app, host=NODE_IP)
    server.start()
    fake.url = f"{server.url}/v1"
    try:
        yield fake
    finally:
        server.stop()


@pytest.fixture(scope="module")
def operator(real_node: RealNode, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Operator]:
    """The operator as it runs in a cluster: inside the cluster's network, so it reaches pod IPs (it reads
    each pod's /metrics into status.usage), talking to the API server at its address in there."""
    real_cluster = real_node.info
    install_crds(real_cluster)
    inside = real_cluster
    if real_node.reach.netns is not None:  # this process is outside: the operator gets the inner kubeconfig
        assert real_cluster.workdir is not None
        inner = real_cluster.workdir / "kubeconfig"
        inside = ClusterInfo(inner, json.loads(inner.read_text())["clusters"][0]["cluster"]["server"])
    op = Operator(
        inside,
        tmp_path_factory.mktemp("operator") / "operator.log",
        "--bot-image",
        BOT_IMAGE,
        "--bot-image-pull-policy",
        "IfNotPresent",
        "--usage-interval",
        str(USAGE_INTERVAL),
    )
    with network_of(real_node.reach.netns):  # the process is made in there, and stays there
        op.start()
    try:
        yield op
    finally:
        op.stop()


class Bot:
    """One ChatBot in a test namespace, and what the tests read of it."""

    def __init__(self, node: RealNode, api: Any, namespace: str, name: str) -> None:
        self.cluster, self.reach, self.ns, self.name = node.info, node.reach, namespace, name
        self.custom = client.CustomObjectsApi(api)
        self.core = client.CoreV1Api(api)

    def apply(self, upstream: FakeOpenAI, prompt: str, replicas: int = 1) -> None:
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "ChatBot",
            "metadata": {"name": self.name, "namespace": self.ns},
            "spec": {
                "systemPrompt": prompt,
                "model": "gpt-4o-mini",
                "replicas": replicas,
                "openAI": {"apiKeySecretRef": {"name": "openai"}, "baseUrl": upstream.url},
            },
        }
        kubectl(self.cluster, "apply", "-f", "-", stdin=json.dumps(body))

    def patch(self, spec: dict[str, Any]) -> None:
        self.custom.patch_namespaced_custom_object(GROUP, VERSION, self.ns, PLURAL, self.name, {"spec": spec})

    def status(self) -> dict[str, Any]:
        bot = cast(
            dict[str, Any],
            self.custom.get_namespaced_custom_object(GROUP, VERSION, self.ns, PLURAL, self.name),
        )
        return cast(dict[str, Any], bot.get("status") or {})

    def condition(self, kind: str) -> dict[str, Any]:
        return next((c for c in self.status().get("conditions", []) if c["type"] == kind), {})

    def pods(self) -> list[Any]:
        selector = f"app.kubernetes.io/instance={self.name}"
        pods = self.core.list_namespaced_pod(self.ns, label_selector=selector).items
        return [p for p in pods if p.metadata.deletion_timestamp is None]

    def ready_pods(self) -> list[Any]:
        return [p for p in self.pods() if pod_ready(p)]

    def wait_ready(self, replicas: int) -> list[Any]:
        """Until `replicas` pods really pass /readyz and the bot's status says so."""

        def check() -> list[Any]:
            pods = self.ready_pods()
            assert len(pods) == replicas == len(self.pods()), [p.metadata.name for p in self.pods()]
            status = self.status()
            assert status.get("readyReplicas", 0) == replicas, status
            assert self.condition("Ready").get("status") == "True", self.condition("Ready")
            return pods

        return eventually(
            check, timeout=READY_TIMEOUT, interval=0.5, what=f"{replicas} Ready pods of {self.name}"
        )

    @property
    def url(self) -> str:
        """The bot's Service (its ClusterIP, port 80), through a relay into the namespace."""
        ip = self.core.read_namespaced_service(self.name, self.ns).spec.cluster_ip
        assert ip, f"service {self.ns}/{self.name} has no ClusterIP"
        return f"http://{self.reach.address(ip, 80)}"


def pod_ready(pod: Any) -> bool:
    return any(c.type == "Ready" and c.status == "True" for c in (pod.status.conditions or []))


@pytest.fixture
def bot(real_node: RealNode, real_kube_api: Any, real_namespace: str, operator: Operator) -> Bot:
    return Bot(real_node, real_kube_api, real_namespace, "helpdesk")


def create_key_secret(bot: Bot, key: str) -> None:
    body = client.V1Secret(metadata=client.V1ObjectMeta(name="openai"), string_data={"apiKey": key})
    bot.core.create_namespaced_secret(bot.ns, body)
