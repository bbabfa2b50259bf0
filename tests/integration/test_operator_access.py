"""The operator's part of access and limits, on the local control plane: the keys Secret mounted, the
pods' ServiceAccount bound to exactly TokenReview (and unbound with the bot), spec.access and
spec.limits handed to the service, and a bot without access reported as Unauthenticated."""

from __future__ import annotations

import json
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.cluster.polling import eventually
from tests.integration.test_operator import Bots, bot_manifest, operator
from tests.support.operator import Operator

pytestmark = pytest.mark.cluster
__all__ = ["operator"]  # the module's own operator process (a module-scoped fixture)


@pytest.fixture
def bots(kube_api: Any, namespace: str, operator: Operator) -> Bots:
    return Bots(kube_api, namespace)


def test_a_bot_without_access_is_reported_unauthenticated(bots: Bots) -> None:
    bots.secret()
    bots.create(bot_manifest("open"))
    condition = eventually(lambda: bots.condition("open", "Authenticated"), timeout=30)
    assert (condition["status"], condition["reason"]) == ("False", "Unauthenticated")
    assert "anyone who can reach" in condition["message"]


def test_access_and_limits_reach_the_pods_with_exactly_token_review(bots: Bots, kube_api: Any) -> None:
    bots.secret()
    bots.secret("helpdesk-keys", "team-a", "kc-team-a-5b0e1d7c9f2a4e68")
    access = {
        "apiKeys": {"secretRef": {"name": "helpdesk-keys"}},
        "serviceAccounts": {"namespaces": [bots.ns]},
        "owners": ["team-a"],
    }
    limits = {"perIdentity": {"requestsPerMinute": 5, "cost": {"month": 2.5}}, "timeZone": "Europe/Paris"}
    bots.create(bot_manifest("helpdesk", access=access, limits=limits))
    bot = bots.ready("helpdesk", 1)
    uid = bot["metadata"]["uid"]
    config = bots.core.read_namespaced_config_map("helpdesk-config", bots.ns).data
    assert json.loads(config["access"])["serviceAccounts"]["namespaces"] == [bots.ns]
    assert json.loads(config["limits"])["perIdentity"]["cost"] == {"month": 2.5}
    account = bots.core.read_namespaced_service_account("helpdesk-chatbot", bots.ns)
    assert [o.uid for o in account.metadata.owner_references] == [uid]
    rbac = client.RbacAuthorizationV1Api(kube_api)
    binding = rbac.read_cluster_role_binding(f"kubechat-tokenreview:{bots.ns}:helpdesk")
    assert binding.role_ref.name == "kubechat-tokenreview"
    assert [(s.kind, s.name, s.namespace) for s in binding.subjects] == [
        ("ServiceAccount", "helpdesk-chatbot", bots.ns)
    ]
    pod = bots.deployment("helpdesk").spec.template.spec
    assert pod.service_account_name == "helpdesk-chatbot" and pod.automount_service_account_token
    (keys,) = [v for v in pod.volumes if v.name == "api-keys"]
    assert keys.secret.secret_name == "helpdesk-keys" and keys.secret.optional
    authenticated = bots.condition("helpdesk", "Authenticated")
    assert (authenticated["status"], authenticated["reason"]) == ("True", "AccessConfigured")
    shared = bots.condition("helpdesk", "LimitsShared")
    assert (shared["status"], shared["reason"]) == ("False", "PerPod")
    # the binding is cluster-scoped, so no owner reference can remove it: the operator does
    bots.custom.delete_namespaced_custom_object("kubechat.dev", "v1alpha1", bots.ns, "chatbots", "helpdesk")

    def unbound() -> None:
        status = 200
        try:
            rbac.read_cluster_role_binding(f"kubechat-tokenreview:{bots.ns}:helpdesk")
        except ApiException as gone:
            status = gone.status
        assert status == 404, "the binding is still there"

    eventually(unbound, timeout=30, what="the TokenReview binding deleted with its bot")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"access": {}}, "access needs at least one of apiKeys, serviceAccounts and oidc"),
        ({"access": {"serviceAccounts": {"names": ["no-slash"]}}}, "names[0]"),
        ({"access": {"oidc": {"issuer": "http://plain", "audience": "x"}}}, "issuer"),
        ({"limits": {"budgetWindows": "fortnight"}}, "budgetWindows"),
        ({"limits": {"perIdentity": {"tokens": {"day": -5}}}}, "perIdentity.tokens.day"),
    ],
)
def test_the_api_server_refuses_bad_access_and_limits(bots: Bots, spec: dict[str, Any], message: str) -> None:
    with pytest.raises(ApiException) as refused:
        bots.create(bot_manifest("bad", **spec))
    assert refused.value.status == 422
    assert message in json.loads(refused.value.body or "{}")["message"]


def _gone(read: Any) -> None:
    status = 200
    try:
        read()
    except ApiException as err:
        status = err.status
    assert status == 404, "still there"


