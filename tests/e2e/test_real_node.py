"""End to end on a real node: the operator's Deployments run the chat service image in real pods (containerd,
runc, the kubelet's probes, kube-proxy), and the tests talk to each bot through its Service's ClusterIP with
the official `openai` client, as a client inside the cluster would (from outside the cluster's network
namespace, through relays: tests/cluster/pytest_plugin.py). The bots' upstream is a local OpenAI-compatible
server listening on the node IP inside the namespace, so the tests see exactly what each pod sent.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from typing import Any, cast

import httpx2 as httpx
import pytest
from kubernetes import client

from localcluster.cluster import ClusterInfo
from localcluster.node import NODE_IP, network_of
from tests.cluster.polling import eventually
from tests.cluster.pytest_plugin import RealNode
from tests.support.fake_openai import FakeOpenAI
from tests.support.operator import Operator, install_crds, kubectl
from tests.support.servers import ThreadedServer

pytestmark = pytest.mark.e2e

GROUP, VERSION, PLURAL = "kubechat.dev", "v1alpha1", "chatbots"
BOT_IMAGE = "docker.io/kubechat/chatbot:dev"  # built and imported by the real-node cluster (node_images)
READY_TIMEOUT = 90.0
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
def operator(real_cluster: ClusterInfo, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Operator]:
    install_crds(real_cluster)
    op = Operator(
        real_cluster,
        tmp_path_factory.mktemp("operator") / "operator.log",
        "--bot-image",
        BOT_IMAGE,
        "--bot-image-pull-policy",
        "IfNotPresent",
    )
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
        return [p for p in self.pods() if _pod_ready(p)]

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


def _pod_ready(pod: Any) -> bool:
    return any(c.type == "Ready" and c.status == "True" for c in (pod.status.conditions or []))


@pytest.fixture
def bot(real_node: RealNode, real_kube_api: Any, real_namespace: str, operator: Operator) -> Bot:
    return Bot(real_node, real_kube_api, real_namespace, "helpdesk")


def create_key_secret(bot: Bot, key: str) -> None:
    body = client.V1Secret(metadata=client.V1ObjectMeta(name="openai"), string_data={"apiKey": key})
    bot.core.create_namespaced_secret(bot.ns, body)


def chat(url: str, message: str, session: str | None = None) -> dict[str, Any]:
    """One /chat turn on a new connection (so kube-proxy picks a pod afresh)."""
    body: dict[str, Any] = {"message": message, **({"session_id": session} if session else {})}
    # Retried: a new ClusterIP can take a moment to answer after its pods are Ready. A short connect timeout,
    # so one SYN lost while kube-proxy rewrites its rules does not hold the attempt for TCP's backoff.
    timeout = httpx.Timeout(30, connect=3)
    response = eventually(
        lambda: httpx.post(f"{url}/chat", json=body, timeout=timeout).raise_for_status(),
        timeout=30,
        what=f"POST {url}/chat",
    )
    return cast(dict[str, Any], response.json())


def test_a_bot_answers_through_its_service(bot: Bot, upstream: FakeOpenAI) -> None:
    import openai  # about a second to import: only where it is used

    create_key_secret(bot, KEY)
    bot.apply(upstream, "You are the helpdesk. Answer briefly.")
    bot.wait_ready(1)
    assert bot.condition("Ready")["reason"] == "PodsReady"
    client_ = openai.OpenAI(base_url=f"{bot.url}/v1", api_key="the bot holds the real key", max_retries=5)

    completion = client_.chat.completions.create(
        model="ignored", messages=[{"role": "user", "content": "Where is the printer?"}]
    )
    assert completion.choices[0].message.content == "2 messages; last: Where is the printer?"
    seen = upstream.last
    assert seen.headers["authorization"] == f"Bearer {KEY}"
    assert seen.body["messages"][0] == {"role": "system", "content": "You are the helpdesk. Answer briefly."}
    assert seen.body["model"] == "gpt-4o-mini"
    pod_ips = {p.status.pod_ip for p in bot.ready_pods()}
    assert seen.client in pod_ips  # the pod itself called the upstream

    stream = client_.chat.completions.create(
        model="ignored", messages=[{"role": "user", "content": "And the stapler?"}], stream=True
    )
    pieces = [c.choices[0].delta.content or "" for c in stream if c.choices]
    assert len(pieces) > 1 and "".join(pieces) == "2 messages; last: And the stapler?"

    first = chat(bot.url, "My name is Ada.")
    session = first["session_id"]
    chat(bot.url, "I work on floor 3.", session)
    third = chat(bot.url, "What is my name?", session)
    # system + three user turns + two assistant replies: the pod kept the conversation.
    assert third["reply"] == "6 messages; last: What is my name?"
    history = [m["content"] for m in upstream.last.body["messages"] if m["role"] == "user"]
    assert history == ["My name is Ada.", "I work on floor 3.", "What is my name?"]


def test_scaling_reaches_every_pod_and_back_from_zero(bot: Bot, upstream: FakeOpenAI) -> None:
    create_key_secret(bot, KEY)
    bot.apply(upstream, "You are a scaled bot.")
    bot.wait_ready(1)

    kubectl(bot.cluster, "scale", f"chatbot/{bot.name}", "--replicas=3", "-n", bot.ns)
    pod_ips = {p.status.pod_ip for p in bot.wait_ready(3)}
    assert len(pod_ips) == 3
    start = len(upstream.requests)
    # Each request on a new connection: kube-proxy picks one of three endpoints at random per connection, so
    # 45 requests miss a given pod with probability (2/3)^45, about 1e-8.
    for i in range(45):
        assert chat(bot.url, f"hello {i}")["reply"].endswith(f"last: hello {i}")
    assert {seen.client for seen in upstream.requests[start:]} == pod_ips

    kubectl(bot.cluster, "scale", f"chatbot/{bot.name}", "--replicas=0", "-n", bot.ns)
    eventually(lambda: _assert_no_pods(bot), timeout=READY_TIMEOUT, interval=0.5, what="pods gone at 0")
    eventually(
        lambda: _assert_equal(bot.condition("Ready").get("reason"), "ScaledToZero"), timeout=30, what="status"
    )
    kubectl(bot.cluster, "scale", f"chatbot/{bot.name}", "--replicas=1", "-n", bot.ns)
    bot.wait_ready(1)
    assert chat(bot.url, "back again")["reply"] == "2 messages; last: back again"


def _assert_no_pods(bot: Bot) -> None:
    assert bot.core.list_namespaced_pod(bot.ns).items == []


def _assert_equal(actual: object, expected: object) -> None:
    assert actual == expected


def test_a_prompt_change_rolls_the_pods_and_a_replicas_change_does_not(
    bot: Bot, upstream: FakeOpenAI
) -> None:
    create_key_secret(bot, KEY)
    bot.apply(upstream, "You are version one.")
    before = {p.metadata.name for p in bot.wait_ready(1)}

    bot.patch({"systemPrompt": "You are version two."})

    def rolled() -> set[str]:
        pods = bot.wait_ready(1)
        names = {p.metadata.name for p in pods}
        assert not names & before, "the old pod still serves"
        return names

    after = eventually(rolled, timeout=READY_TIMEOUT, interval=0.5, what="a new pod with the new prompt")
    chat(bot.url, "which version?")
    assert upstream.last.body["messages"][0]["content"] == "You are version two."

    bot.patch({"replicas": 2})
    pods = bot.wait_ready(2)
    assert after <= {p.metadata.name for p in pods}  # the running pod was kept: no rollout


def test_a_missing_key_heals_and_a_rotated_key_reaches_running_pods(bot: Bot, upstream: FakeOpenAI) -> None:
    bot.apply(upstream, "You are a careful bot.")

    def not_ready_for_the_key() -> Any:
        ready = bot.condition("Ready")
        assert ready.get("status") == "False" and ready.get("reason") == "SecretNotFound", ready
        pods = bot.pods()
        assert len(pods) == 1 and pods[0].status.phase == "Running" and not _pod_ready(pods[0])
        return pods[0]

    pod = eventually(not_ready_for_the_key, timeout=READY_TIMEOUT, interval=0.5, what="pod up, key missing")
    # Running is not listening yet: poll the pod's own port until the service answers.
    readyz = eventually(
        lambda: httpx.get(f"http://{bot.reach.address(pod.status.pod_ip, 8080)}/readyz", timeout=5),
        timeout=30,
        what="/readyz",
    )
    assert readyz.status_code == 503
    assert "openai_api_key" in readyz.text and KEY not in readyz.text

    create_key_secret(bot, KEY)  # nothing else: the operator and the kubelet do the rest
    [pod] = bot.wait_ready(1)
    assert chat(bot.url, "hello")["reply"].startswith("2 messages")
    assert upstream.last.headers["authorization"] == f"Bearer {KEY}"

    bot.core.patch_namespaced_secret("openai", bot.ns, {"stringData": {"apiKey": ROTATED_KEY}})

    def rotated() -> None:
        chat(bot.url, "still there?")
        assert upstream.last.headers["authorization"] == f"Bearer {ROTATED_KEY}"

    eventually(rotated, timeout=60, interval=1, what="the rotated key in use")
    [same] = bot.ready_pods()
    assert same.metadata.name == pod.metadata.name
    assert same.status.container_statuses[0].restart_count == 0


def test_pods_run_restricted_and_their_logs_hold_no_key(bot: Bot, upstream: FakeOpenAI) -> None:
    create_key_secret(bot, KEY)
    bot.apply(upstream, "You are a locked-down bot.")
    [pod] = bot.wait_ready(1)
    chat(bot.url, "hello")

    container = pod.spec.containers[0]
    context = container.security_context
    assert context.run_as_non_root and context.read_only_root_filesystem
    assert context.capabilities.drop == ["ALL"] and not context.allow_privilege_escalation
    probe = (
        "import os, pathlib\n"
        "print(os.getuid(), os.getgid())\n"
        "try:\n    pathlib.Path('/probe').write_text('x')\nexcept OSError as err:\n    print(err.strerror)\n"
        "print(open('/proc/self/status').read().split('CapEff:')[1].split()[0])\n"
    )
    out = kubectl(bot.cluster, "exec", "-n", bot.ns, pod.metadata.name, "--", "python3", "-c", probe).stdout
    assert out.split("\n")[:3] == ["10001 10001", "Read-only file system", "0000000000000000"]

    logs = kubectl(bot.cluster, "logs", "-n", bot.ns, pod.metadata.name).stdout
    assert "settings loaded: model=gpt-4o-mini" in logs
    assert KEY not in logs


# -- keyless Azure OpenAI: the pod's projected service-account token exchanged for an Entra ID token --

AZURE_AUDIENCE = "api://AzureADTokenExchange"
TOKEN_DIR = "/var/run/secrets/azure/tokens"


@pytest.fixture
def azure_on_node(real_node: RealNode, real_kube_api: Any, tmp_path: Any) -> Iterator[Any]:
    """Entra ID's token endpoint and an Azure OpenAI data plane on the node IP, behind a CONNECT proxy
    there that routes their real names; the token endpoint takes a client assertion only if it is a
    service-account token the API server issued for Azure's audience (TokenReview)."""
    from types import SimpleNamespace

    from tests.support.fake_azure.identity import FakeIdentity
    from tests.support.fake_azure.network import ConnectProxy
    from tests.support.fake_azure.openai_data_plane import FakeAzureOpenAI
    from tests.support.fake_azure.tls import TestCA
    from tests.support.fake_azure.world import CLIENT_ID, DEPLOYMENT, LOGIN_HOST, OPENAI_HOST, TENANT

    ca = TestCA(tmp_path)
    identity = FakeIdentity(tenant_id=TENANT, client_id=CLIENT_ID, federated_token="unused")
    subjects: list[str] = []
    auth = client.AuthenticationV1Api(real_kube_api)

    def exchange(assertion: str) -> bool:
        review = client.V1TokenReview(
            spec=client.V1TokenReviewSpec(token=assertion, audiences=[AZURE_AUDIENCE])
        )
        status = auth.create_token_review(review).status
        if status.authenticated:
            subjects.append(str(status.user.username))
        return bool(status.authenticated)

    identity.accepts = exchange
    data_plane = FakeAzureOpenAI(identity, {DEPLOYMENT})
    with network_of(real_node.reach.netns):
        login = ThreadedServer(identity.app, host=NODE_IP, **ca.server_cert(LOGIN_HOST))
        aoai = ThreadedServer(data_plane.app, host=NODE_IP, **ca.server_cert(OPENAI_HOST))
        proxy = ConnectProxy({LOGIN_HOST: login.port, OPENAI_HOST: aoai.port}, host=NODE_IP).start()
    login.start()
    aoai.start()
    try:
        yield SimpleNamespace(
            ca=ca,
            identity=identity,
            data_plane=data_plane,
            proxy=proxy,
            subjects=subjects,
            deployment=DEPLOYMENT,
        )
    finally:
        proxy.stop()
        aoai.stop()
        login.stop()


