"""Access by Kubernetes service-account token: tokens issued by the local control plane's TokenRequest
(with an audience naming the bot), checked by its TokenReview with the bot's own, least-privileged
credentials, cached for the token's lifetime; allowed by namespace or by named account.

The bot finds the API server as a pod does (``KUBERNETES_SERVICE_HOST``/``PORT`` and the token and CA at
the fixed /var/run/secrets path, which the test mounts in a mount namespace of the bot's own, as the kubelet
would) or as a developer's ``kubechat serve`` does (``KUBECONFIG``: a token, a token file or a client
certificate); a rotated token is picked up, and failures are a 503 logged once, never with a token."""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx2
import openai
import pytest
import yaml
from kubernetes import client

from chatbot_service.kubeclient import REREAD, ApiServerError, KubeClient
from chatbot_service.tokenreview import PATH
from localcluster.cluster import ClusterInfo
from tests.integration.conftest import BotFactory
from tests.support.bot_process import BotProcess
from tests.support.servers import ThreadedServer

pytestmark = pytest.mark.cluster

BOT_ACCOUNT = "helpdesk-bot"


def token_for(kube_api: Any, namespace: str, account: str, audience: str | None, bound_to: Any = None) -> str:
    """A TokenRequest's token for ``audience``; None: the API server's own (as a pod's mounted token).
    ``bound_to``: a Secret the token dies with (as a pod's token dies with its pod)."""
    bound = None
    if bound_to is not None:
        meta = bound_to.metadata
        bound = client.V1BoundObjectReference(api_version="v1", kind="Secret", name=meta.name, uid=meta.uid)
    request = client.AuthenticationV1TokenRequest(
        spec=client.V1TokenRequestSpec(
            audiences=[audience] if audience else None, expiration_seconds=600, bound_object_ref=bound
        )
    )
    issued = client.CoreV1Api(kube_api).create_namespaced_service_account_token(account, namespace, request)
    return str(issued.status.token)


def binding(namespace: str, role: str) -> dict[str, Any]:
    """The bot's account bound to ``role`` (cluster-wide: TokenReviews are not namespaced)."""
    return {
        "metadata": {"name": f"{namespace}-tokenreview"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
        "subjects": [{"kind": "ServiceAccount", "name": BOT_ACCOUNT, "namespace": namespace}],
    }


@pytest.fixture
def bot_kubeconfig(kube_api: Any, cluster: ClusterInfo, namespace: str, tmp_path: Path) -> Iterator[Path]:
    """The bot's own identity: a service account that may create TokenReviews and nothing else."""
    # Any: the client accepts plain dicts as bodies, its stubs only its models
    core: Any = client.CoreV1Api(kube_api)
    rbac: Any = client.RbacAuthorizationV1Api(kube_api)
    for account in (BOT_ACCOUNT, "caller", "stranger"):
        core.create_namespaced_service_account(namespace, {"metadata": {"name": account}})
    role = f"{namespace}-tokenreview"
    rule = {"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"], "verbs": ["create"]}
    rbac.create_cluster_role({"metadata": {"name": role}, "rules": [rule]})
    rbac.create_cluster_role_binding(binding(namespace, role))
    admin = yaml.safe_load(cluster.kubeconfig.read_text())
    own = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": admin["clusters"],
        "users": [
            {
                "name": "bot",
                "user": {
                    "token": token_for(kube_api, namespace, BOT_ACCOUNT, None)  # the API server's audience
                },
            }
        ],
        "contexts": [{"name": "bot", "context": {"cluster": admin["clusters"][0]["name"], "user": "bot"}}],
        "current-context": "bot",
    }
    path = tmp_path / "bot-kubeconfig"
    path.write_text(yaml.safe_dump(own))
    try:
        yield path
    finally:
        rbac.delete_cluster_role_binding(role)
        rbac.delete_cluster_role(role)


