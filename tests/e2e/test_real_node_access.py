"""spec.access on a real node: a bot whose callers must be service accounts of one namespace, deployed by the
operator, refuses a pod that shows no token and answers a pod that mounts a projected service-account token
with the bot's audience, both calling through the bot's Service ClusterIP from inside the cluster. The bot's
pods check each token with the API server's TokenReview, on the right the operator bound to their own
ServiceAccount (the ClusterRole the chart ships), reaching the API server at the in-cluster address.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from kubernetes import client

from tests.cluster.polling import eventually
from tests.e2e.conftest import BOT_IMAGE, KEY, READY_TIMEOUT, Bot, create_key_secret, pod_ready
from tests.support.fake_openai import FakeOpenAI
from tests.support.operator import kubectl

pytestmark = pytest.mark.e2e

TOKEN_DIR = "/var/run/secrets/kubechat"
# Run in a caller pod: one chat completion to the bot's Service with the pod's projected token (or the token
# file named by the second argument), if it has one, as `Authorization: Bearer` (what OpenAI's SDKs send).
# Prints the status, the body and the challenge.
CALL = f"""
import json, os, sys, urllib.error, urllib.request
headers = {{"content-type": "application/json"}}
token = sys.argv[2] if len(sys.argv) > 2 else os.path.join({TOKEN_DIR!r}, "token")
if os.path.exists(token):
    headers["authorization"] = "Bearer " + open(token).read().strip()
body = json.dumps({{"model": "x", "messages": [{{"role": "user", "content": "Who am I?"}}]}}).encode()
request = urllib.request.Request(sys.argv[1] + "/v1/chat/completions", body, headers)
try:
    with urllib.request.urlopen(request, timeout=20) as answer:
        status, data, challenge = answer.status, answer.read(), None
except urllib.error.HTTPError as refused:
    status, data, challenge = refused.code, refused.read(), refused.headers.get("www-authenticate")
print(json.dumps({{"status": status, "body": json.loads(data), "challenge": challenge}}))
"""
DEFAULT_TOKEN = "/var/run/secrets/kubernetes.io/serviceaccount/token"


def tokenreview_role(api: Any) -> None:
    """The ClusterRole the chart ships (charts/kubechat/templates/tokenreview.yaml): TokenReviews only."""
    rbac = client.RbacAuthorizationV1Api(api)
    rule = client.V1PolicyRule(
        api_groups=["authentication.k8s.io"], resources=["tokenreviews"], verbs=["create"]
    )
    body = client.V1ClusterRole(metadata=client.V1ObjectMeta(name="kubechat-tokenreview"), rules=[rule])
    try:
        rbac.create_cluster_role(body)
    except client.exceptions.ApiException as exists:
        if exists.status != 409:
            raise


def caller_pod(bot: Bot, name: str, account: str, *, projected: bool, automount: bool) -> dict[str, Any]:
    """A pod that only waits (the tests exec into it), with the bot's image for its Python."""
    volumes, mounts = [], []
    if projected:
        source = {"serviceAccountToken": {"audience": bot.name, "expirationSeconds": 600, "path": "token"}}
        volumes = [{"name": "bot-token", "projected": {"sources": [source]}}]
        mounts = [{"name": "bot-token", "mountPath": TOKEN_DIR, "readOnly": True}]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": bot.ns, "labels": {"role": "caller"}},
        "spec": {
            "serviceAccountName": account,
            "automountServiceAccountToken": automount,
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 0,
            "securityContext": {"runAsNonRoot": True, "runAsUser": 10001},
            "containers": [
                {
                    "name": "caller",
                    "image": BOT_IMAGE,
                    "imagePullPolicy": "IfNotPresent",
                    "command": ["python3", "-c", "import time; time.sleep(3600)"],
                    "volumeMounts": mounts,
                }
            ],
            "volumes": volumes,
        },
    }


def call_from(bot: Bot, pod: str, url: str, *extra: str) -> dict[str, Any]:
    """One call from inside `pod`; retried while the new ClusterIP does not answer yet."""

    def once() -> dict[str, Any]:
        done = kubectl(bot.cluster, "exec", "-n", bot.ns, pod, "--", "python3", "-c", CALL, url, *extra)
        return dict(json.loads(done.stdout))

    return eventually(once, timeout=30, interval=1, what=f"a call from {pod}")


def test_a_bot_with_access_refuses_an_anonymous_pod_and_answers_its_service_account(
    bot: Bot, upstream: FakeOpenAI, real_kube_api: Any
) -> None:
    tokenreview_role(real_kube_api)
    create_key_secret(bot, KEY)
    bot.apply(upstream, "You are a guarded bot.")
    bot.patch({"access": {"serviceAccounts": {"namespaces": [bot.ns]}}})
    bot.core.create_namespaced_service_account(
        bot.ns, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name="caller"))
    )
    for pod in (
        caller_pod(bot, "anonymous", "caller", projected=False, automount=False),
        caller_pod(bot, "member", "caller", projected=True, automount=True),
    ):
        kubectl(bot.cluster, "apply", "-f", "-", stdin=json.dumps(pod))

    def guarded_and_ready() -> None:
        deployment = client.AppsV1Api(bot.core.api_client).read_namespaced_deployment(bot.name, bot.ns)
        assert deployment.spec.template.spec.service_account_name == f"{bot.name}-chatbot"
        assert bot.condition("Authenticated").get("reason") == "AccessConfigured", bot.condition(
            "Authenticated"
        )

    eventually(guarded_and_ready, timeout=READY_TIMEOUT, interval=0.5, what="the bot's pods with access")
    bot.wait_ready(1)
    eventually(
        lambda: _assert_all_ready(bot.core.list_namespaced_pod(bot.ns, label_selector="role=caller").items),
        timeout=READY_TIMEOUT,
        interval=0.5,
        what="the caller pods running",
    )
    ip = bot.core.read_namespaced_service(bot.name, bot.ns).spec.cluster_ip
    url = f"http://{ip}"  # the Service's ClusterIP, port 80, as seen from inside the cluster
    calls = len(upstream.requests)

    refused = call_from(bot, "anonymous", url)
    assert refused["status"] == 401, refused
    assert refused["body"]["error"]["code"] == "invalid_api_key" and refused["challenge"].startswith("Bearer")
    # the same account's default token is valid, but for the API server's audience, not the bot's
    wrong_audience = call_from(bot, "member", url, DEFAULT_TOKEN)
    assert wrong_audience["status"] == 401, wrong_audience
    assert len(upstream.requests) == calls  # nothing refused reached the upstream

    answered = call_from(bot, "member", url)
    assert answered["status"] == 200, answered
    assert answered["body"]["choices"][0]["message"]["content"] == "2 messages; last: Who am I?"
    assert (
        upstream.last.headers["authorization"] == f"Bearer {KEY}"
    )  # the bot's key went upstream, not the token
    assert upstream.last.client in {p.status.pod_ip for p in bot.ready_pods()}
    logs = kubectl(bot.cluster, "logs", "-n", bot.ns, bot.ready_pods()[0].metadata.name).stdout
    assert "TokenReview failed" not in logs


def _assert_all_ready(pods: list[Any]) -> None:
    assert len(pods) == 2 and all(pod_ready(p) for p in pods), [
        (p.metadata.name, p.status.phase) for p in pods
    ]