def _workload_identity_injection(bot: Bot, azure: Any) -> dict[str, Any]:
    """What the Azure workload identity webhook adds to a labelled pod (no webhook runs here), applied
    to the bot's Deployment by a field manager of its own, plus the proxy and the test CA."""
    env = {
        "AZURE_CLIENT_ID": azure.identity.client_id,
        "AZURE_TENANT_ID": azure.identity.tenant_id,
        "AZURE_FEDERATED_TOKEN_FILE": f"{TOKEN_DIR}/azure-identity-token",
        "AZURE_AUTHORITY_HOST": "https://login.microsoftonline.com/",
        "HTTPS_PROXY": azure.proxy.url,
        "SSL_CERT_FILE": "/etc/test-ca/ca.pem",
        "REQUESTS_CA_BUNDLE": "/etc/test-ca/ca.pem",
    }
    token = {
        "serviceAccountToken": {
            "audience": AZURE_AUDIENCE,
            "expirationSeconds": 3600,
            "path": "azure-identity-token",
        }
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": bot.name, "namespace": bot.ns},
        "spec": {
            "template": {
                "spec": {
                    "containers": [
                        {
                            "name": "bot",
                            "env": [{"name": k, "value": v} for k, v in env.items()],
                            "volumeMounts": [
                                {"name": "azure-identity-token", "mountPath": TOKEN_DIR, "readOnly": True},
                                {"name": "test-ca", "mountPath": "/etc/test-ca", "readOnly": True},
                            ],
                        }
                    ],
                    "volumes": [
                        {"name": "azure-identity-token", "projected": {"sources": [token]}},
                        {"name": "test-ca", "configMap": {"name": "test-ca"}},
                    ],
                }
            }
        },
    }


