"""End to end on a real node: the operator's Deployments run the chat service image in real pods (containerd,
runc, the kubelet's probes, kube-proxy), and the tests talk to each bot through its Service's ClusterIP with
the official `openai` client, as a client inside the cluster would (from outside the cluster's network
namespace, through relays: tests/cluster/pytest_plugin.py). The bots' upstream is a local OpenAI-compatible
server listening on the node IP inside the namespace, so the tests see exactly what each pod sent.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any, cast

import httpx2 as httpx
import pytest
from kubernetes import client

from localcluster.node import NODE_IP, network_of
from tests.cluster.polling import eventually
from tests.cluster.pytest_plugin import RealNode
from tests.e2e.conftest import (
    GROUP,
    KEY,
    READY_TIMEOUT,
    ROTATED_KEY,
    USAGE_INTERVAL,
    VERSION,
    Bot,
    create_key_secret,
    pod_ready,
)
from tests.support.fake_openai import FakeOpenAI
from tests.support.operator import Operator, kubectl, table_row
from tests.support.servers import ThreadedServer

pytestmark = pytest.mark.e2e


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
        assert len(pods) == 1 and pods[0].status.phase == "Running" and not pod_ready(pods[0])
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
    context = container.security_context  # non-root and seccomp are set once, for the pod
    pod_context = pod.spec.security_context
    assert pod_context.run_as_non_root and pod_context.seccomp_profile.type == "RuntimeDefault"
    assert context.run_as_non_root is not False and context.read_only_root_filesystem
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


def test_usage_in_the_status_adds_up_over_three_replicas_and_survives_a_pod_deleted(
    bot: Bot, upstream: FakeOpenAI
) -> None:
    create_key_secret(bot, KEY)
    bot.apply(upstream, "You are a metered bot.", replicas=3)
    pod_ips = {p.status.pod_ip for p in bot.wait_ready(3)}
    start = len(upstream.requests)
    replies = [chat(bot.url, f"count me {i}") for i in range(30)]
    assert {seen.client for seen in upstream.requests[start:]} == pod_ips  # all three served some

    def adds_up(replies: list[dict[str, Any]]) -> dict[str, Any]:
        usage = bot.status().get("usage") or {}
        tokens_in = sum(r["usage"]["prompt_tokens"] for r in replies)
        tokens_out = sum(r["usage"]["completion_tokens"] for r in replies)
        for window in ("total", "lastHour", "last24Hours"):
            got = usage.get(window) or {}
            assert (
                got.get("requests"),
                got.get("inputTokens"),
                got.get("outputTokens"),
                got.get("errors"),
            ) == (
                len(replies),
                tokens_in,
                tokens_out,
                0,
            ), usage
        return usage

    usage = eventually(
        lambda: adds_up(replies), timeout=6 * USAGE_INTERVAL, interval=1, what="usage of 3 pods"
    )
    assert len(usage["pods"]) == 3 and float(usage["total"]["cost"]) > 0

    victim = bot.ready_pods()[0].metadata.name
    kubectl(bot.cluster, "delete", "pod", victim, "-n", bot.ns, "--wait=true")
    bot.wait_ready(3)
    seen: list[int] = []

    def after_the_pod_went() -> dict[str, Any]:
        seen.append(int(((bot.status().get("usage") or {}).get("total") or {}).get("requests") or 0))
        return adds_up(replies + more)

    more = [chat(bot.url, f"after {i}") for i in range(6)]
    eventually(
        after_the_pod_went, timeout=6 * USAGE_INTERVAL, interval=1, what="usage after a pod was deleted"
    )
    assert min(seen) >= len(replies), seen  # never dropped: the deleted pod's requests stayed counted
    wide = kubectl(bot.cluster, "get", "chatbot", bot.name, "-n", bot.ns, "-o", "wide").stdout
    columns = table_row(wide)
    assert int(columns["TOKENS-24H"]) == bot.status()["usage"]["last24Hours"]["tokens"] > 0


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
