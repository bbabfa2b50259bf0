"""The operator against a real kube-apiserver + etcd + controllers + kwok: YAML in, running bot out."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any, cast

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from localcluster.cluster import ClusterInfo
from tests.cluster.polling import eventually
from tests.support.operator import Operator, install_crds, kubectl

pytestmark = pytest.mark.cluster

GROUP, VERSION, PLURAL = "kubechat.dev", "v1alpha1", "chatbots"


@pytest.fixture(scope="module")
def operator(cluster: ClusterInfo, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Operator]:
    install_crds(cluster)
    op = Operator(cluster, tmp_path_factory.mktemp("operator") / "operator.log")
    op.start()
    try:
        yield op
    finally:
        op.stop()


def bot_manifest(name: str, **spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "systemPrompt": "You are a test bot.",
        "openAI": {"apiKeySecretRef": {"name": "openai"}},
    }
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ChatBot",
        "metadata": {"name": name},
        "spec": base | spec,
    }


class Bots:
    def __init__(self, api: Any, namespace: str) -> None:
        self.custom = client.CustomObjectsApi(api)
        self.apps = client.AppsV1Api(api)
        self.core = client.CoreV1Api(api)
        self.ns = namespace

    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        return cast(
            dict[str, Any], self.custom.create_namespaced_custom_object(GROUP, VERSION, self.ns, PLURAL, body)
        )

    def get(self, name: str) -> dict[str, Any]:
        return cast(
            dict[str, Any], self.custom.get_namespaced_custom_object(GROUP, VERSION, self.ns, PLURAL, name)
        )

    def patch(self, name: str, patch: dict[str, Any]) -> None:
        self.custom.patch_namespaced_custom_object(GROUP, VERSION, self.ns, PLURAL, name, patch)

    def condition(self, name: str, kind: str) -> dict[str, Any]:
        for c in (self.get(name).get("status") or {}).get("conditions") or ():
            if c["type"] == kind:
                return dict(c)
        raise AssertionError(f"no {kind} condition yet: {self.get(name).get('status')}")

    def deployment(self, name: str) -> Any:
        return self.apps.read_namespaced_deployment(name, self.ns)

    def secret(self, name: str = "openai", key: str = "apiKey", value: str = "sk-test") -> None:
        self.core.create_namespaced_secret(
            self.ns, client.V1Secret(metadata=client.V1ObjectMeta(name=name), string_data={key: value})
        )

    def ready(self, name: str, replicas: int) -> dict[str, Any]:
        def check() -> dict[str, Any]:
            bot = self.get(name)
            status = bot.get("status") or {}
            assert status.get("readyReplicas") == replicas, status
            assert status.get("observedGeneration") == bot["metadata"]["generation"], status
            assert self.condition(name, "Ready")["status"] == "True", status
            return bot

        return eventually(check, timeout=60, what=f"bot {name} ready with {replicas} pods")

    def replica_sets(self, name: str) -> list[Any]:
        items = self.apps.list_namespaced_replica_set(
            self.ns, label_selector=f"kubechat.dev/bot={name}"
        ).items
        return list(items)

    def events(self, name: str) -> list[Any]:
        return list(
            self.core.list_namespaced_event(
                self.ns, field_selector=f"involvedObject.kind=ChatBot,involvedObject.name={name}"
            ).items
        )


@pytest.fixture
def bots(kube_api: Any, namespace: str, operator: Operator) -> Bots:
    return Bots(kube_api, namespace)


def test_a_bot_gets_its_deployment_service_and_config_map(bots: Bots) -> None:
    bots.secret()
    created = bots.create(bot_manifest("helpdesk", model="gpt-4o", replicas=2, temperature=0.2))
    bot = bots.ready("helpdesk", 2)
    uid = created["metadata"]["uid"]
    dep = bots.deployment("helpdesk")
    svc = bots.core.read_namespaced_service("helpdesk", bots.ns)
    cm = bots.core.read_namespaced_config_map("helpdesk-config", bots.ns)
    for child in (dep, svc, cm):
        owners = child.metadata.owner_references or []
        assert len(owners) == 1
        owner = owners[0]
        assert (owner.kind, owner.name, owner.uid, owner.controller) == ("ChatBot", "helpdesk", uid, True)
    assert cm.data == {
        "bot_name": "helpdesk",
        "model": "gpt-4o",
        "system_prompt": "You are a test bot.",
        "temperature": "0.2",
    }
    container = dep.spec.template.spec.containers[0]
    assert container.image == "kubechat/chatbot:test"
    assert container.readiness_probe.http_get.path == "/readyz"
    assert container.liveness_probe.http_get.path == "/healthz"
    sc = container.security_context  # non-root and seccomp are the pod's, for every container
    pod_sc = dep.spec.template.spec.security_context
    assert pod_sc.run_as_non_root and pod_sc.seccomp_profile.type == "RuntimeDefault"
    assert sc.run_as_non_root is not False and sc.seccomp_profile is None
    assert sc.read_only_root_filesystem and not sc.allow_privilege_escalation
    assert sc.capabilities.drop == ["ALL"]
    assert container.image_pull_policy == "IfNotPresent"  # the server's default for a tagged image
    assert container.ports[0].protocol == "TCP"
    assert container.resources.requests == {"cpu": "100m", "memory": "128Mi"}
    env = {e.name: e.value for e in container.env}
    assert "OPENAI_API_KEY" not in env and env["KUBECHAT_CONFIG_DIR"] == "/etc/kubechat/config"
    sources = dep.spec.template.spec.volumes[0].projected.sources
    key_source = next(s.secret for s in sources if s.secret)
    assert (
        key_source.name == "openai" and key_source.items[0].path == "openai_api_key" and key_source.optional
    )
    assert (
        svc.spec.type == "ClusterIP"
        and svc.spec.ports[0].port == 80
        and svc.spec.ports[0].target_port == "http"
    )
    assert svc.spec.selector == dep.spec.selector.match_labels
    status = bot["status"]
    assert status["endpoint"] == f"http://helpdesk.{bots.ns}.svc"
    assert status["selector"] == "app.kubernetes.io/instance=helpdesk,app.kubernetes.io/name=kubechat"
    assert status["configHash"] == dep.spec.template.metadata.annotations["kubechat.dev/config-hash"]
    assert {c["type"]: c["status"] for c in status["conditions"]} == {
        "Ready": "True",
        "Progressing": "False",
        "Degraded": "False",
        "Authenticated": "False",  # no spec.access: anyone may call
    }
    # Events are for what a person should act on: applying children is the routine, told by status
    assert not any(e.type == "Normal" for e in bots.events("helpdesk"))
    # two replicas keeping conversations in memory would split them: said in the condition and an Event
    assert "set spec.sessionStore.type to redis" in bots.condition("helpdesk", "Ready")["message"]
    assert any(e.reason == "InMemorySessions" and e.type == "Warning" for e in bots.events("helpdesk"))


def test_a_keyless_azure_openai_bot_runs_with_its_workload_identity(bots: Bots, cluster: ClusterInfo) -> None:
    bots.core.create_namespaced_service_account(
        bots.ns,
        client.V1ServiceAccount(
            metadata=client.V1ObjectMeta(
                name="helpdesk-wi", annotations={"azure.workload.identity/client-id": "5c9d3f1e-client"}
            )
        ),
    )
    manifest = bot_manifest(
        "azurebot",
        model="gpt-4o",
        serviceAccountName="helpdesk-wi",
        azureOpenAI={"endpoint": "https://contoso.openai.azure.com", "deployment": "chat-prod"},
    )
    del manifest["spec"]["openAI"]
    bots.create(manifest)
    bots.ready("azurebot", 1)
    template = bots.deployment("azurebot").spec.template
    assert template.metadata.labels["azure.workload.identity/use"] == "true"
    assert template.spec.service_account_name == "helpdesk-wi"
    cm = bots.core.read_namespaced_config_map("azurebot-config", bots.ns)
    assert cm.data["azure_openai_endpoint"] == "https://contoso.openai.azure.com"
    assert cm.data["azure_openai_deployment"] == "chat-prod"
    assert not any(s.secret for s in template.spec.volumes[0].projected.sources)  # no key anywhere
    listed = kubectl(cluster, "-n", bots.ns, "get", "chatbots", "azurebot").stdout.splitlines()
    header, row = listed[0].split(), listed[1].split()
    assert header[:3] == ["NAME", "MODEL", "AZURE-DEPLOYMENT"], listed
    assert row[:3] == ["azurebot", "gpt-4o", "chat-prod"], listed


def test_a_redis_session_store_comes_from_its_secret(bots: Bots) -> None:
    bots.secret()
    bots.create(
        bot_manifest(
            "shared", replicas=3, sessionStore={"type": "redis", "redisUrlSecretRef": {"name": "redis"}}
        )
    )

    def degraded() -> None:
        condition = bots.condition("shared", "Degraded")
        assert condition["reason"] == "SecretNotFound" and "'redis'" in condition["message"], condition

    eventually(degraded, timeout=30, what="the missing Redis Secret reported")
    bots.secret(name="redis", key="url", value="redis://:pw@redis.cache:6379/0")
    bot = bots.ready("shared", 3)
    assert "warning" not in bots.condition("shared", "Ready")["message"]
    cm = bots.core.read_namespaced_config_map("shared-config", bots.ns)
    assert cm.data["session_store"] == "redis"
    assert "redis://" not in str(bot) and "redis://" not in str(cm.data)
    assert not any(e.reason == "InMemorySessions" for e in bots.events("shared"))


def test_compaction_in_the_spec_reaches_the_pods(bots: Bots) -> None:
    bots.secret()
    bots.create(bot_manifest("compacting", context={"mode": "compact", "summaryPrompt": "Keep every name."}))
    bots.ready("compacting", 1)
    cm = bots.core.read_namespaced_config_map("compacting-config", bots.ns)
    # the API server filled in the schema's default threshold; the service reads the same JSON keys
    assert json.loads(cm.data["context"]) == {
        "mode": "compact",
        "threshold": 0.75,
        "summaryPrompt": "Keep every name.",
    }


def test_metrics_off_in_the_spec_reaches_the_pods(bots: Bots) -> None:
    bots.secret()
    bots.create(bot_manifest("quiet", observability={"metrics": False}))
    bots.create(bot_manifest("scraped", observability={}))
    # The API server kept the field (not pruned) and defaulted it where it was left out.
    assert bots.get("quiet")["spec"]["observability"] == {"metrics": False}
    assert bots.get("scraped")["spec"]["observability"] == {"metrics": True}

    def template(name: str) -> Any:
        return eventually(
            lambda: bots.deployment(name).spec.template, timeout=60, what=f"{name}'s Deployment"
        )

    quiet, scraped = template("quiet"), template("scraped")
    assert quiet.metadata.labels["kubechat.dev/metrics"] == "off"
    assert {(e.name, e.value) for e in quiet.spec.containers[0].env} >= {("KUBECHAT_METRICS", "off")}
    assert "kubechat.dev/metrics" not in scraped.metadata.labels
    assert "KUBECHAT_METRICS" not in {e.name for e in scraped.spec.containers[0].env}


def test_kubectl_scale_scales_without_a_rollout(bots: Bots, cluster: ClusterInfo) -> None:
    bots.secret()
    bots.create(bot_manifest("scaled"))
    bots.ready("scaled", 1)
    template_hash = bots.deployment("scaled").spec.template.metadata.annotations["kubechat.dev/config-hash"]
    kubectl(cluster, "-n", bots.ns, "scale", "chatbot/scaled", "--replicas=3")
    bots.ready("scaled", 3)
    assert bots.deployment("scaled").spec.replicas == 3
    listed = kubectl(cluster, "-n", bots.ns, "get", "chatbots").stdout
    assert "scaled" in listed and "True" in listed
    assert len(bots.replica_sets("scaled")) == 1, "scaling must not roll the pods"
    assert (
        bots.deployment("scaled").spec.template.metadata.annotations["kubechat.dev/config-hash"]
        == template_hash
    )
    kubectl(cluster, "-n", bots.ns, "scale", "chatbot/scaled", "--replicas=0")

    def scaled_to_zero() -> None:
        assert bots.condition("scaled", "Ready")["reason"] == "ScaledToZero", bots.get("scaled")["status"]
        assert bots.get("scaled")["status"]["readyReplicas"] == 0

    eventually(scaled_to_zero, timeout=60, what="scaled to zero")
    assert bots.deployment("scaled").spec.replicas == 0


def test_a_prompt_change_rolls_the_pods(bots: Bots) -> None:
    bots.secret()
    bots.create(bot_manifest("rolling"))
    first = bots.ready("rolling", 1)["status"]["configHash"]
    bots.patch("rolling", {"spec": {"systemPrompt": "You are a different bot."}})

    def rolled() -> None:
        assert len(bots.replica_sets("rolling")) == 2
        cm = bots.core.read_namespaced_config_map("rolling-config", bots.ns)
        assert cm.data["system_prompt"] == "You are a different bot."

    eventually(rolled, timeout=30, what="a new ReplicaSet for the new prompt")
    bot = bots.ready("rolling", 1)
    assert bot["status"]["configHash"] != first


def test_the_service_type_follows_the_spec_there_and_back(bots: Bots) -> None:
    """The operator leaves a ClusterIP type out of what it applies (the server's default): switching a
    NodePort bot back must still give a ClusterIP Service, its node port released."""
    bots.secret()
    bots.create(bot_manifest("exposed", service={"type": "NodePort"}))

    def node_port() -> None:
        svc = bots.core.read_namespaced_service("exposed", bots.ns)
        assert svc.spec.type == "NodePort" and svc.spec.ports[0].node_port, svc.spec

    eventually(node_port, timeout=30, what="a NodePort Service")
    bots.patch("exposed", {"spec": {"service": {"type": "ClusterIP"}}})

    def cluster_ip() -> None:
        svc = bots.core.read_namespaced_service("exposed", bots.ns)
        assert svc.spec.type == "ClusterIP" and not svc.spec.ports[0].node_port, svc.spec

    eventually(cluster_ip, timeout=30, what="back to a ClusterIP Service")


def test_deleting_a_bot_garbage_collects_its_children(bots: Bots) -> None:
    bots.secret()
    bots.create(bot_manifest("doomed"))
    bots.ready("doomed", 1)
    bots.custom.delete_namespaced_custom_object(GROUP, VERSION, bots.ns, PLURAL, "doomed")

    def gone() -> None:
        for read in (
            lambda: bots.deployment("doomed"),
            lambda: bots.core.read_namespaced_service("doomed", bots.ns),
            lambda: bots.core.read_namespaced_config_map("doomed-config", bots.ns),
        ):
            try:
                found = read()
            except ApiException as exc:
                if exc.status != 404:
                    raise
            else:
                raise AssertionError(f"{found.kind} {found.metadata.name} still exists")

    eventually(gone, timeout=60, what="children garbage-collected")


def test_children_deleted_or_edited_by_hand_are_put_back(bots: Bots) -> None:
    bots.secret()
    bots.create(bot_manifest("sturdy", replicas=2))
    bots.ready("sturdy", 2)
    bots.apps.delete_namespaced_deployment("sturdy", bots.ns)
    eventually(lambda: bots.deployment("sturdy"), timeout=20, what="Deployment restored")
    bots.ready("sturdy", 2)
    bots.apps.patch_namespaced_deployment("sturdy", bots.ns, {"spec": {"replicas": 5}})
    eventually(
        lambda: _assert_equal(bots.deployment("sturdy").spec.replicas, 2),
        timeout=20,
        what="hand-edited replicas put back",
    )
    bots.core.delete_namespaced_service("sturdy", bots.ns)
    eventually(
        lambda: bots.core.read_namespaced_service("sturdy", bots.ns), timeout=20, what="Service restored"
    )
    bots.core.patch_namespaced_config_map("sturdy-config", bots.ns, {"data": {"model": "gpt-3.5-turbo"}})
    eventually(
        lambda: _assert_equal(
            bots.core.read_namespaced_config_map("sturdy-config", bots.ns).data.get("model"), "gpt-4o-mini"
        ),
        timeout=20,
        what="hand-edited ConfigMap put back",
    )
    assert any(e.reason == "Restored" for e in bots.events("sturdy"))


def _assert_equal(a: object, b: object) -> None:
    assert a == b, f"{a!r} != {b!r}"


def test_a_missing_secret_degrades_the_bot_until_it_appears(bots: Bots) -> None:
    bots.create(bot_manifest("waiting"))

    def degraded() -> dict[str, Any]:
        condition = bots.condition("waiting", "Degraded")
        assert condition["status"] == "True" and condition["reason"] == "SecretNotFound", condition
        return condition

    condition = eventually(degraded, timeout=30, what="Degraded for the missing Secret")
    assert "'openai'" in condition["message"]
    assert bots.condition("waiting", "Ready")["status"] == "False"
    assert bots.deployment("waiting") is not None  # pods run, not ready, and heal once the Secret exists
    assert any(e.reason == "SecretNotFound" and e.type == "Warning" for e in bots.events("waiting"))
    bots.secret(value="sk-secret-value-never-shown")
    bots.ready("waiting", 1)
    assert bots.condition("waiting", "Degraded")["status"] == "False"
    everything = str(bots.get("waiting")) + str([e.message for e in bots.events("waiting")])
    assert "sk-secret-value-never-shown" not in everything


def test_an_unusable_spec_is_reported_not_retried_forever(bots: Bots) -> None:
    bots.secret()
    # the CRD cannot know every rule of a pod spec: a service account name must be a DNS subdomain
    bots.create(bot_manifest("odd", serviceAccountName="Not_A_Name"))

    def reported() -> None:
        condition = bots.condition("odd", "Ready")
        assert condition["reason"] == "InvalidSpec" and "serviceAccountName" in condition["message"], (
            condition
        )

    eventually(reported, timeout=30, what="InvalidSpec reported")
    assert any(e.reason == "InvalidSpec" for e in bots.events("odd"))


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"systemPrompt": "hi", "colour": "red"}, 'unknown field "spec.colour"'),
        (
            {"openAI": {"apiKeySecretRef": {"name": "k"}}},
            "set exactly one of systemPrompt and systemPromptFrom",
        ),
        (
            {
                "systemPrompt": "hi",
                "systemPromptFrom": {"configMapKeyRef": {"name": "p", "key": "k"}},
                "openAI": {"apiKeySecretRef": {"name": "k"}},
            },
            "set exactly one of systemPrompt and systemPromptFrom",
        ),
        ({"systemPrompt": "   ", "openAI": {"apiKeySecretRef": {"name": "k"}}}, "must not be empty"),
        ({"systemPrompt": "hi"}, "the bot needs a source for its OpenAI key"),
        (
            {
                "systemPrompt": "hi",
                "openAI": {"apiKeySecretRef": {"name": "k"}},
                "azureOpenAI": {"endpoint": "https://c.openai.azure.com", "deployment": "chat"},
            },
            "azureOpenAI replaces openAI: set one of them",
        ),
        (
            {
                "systemPrompt": "hi",
                "azureOpenAI": {"endpoint": "http://c.openai.azure.com", "deployment": "d"},
            },
            "spec.azureOpenAI.endpoint in body should match",
        ),
        (
            {
                "systemPrompt": "hi",
                "azureOpenAI": {
                    "endpoint": "https://c.openai.azure.com",
                    "deployment": "d",
                    "apiVersion": "x",
                },
            },
            "spec.azureOpenAI.apiVersion in body should match",
        ),
        (
            {
                "systemPrompt": "hi",
                "appConfiguration": {
                    "endpoint": "https://x.azconfig.io",
                    "connectionStringSecretRef": {"name": "c"},
                },
            },
            "exactly one of endpoint (workload identity) and connectionStringSecretRef",
        ),
        ({"systemPrompt": "hi", "appConfiguration": {}}, "exactly one of endpoint"),
        (
            {
                "systemPrompt": "hi",
                "openAI": {"apiKeySecretRef": {"name": "k"}},
                "sessionStore": {"type": "redis"},
            },
            "sessionStore.type redis needs sessionStore.redisUrlSecretRef",
        ),
        (
            {"systemPrompt": "hi", "temperature": 3, "openAI": {"apiKeySecretRef": {"name": "k"}}},
            "spec.temperature: Invalid value: 3: spec.temperature in body should be less than or equal to 2",
        ),
        (
            {
                "systemPrompt": "hi",
                "context": {"mode": "squash"},
                "openAI": {"apiKeySecretRef": {"name": "k"}},
            },
            'spec.context.mode: Unsupported value: "squash": supported values: "trim", "compact"',
        ),
        (
            {
                "systemPrompt": "hi",
                "context": {"mode": "compact", "threshold": 1},
                "openAI": {"apiKeySecretRef": {"name": "k"}},
            },
            "spec.context.threshold: Invalid value: 1: must be from 0.1 to 0.95",
        ),
        (
            {"systemPrompt": "hi", "replicas": -1, "openAI": {"apiKeySecretRef": {"name": "k"}}},
            "spec.replicas in body should be greater than or equal to 0",
        ),
        (
            {
                "systemPrompt": "hi",
                "resources": {"requests": {"cpu": "lots"}},
                "openAI": {"apiKeySecretRef": {"name": "k"}},
            },
            "spec.resources.requests.cpu in body should match",
        ),
    ],
)
def test_invalid_bots_are_rejected_by_the_api_server(
    cluster: ClusterInfo, namespace: str, operator: Operator, spec: dict[str, Any], message: str
) -> None:
    manifest = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ChatBot",
        "metadata": {"name": "bad"},
        "spec": spec,
    }
    done = kubectl(cluster, "-n", namespace, "apply", "-f", "-", stdin=json.dumps(manifest), check=False)
    assert done.returncode != 0
    assert message in done.stderr, done.stderr


def test_a_bad_name_is_rejected(cluster: ClusterInfo, namespace: str, operator: Operator) -> None:
    import json

    manifest = bot_manifest("a" * 60)
    done = kubectl(cluster, "-n", namespace, "apply", "-f", "-", stdin=json.dumps(manifest), check=False)
    assert "must be a DNS label of at most 58 characters" in done.stderr


def test_a_restarted_operator_makes_no_duplicates_and_no_rollout(bots: Bots, operator: Operator) -> None:
    bots.secret()
    bots.create(bot_manifest("steady", replicas=2))
    bots.ready("steady", 2)
    before = bots.deployment("steady")
    rs_before = [rs.metadata.name for rs in bots.replica_sets("steady")]
    operator.stop()
    operator.start()
    bots.patch("steady", {"spec": {"replicas": 3}})  # a change only the restarted operator can carry out
    bots.ready("steady", 3)
    after = bots.deployment("steady")
    assert after.metadata.uid == before.metadata.uid
    hash_key = "kubechat.dev/config-hash"
    assert (
        after.spec.template.metadata.annotations[hash_key]
        == before.spec.template.metadata.annotations[hash_key]
    )
    assert [rs.metadata.name for rs in bots.replica_sets("steady")] == rs_before, "no spurious rollout"
    assert len(bots.apps.list_namespaced_deployment(bots.ns).items) == 1
    assert len(bots.core.list_namespaced_service(bots.ns).items) == 1