def test_a_keyless_azure_bot_answers_through_its_service(
    real_node: RealNode, real_kube_api: Any, real_namespace: str, operator: Operator, azure_on_node: Any
) -> None:
    azure = azure_on_node
    bot = Bot(real_node, real_kube_api, real_namespace, "azurebot")
    bot.core.create_namespaced_config_map(
        bot.ns,
        client.V1ConfigMap(
            metadata=client.V1ObjectMeta(name="test-ca"), data={"ca.pem": azure.ca.ca_file.read_text()}
        ),
    )
    bot.core.create_namespaced_service_account(
        bot.ns,
        client.V1ServiceAccount(
            metadata=client.V1ObjectMeta(
                name="azurebot-wi",
                annotations={"azure.workload.identity/client-id": azure.identity.client_id},
            )
        ),
    )
    manifest = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ChatBot",
        "metadata": {"name": bot.name, "namespace": bot.ns},
        "spec": {
            "systemPrompt": "You are a keyless bot.",
            "model": "gpt-4o-mini",
            "serviceAccountName": "azurebot-wi",
            "azureOpenAI": {
                "endpoint": "https://kubechat-test.openai.azure.com",
                "deployment": azure.deployment,
            },
        },
    }
    kubectl(bot.cluster, "apply", "-f", "-", stdin=json.dumps(manifest))
    eventually(
        lambda: bot.core.read_namespaced_config_map(f"{bot.name}-config", bot.ns),
        timeout=30,
        what="the operator rendered the bot",
    )
    kubectl(
        bot.cluster,
        "apply",
        "--server-side",
        "--field-manager=workload-identity-webhook-stand-in",
        "-f",
        "-",
        stdin=json.dumps(_workload_identity_injection(bot, azure)),
    )

    def injected_pod_ready() -> None:
        # until the rollout is over: the pod from before the injection is ready too, but has no identity
        pods = bot.wait_ready(1)
        env = {e.name for e in pods[0].spec.containers[0].env or ()}
        assert "AZURE_FEDERATED_TOKEN_FILE" in env, sorted(env)

    eventually(injected_pod_ready, timeout=READY_TIMEOUT, interval=1, what="the injected pod ready")
    answer = chat(bot.url, "Hello from the node")
    assert answer["reply"] == "2 messages; last: Hello from the node"
    # the pod's own service-account token was exchanged, once, for a Cognitive Services token
    assert set(azure.subjects) == {f"system:serviceaccount:{bot.ns}:azurebot-wi"}
    calls = azure.data_plane.calls
    assert [c.status for c in calls] == [200] and calls[0].path == "/openai/v1/chat/completions"
    assert calls[0].headers["authorization"] == f"Bearer {azure.identity.issued_for(SCOPE_COGNITIVE)[0]}"
    assert set(azure.proxy.tunnels) == {"login.microsoftonline.com", "kubechat-test.openai.azure.com"}


SCOPE_COGNITIVE = "https://cognitiveservices.azure.com/.default"