@pytest.fixture
def sa_bot(
    start_bot: BotFactory,
    bot_env: dict[str, str],
    bot_kubeconfig: Path,
    namespace: str,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[ThreadedServer]:
    monkeypatch.setenv("KUBECONFIG", str(bot_kubeconfig))  # as a pod outside the cluster would be told
    access = {"serviceAccounts": {"audience": f"helpdesk.{namespace}", "names": [f"{namespace}/caller"]}}
    with start_bot(bot_env | {"KUBECHAT_ACCESS": json.dumps(access)}) as bot:
        yield bot


def ask(bot: ThreadedServer | BotProcess, token: str) -> str:
    openai_client = openai.OpenAI(base_url=bot.url + "/v1", api_key=token, max_retries=0)
    reply = openai_client.chat.completions.create(model="any", messages=[{"role": "user", "content": "hi"}])
    return reply.choices[0].message.content or ""


def status_of(bot: ThreadedServer | BotProcess, token: str) -> httpx2.Response:
    return httpx2.post(
        bot.url + "/chat", json={"message": "hi"}, headers={"Authorization": f"Bearer {token}"}, timeout=10
    )


def test_service_account_tokens_are_checked_by_token_review(
    sa_bot: ThreadedServer, kube_api: Any, namespace: str, bot_kubeconfig: Path
) -> None:
    audience = f"helpdesk.{namespace}"
    caller = token_for(kube_api, namespace, "caller", audience)
    assert ask(sa_bot, caller) == "2 messages; last: hi"
    usage = httpx2.get(sa_bot.url + "/v1/usage", headers={"Authorization": f"Bearer {caller}"}).json()
    assert [i["identity"] for i in usage["identities"]] == [f"system:serviceaccount:{namespace}:caller"]
    # a valid token of an account the bot does not allow: 403
    stranger = status_of(sa_bot, token_for(kube_api, namespace, "stranger", audience))
    assert stranger.status_code == 403 and stranger.json()["error"]["code"] == "permission_denied"
    # the allowed account, but a token for another audience: 401
    elsewhere = status_of(sa_bot, token_for(kube_api, namespace, "caller", "another-bot"))
    assert elsewhere.status_code == 401 and elsewhere.headers["www-authenticate"].startswith("Bearer")
    # answers are cached for the token's lifetime: with the bot's right to review withdrawn, the
    # token already reviewed still works, and a new one cannot be checked (503, not a wrong 401)
    client.RbacAuthorizationV1Api(kube_api).delete_cluster_role_binding(f"{namespace}-tokenreview")
    rbac: Any = client.RbacAuthorizationV1Api(kube_api)
    rbac.create_cluster_role_binding(binding(namespace, "view"))
    assert ask(sa_bot, caller)
    unchecked = status_of(sa_bot, token_for(kube_api, namespace, "caller", audience))
    assert unchecked.status_code == 503, unchecked.text
    assert caller not in unchecked.text


def test_whole_namespaces_can_be_allowed(
    start_bot: BotFactory,
    bot_env: dict[str, str],
    bot_kubeconfig: Path,
    namespace: str,
    kube_api: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("KUBECONFIG", str(bot_kubeconfig))
    access = {"serviceAccounts": {"audience": "helpdesk", "namespaces": [namespace]}}
    with start_bot(bot_env | {"KUBECHAT_ACCESS": json.dumps(access)}) as bot:
        for account in ("caller", "stranger"):
            assert ask(bot, token_for(kube_api, namespace, account, "helpdesk"))
    access = {"serviceAccounts": {"audience": "helpdesk", "namespaces": ["some-other-namespace"]}}
    with start_bot(bot_env | {"KUBECHAT_ACCESS": json.dumps(access)}) as bot:
        assert status_of(bot, token_for(kube_api, namespace, "caller", "helpdesk")).status_code == 403


# ---- how the bot reaches the API server (chatbot_service/kubeclient.py) -----------------------------------
SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
# What the kubelet does for a pod, in a mount namespace of the bot's own (the host's /run is untouched):
# the folder "$0" mounted at the fixed path "$1", then exec of the bot (same PID, stopped by it).
AS_IN_A_POD = 'mount -t tmpfs tmpfs /run && mkdir -p "$1" && mount --bind "$0" "$1" && shift && exec "$@"'


def cluster_ca(cluster: ClusterInfo) -> bytes:
    admin = yaml.safe_load(cluster.kubeconfig.read_text())
    return base64.b64decode(admin["clusters"][0]["cluster"]["certificate-authority-data"])


def rotate(token_file: Path, token: str) -> None:
    """A new token in place of the old, swapped atomically (the kubelet swaps a symlink)."""
    fresh = token_file.with_suffix(".new")
    fresh.write_text(token)
    fresh.replace(token_file)


def accepted(cluster: ClusterInfo, ca: Path, token: str) -> int:
    """The API server's status for a request authenticated by ``token``."""
    review = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": "x"}}
    url = cluster.server + "/apis/authentication.k8s.io/v1/tokenreviews"
    verify = ssl.create_default_context(cafile=str(ca))
    headers = {"Authorization": f"Bearer {token}"}
    return httpx2.post(url, json=review, headers=headers, verify=verify, timeout=10).status_code


def access_env(bot_env: dict[str, str], namespace: str) -> dict[str, str]:
    access = {"serviceAccounts": {"audience": f"helpdesk.{namespace}", "names": [f"{namespace}/caller"]}}
    return bot_env | {"KUBECHAT_ACCESS": json.dumps(access)}


def test_in_a_pod_the_mounted_token_and_ca_are_used_and_a_rotated_token_is_picked_up(
    bot_kubeconfig: Path,  # the accounts and the bot's right to review
    kube_api: Any,
    cluster: ClusterInfo,
    namespace: str,
    bot_env: dict[str, str],
    tmp_path: Path,
) -> None:
    # The mounted token is one the API server no longer takes (issued for another audience: a stand-in for
    # an expired one) until the kubelet rotates it.
    stale = token_for(kube_api, namespace, BOT_ACCOUNT, "not-the-api-server")
    mounted = tmp_path / "serviceaccount"
    mounted.mkdir()
    (mounted / "ca.crt").write_bytes(cluster_ca(cluster))
    (mounted / "token").write_text(stale)
    assert accepted(cluster, mounted / "ca.crt", stale) == 401
    server = urlsplit(cluster.server)
    pod = {
        "KUBERNETES_SERVICE_HOST": str(server.hostname),
        "KUBERNETES_SERVICE_PORT": str(server.port),
        "KUBECONFIG": str(tmp_path / "absent"),  # in a pod, the pod's own credentials win
    }
    wrapper = ["unshare", "--mount", "--propagation", "private", "sh", "-c", AS_IN_A_POD]
    bot = BotProcess(
        access_env(bot_env, namespace) | pod,
        tmp_path / "bot.log",
        [*wrapper, str(mounted), SERVICE_ACCOUNT_DIR],
    )
    caller = token_for(kube_api, namespace, "caller", f"helpdesk.{namespace}")
    try:
        bot.wait_up()
        unchecked = status_of(bot, caller)
        assert unchecked.status_code == 503 and unchecked.json()["error"]["code"] == "not_ready"
        rotated = token_for(kube_api, namespace, BOT_ACCOUNT, None)
        rotate(mounted / "token", rotated)
        # well within the minute the stale token was read for: its 401 makes the bot read the file again
        assert ask(bot, caller) == "2 messages; last: hi"
    finally:
        bot.stop()
    output = bot.output()
    assert output.count("does not accept this bot's own credentials (in-cluster)") == 1, output
    for token in (stale, rotated, caller):
        assert token not in output


def test_a_kubeconfig_with_a_client_certificate_or_a_token_file_read_again_each_minute(
    cluster: ClusterInfo, bot_kubeconfig: Path, kube_api: Any, namespace: str, tmp_path: Path
) -> None:
    caller = token_for(kube_api, namespace, "caller", "helpdesk")
    spec = {"token": caller, "audiences": ["helpdesk"]}
    review = {"kind": "TokenReview", "apiVersion": "authentication.k8s.io/v1", "spec": spec}
    as_admin = KubeClient({"KUBECONFIG": str(cluster.kubeconfig)})  # client-certificate-data
    status = asyncio.run(as_admin.create(PATH, review))["status"]
    assert status["user"]["username"] == f"system:serviceaccount:{namespace}:caller"
    assert status["audiences"] == ["helpdesk"]
    own = yaml.safe_load(bot_kubeconfig.read_text())
    token = own["users"][0]["user"].pop("token")
    own["users"][0]["user"]["tokenFile"] = "bot-token"  # relative to the kubeconfig's folder
    folder = tmp_path / "kube"
    folder.mkdir()
    (folder / "config").write_text(yaml.safe_dump(own))
    (folder / "bot-token").write_text(token + "\n")
    now = [0.0]
    as_bot = KubeClient({"KUBECONFIG": f"{folder / 'config'}:{tmp_path / 'absent'}"}, clock=lambda: now[0])

    async def calls() -> None:
        assert (await as_bot.create(PATH, review))["status"]["authenticated"] is True
        (folder / "bot-token").write_text("revoked.not-a-token")
        now[0] = REREAD - 1
        assert (await as_bot.create(PATH, review))["status"]["authenticated"] is True  # read a minute ago
        now[0] = REREAD + 1
        with pytest.raises(ApiServerError) as refused:
            await as_bot.create(PATH, review)
        assert refused.value.status == 401 and "own credentials" in str(refused.value)
        for secret in (token, caller, "revoked"):
            assert secret not in str(refused.value)

    asyncio.run(calls())


def test_a_bot_without_the_right_to_review_answers_503_and_logs_the_403_once(
    bot_kubeconfig: Path, kube_api: Any, namespace: str, bot_env: dict[str, str], tmp_path: Path
) -> None:
    rbac: Any = client.RbacAuthorizationV1Api(kube_api)
    rbac.delete_cluster_role_binding(f"{namespace}-tokenreview")
    rbac.create_cluster_role_binding(binding(namespace, "view"))
    env = access_env(bot_env, namespace) | {"KUBECONFIG": str(bot_kubeconfig)}
    bot = BotProcess(env, tmp_path / "bot.log")
    callers = [token_for(kube_api, namespace, "caller", f"helpdesk.{namespace}") for _ in range(3)]
    try:
        bot.wait_up()
        for caller in callers:
            refused = status_of(bot, caller)
            assert refused.status_code == 503 and refused.json()["error"]["code"] == "not_ready"
    finally:
        bot.stop()
    output = bot.output()
    assert output.count("TokenReview refused (403)") == 1, output
    assert "kubechat-tokenreview" in output and f"system:serviceaccount:{namespace}:{BOT_ACCOUNT}" in output
    own = yaml.safe_load(bot_kubeconfig.read_text())["users"][0]["user"]["token"]
    for token in (own, *callers):
        assert token not in output
