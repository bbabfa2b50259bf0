"""Access by Kubernetes service-account token: tokens issued by the local control plane's TokenRequest
(with an audience naming the bot), checked by its TokenReview with the bot's own, least-privileged
credentials, cached for the token's lifetime; allowed by namespace or by named account."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest
import yaml
from kubernetes import client

from localcluster.cluster import ClusterInfo
from tests.integration.conftest import BotFactory
from tests.support.servers import ThreadedServer

pytestmark = pytest.mark.cluster

BOT_ACCOUNT = "helpdesk-bot"


def token_for(kube_api: Any, namespace: str, account: str, audience: str | None) -> str:
    """A TokenRequest's token for ``audience``; None: the API server's own (as a pod's mounted token)."""
    request = client.AuthenticationV1TokenRequest(
        spec=client.V1TokenRequestSpec(audiences=[audience] if audience else None, expiration_seconds=600)
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


def ask(bot: ThreadedServer, token: str) -> str:
    openai_client = openai.OpenAI(base_url=bot.url + "/v1", api_key=token, max_retries=0)
    reply = openai_client.chat.completions.create(model="any", messages=[{"role": "user", "content": "hi"}])
    return reply.choices[0].message.content or ""


def status_of(bot: ThreadedServer, token: str) -> httpx2.Response:
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