def _with_service_accounts(bots: Bots, name: str) -> tuple[dict[str, Any], Any]:
    """A Ready bot whose callers may be service accounts, and the RBAC API; the OpenAI Secret exists."""
    bots.secret(f"{name}-keys", "team-a", "kc-team-a-5b0e1d7c9f2a4e68")
    access = {
        "apiKeys": {"secretRef": {"name": f"{name}-keys"}},
        "serviceAccounts": {"namespaces": [bots.ns]},
    }
    bots.create(bot_manifest(name, access=access))
    bot = bots.ready(name, 1)
    rbac = client.RbacAuthorizationV1Api(bots.core.api_client)
    binding = rbac.read_cluster_role_binding(f"kubechat-tokenreview:{bots.ns}:{name}")
    labels = binding.metadata.labels
    assert (labels["kubechat.dev/bot-namespace"], labels["kubechat.dev/bot-uid"]) == (
        bots.ns,
        bot["metadata"]["uid"],
    )
    return bot, rbac


def test_dropping_service_accounts_deletes_the_binding_and_the_account(bots: Bots) -> None:
    bots.secret()
    _, rbac = _with_service_accounts(bots, "helpdesk")
    binding = f"kubechat-tokenreview:{bots.ns}:helpdesk"
    bots.patch("helpdesk", {"spec": {"access": {"serviceAccounts": None}}})  # API keys only now
    eventually(lambda: _gone(lambda: rbac.read_cluster_role_binding(binding)), timeout=30, what="unbound")
    eventually(
        lambda: _gone(lambda: bots.core.read_namespaced_service_account("helpdesk-chatbot", bots.ns)),
        timeout=30,
        what="the bot's ServiceAccount deleted",
    )
    pod = bots.deployment("helpdesk").spec.template.spec
    assert pod.service_account_name in (None, "default") and not pod.automount_service_account_token

    bots.patch("helpdesk", {"spec": {"access": {"serviceAccounts": {"namespaces": [bots.ns]}}}})  # and back
    eventually(lambda: rbac.read_cluster_role_binding(binding), timeout=30, what="bound again")
    bots.patch("helpdesk", {"spec": {"access": None}})  # no access at all
    eventually(
        lambda: _gone(lambda: rbac.read_cluster_role_binding(binding)), timeout=30, what="unbound again"
    )


def test_a_binding_or_account_changed_by_hand_is_put_back(bots: Bots) -> None:
    bots.secret()
    _, rbac = _with_service_accounts(bots, "helpdesk")
    name = f"kubechat-tokenreview:{bots.ns}:helpdesk"
    subjects = [{"kind": "ServiceAccount", "name": "helpdesk-chatbot", "namespace": bots.ns}]
    rbac.patch_cluster_role_binding(
        name, [{"op": "replace", "path": "/subjects/0/name", "value": "intruder"}]
    )

    def restored() -> None:
        live = rbac.read_cluster_role_binding(name)
        assert [{"kind": s.kind, "name": s.name, "namespace": s.namespace} for s in live.subjects] == subjects

    eventually(restored, timeout=30, what="the binding's subjects put back")
    rbac.delete_cluster_role_binding(name)
    eventually(restored, timeout=30, what="the deleted binding put back")
    bots.core.delete_namespaced_service_account("helpdesk-chatbot", bots.ns)
    eventually(
        lambda: bots.core.read_namespaced_service_account("helpdesk-chatbot", bots.ns),
        timeout=30,
        what="the deleted ServiceAccount put back",
    )


def test_a_binding_left_by_a_bot_deleted_while_no_operator_ran_is_removed_at_start(
    bots: Bots, operator: Operator
) -> None:
    bots.secret()
    _, rbac = _with_service_accounts(bots, "gone")
    _with_service_accounts(bots, "kept")
    operator.stop()
    try:
        bots.custom.delete_namespaced_custom_object("kubechat.dev", "v1alpha1", bots.ns, "chatbots", "gone")
        # labelled for a bot that never existed (and without the bot's uid): gone as well
        stray = client.V1ClusterRoleBinding(
            metadata=client.V1ObjectMeta(
                name=f"kubechat-tokenreview:{bots.ns}:never",
                labels={
                    "app.kubernetes.io/managed-by": "kubechat-operator",
                    "kubechat.dev/bot": "never",
                    "kubechat.dev/bot-namespace": bots.ns,
                },
            ),
            role_ref=client.V1RoleRef(api_group="rbac.authorization.k8s.io", kind="ClusterRole", name="view"),
            subjects=[client.RbacV1Subject(kind="ServiceAccount", name="x", namespace=bots.ns)],
        )
        rbac.create_cluster_role_binding(stray)
    finally:
        operator.start()
    for bot in ("gone", "never"):
        name = f"kubechat-tokenreview:{bots.ns}:{bot}"

        def removed(name: str = name) -> None:
            _gone(lambda: rbac.read_cluster_role_binding(name))

        eventually(removed, timeout=45, what=f"the binding of {bot} removed")
    rbac.read_cluster_role_binding(f"kubechat-tokenreview:{bots.ns}:kept")  # its bot exists: kept
