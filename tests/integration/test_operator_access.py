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
