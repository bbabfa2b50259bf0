from __future__ import annotations

import copy
import json
from typing import Any

from kubechat_operator.render import METRICS_LABEL, OperatorDefaults, render, settings_data
from kubechat_operator.spec import parse


def secret_refs(spec: dict[str, Any]) -> list[tuple[str, str]]:
    return [(name, key) for name, key, _ in parse(spec).secret_refs()]


def splits_conversations(spec: dict[str, Any]) -> bool:
    return parse(spec).splits_conversations


def bot(**spec: Any) -> dict[str, Any]:
    base = {
        "systemPrompt": "Be brief.",
        "model": "gpt-4o-mini",
        "replicas": 1,
        "openAI": {"apiKeySecretRef": {"name": "openai", "key": "apiKey"}},
    }
    return {
        "metadata": {"name": "helpdesk", "namespace": "team", "uid": "u-1", "generation": 1},
        "spec": base | spec,
    }


def test_children_have_fixed_names_owners_and_labels() -> None:
    children = render(bot(), OperatorDefaults())
    names = [(c["kind"], c["metadata"]["name"]) for c in children.all()]
    assert names == [("ConfigMap", "helpdesk-config"), ("Deployment", "helpdesk"), ("Service", "helpdesk")]
    for child in children.all():
        (owner,) = child["metadata"]["ownerReferences"]
        assert owner["uid"] == "u-1" and owner["controller"] is True and owner["kind"] == "ChatBot"
        assert child["metadata"]["namespace"] == "team"
    assert render(bot(), OperatorDefaults()) == children  # rendering is deterministic


def test_replicas_scale_without_changing_the_template() -> None:
    one, five = render(bot(replicas=1), OperatorDefaults()), render(bot(replicas=5), OperatorDefaults())
    assert five.deployment["spec"]["replicas"] == 5
    assert one.deployment["spec"]["template"] == five.deployment["spec"]["template"]
    assert one.config_hash == five.config_hash


def test_anything_the_pods_read_changes_the_hash() -> None:
    base = render(bot(), OperatorDefaults()).config_hash
    for change in (
        {"systemPrompt": "Be long."},
        {"model": "gpt-4.1"},
        {"temperature": 0.3},
        {"image": "other:1"},
        {"openAI": {"apiKeySecretRef": {"name": "other"}}},
    ):
        assert render(bot(**change), OperatorDefaults()).config_hash != base, change


def test_a_refresh_request_reaches_the_pods_without_a_rollout() -> None:
    plain = bot()
    asked = copy.deepcopy(plain)
    asked["metadata"]["annotations"] = {"kubechat.dev/refresh-requested-at": "2026-11-24T20:00:00Z"}
    a, b = render(plain, OperatorDefaults()), render(asked, OperatorDefaults())
    assert b.config_map["data"]["refresh_requested_at"] == "2026-11-24T20:00:00Z"
    assert a.config_hash == b.config_hash
    assert a.deployment == b.deployment


def test_settings_carry_only_what_the_spec_sets() -> None:
    data = settings_data(
        "b",
        parse(
            {
                "systemPrompt": "p",
                "model": "m",
                "maxReplyTokens": 300,
                "temperature": 1.0,
                "openAI": {"baseUrl": "https://x/v1"},
            }
        ),
        {},
    )
    assert data == {
        "bot_name": "b",
        "system_prompt": "p",
        "model": "m",
        "max_reply_tokens": "300",
        "temperature": "1.0",
        "openai_base_url": "https://x/v1",
    }


def test_compaction_reaches_the_pods_and_changes_the_hash() -> None:
    context = {"mode": "compact", "threshold": 0.6, "summaryPrompt": "Keep every name."}
    data = settings_data("b", parse({"context": context}), {})
    assert json.loads(data["context"]) == context
    assert "context" not in settings_data("b", parse({}), {})
    trimmed = render(bot(), OperatorDefaults())
    compacted = render(bot(context=context), OperatorDefaults())
    assert trimmed.config_hash != compacted.config_hash


def test_the_key_is_a_file_from_an_optional_secret_never_an_env_var() -> None:
    dep = render(bot(), OperatorDefaults()).deployment
    pod = dep["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert all("secretKeyRef" not in e.get("valueFrom", {}) for e in container["env"])
    limit = {"resourceFieldRef": {"containerName": "bot", "resource": "limits.memory"}}
    assert {"name": "KUBECHAT_MEMORY_LIMIT", "valueFrom": limit} in container["env"]
    sources = pod["volumes"][0]["projected"]["sources"]
    assert {
        "secret": {"name": "openai", "items": [{"key": "apiKey", "path": "openai_api_key"}], "optional": True}
    } in sources
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["automountServiceAccountToken"] is False


def test_prompt_from_a_config_map_and_app_configuration_with_a_connection_string() -> None:
    spec = bot(
        systemPromptFrom={"configMapKeyRef": {"name": "prompts", "key": "helpdesk"}},
        appConfiguration={"connectionStringSecretRef": {"name": "appconf"}, "label": "prd"},
    )
    del spec["spec"]["systemPrompt"]
    del spec["spec"]["openAI"]
    children = render(spec, OperatorDefaults())
    pod = children.deployment["spec"]["template"]["spec"]
    sources = pod["volumes"][0]["projected"]["sources"]
    assert {
        "configMap": {"name": "prompts", "items": [{"key": "helpdesk", "path": "system_prompt"}]}
    } in sources
    env = {e["name"]: e["value"] for e in pod["containers"][0]["env"] if "value" in e}
    assert (
        env["KUBECHAT_APPCONFIG_CONNECTION_STRING_FILE"] == "/etc/kubechat/config/appconfig/connection_string"
    )
    assert env["KUBECHAT_APPCONFIG_KEY_PREFIX"] == "helpdesk:"
    assert env["KUBECHAT_APPCONFIG_LABEL"] == "prd"
    assert "system_prompt" not in children.config_map["data"]
    assert secret_refs(spec["spec"]) == [("appconf", "connectionString")]


def test_workload_identity_pods_get_their_service_account() -> None:
    spec = bot(serviceAccountName="helpdesk-wi", appConfiguration={"endpoint": "https://s.azconfig.io"})
    pod = render(spec, OperatorDefaults(image="reg/bot:1", image_pull_policy="Always")).deployment["spec"][
        "template"
    ]["spec"]
    assert pod["serviceAccountName"] == "helpdesk-wi" and pod["automountServiceAccountToken"] is True
    template = render(spec, OperatorDefaults()).deployment["spec"]["template"]
    assert template["metadata"]["labels"]["azure.workload.identity/use"] == "true"
    assert (
        "azure.workload.identity/use"
        not in render(bot(), OperatorDefaults()).deployment["spec"]["template"]["metadata"]["labels"]
    )
    assert (
        pod["containers"][0]["image"] == "reg/bot:1" and pod["containers"][0]["imagePullPolicy"] == "Always"
    )


def test_a_redis_session_store_is_wired_from_its_secret() -> None:
    spec = bot(
        replicas=3, sessionStore={"type": "redis", "redisUrlSecretRef": {"name": "redis", "key": "url"}}
    )
    children = render(spec, OperatorDefaults())
    assert children.config_map["data"]["session_store"] == "redis"
    sources = children.deployment["spec"]["template"]["spec"]["volumes"][0]["projected"]["sources"]
    assert {
        "secret": {"name": "redis", "items": [{"key": "url", "path": "redis_url"}], "optional": True}
    } in sources
    assert ("redis", "url") in secret_refs(spec["spec"])
    assert not splits_conversations(spec["spec"])
    assert splits_conversations(bot(replicas=2)["spec"])
    assert not splits_conversations(bot(replicas=1)["spec"])


def test_access_mounts_the_keys_and_grants_exactly_token_review() -> None:
    access = {"apiKeys": {"secretRef": {"name": "helpdesk-keys"}}, "serviceAccounts": {"namespaces": ["a"]}}
    limits = {"perIdentity": {"tokens": {"day": 1000}}}
    children = render(bot(access=access, limits=limits), OperatorDefaults())
    kinds = [(c["kind"], c["metadata"]["name"]) for c in children.all()]
    assert kinds[:2] == [
        ("ServiceAccount", "helpdesk-chatbot"),
        ("ClusterRoleBinding", "kubechat-tokenreview:team:helpdesk"),
    ]
    binding = children.access[1]
    assert binding["roleRef"]["name"] == "kubechat-tokenreview"
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "helpdesk-chatbot", "namespace": "team"}
    ]
    assert "ownerReferences" not in binding["metadata"]  # cluster-scoped: deleted by the operator
    pod = children.deployment["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "helpdesk-chatbot" and pod["automountServiceAccountToken"] is True
    (keys,) = [v for v in pod["volumes"] if v["name"] == "api-keys"]
    assert keys["secret"] == {"secretName": "helpdesk-keys", "optional": True, "defaultMode": 0o440}
    container = pod["containers"][0]
    assert {"name": "KUBECHAT_API_KEYS_DIR", "value": "/etc/kubechat/api-keys"} in container["env"]
    assert {"name": "api-keys", "mountPath": "/etc/kubechat/api-keys", "readOnly": True} in container[
        "volumeMounts"
    ]
    data = children.config_map["data"]
    assert json.loads(data["access"]) == access and json.loads(data["limits"]) == limits
    assert ("helpdesk-keys", "any: one entry per client") in parse(
        bot(access=access)["spec"]
    ).required_secrets()
    # the pods of a bot with its own service account use that one, and no account is rendered
    own = render(bot(access=access, serviceAccountName="mine"), OperatorDefaults())
    assert [c["kind"] for c in own.access] == ["ClusterRoleBinding"]
    assert own.access[0]["subjects"][0]["name"] == "mine"
    # without access, no extra children and no token
    plain = render(bot(), OperatorDefaults())
    assert (
        plain.access == ()
        and plain.deployment["spec"]["template"]["spec"]["automountServiceAccountToken"] is False
    )


def test_a_keyless_azure_openai_bot_gets_the_workload_identity_label_and_its_settings() -> None:
    spec = bot(
        serviceAccountName="helpdesk-wi",
        azureOpenAI={"endpoint": "https://contoso.openai.azure.com", "deployment": "chat-prod"},
    )
    del spec["spec"]["openAI"]
    children = render(spec, OperatorDefaults())
    template = children.deployment["spec"]["template"]
    assert template["metadata"]["labels"]["azure.workload.identity/use"] == "true"
    assert template["spec"]["serviceAccountName"] == "helpdesk-wi"
    data = children.config_map["data"]
    assert data["azure_openai_endpoint"] == "https://contoso.openai.azure.com"
    assert data["azure_openai_deployment"] == "chat-prod" and "azure_openai_api_version" not in data
    assert secret_refs(spec["spec"]) == []
    keyed = bot(
        azureOpenAI={
            "endpoint": "https://contoso.openai.azure.com",
            "deployment": "chat-prod",
            "apiVersion": "2024-10-21",
            "apiKeySecretRef": {"name": "aoai", "key": "key1"},
        }
    )
    del keyed["spec"]["openAI"]
    children = render(keyed, OperatorDefaults())
    assert "azure.workload.identity/use" not in children.deployment["spec"]["template"]["metadata"]["labels"]
    assert children.config_map["data"]["azure_openai_api_version"] == "2024-10-21"
    assert parse(keyed["spec"]).secret_refs() == [("aoai", "key1", "azure_openai_api_key")]


def test_metrics_off_reaches_the_pods_as_an_env_var_and_a_label() -> None:
    quiet = render(bot(observability={"metrics": False}), OperatorDefaults()).deployment["spec"]["template"]
    (container,) = quiet["spec"]["containers"]
    assert {"name": "KUBECHAT_METRICS", "value": "off"} in container["env"]
    assert quiet["metadata"]["labels"][METRICS_LABEL] == "off"
    # On (the default, or said): the pods are exactly as they were before the field existed.
    default = render(bot(), OperatorDefaults()).deployment["spec"]["template"]
    assert render(bot(observability={"metrics": True}), OperatorDefaults()).deployment["spec"][
        "template"
    ] == (default)
    assert "KUBECHAT_METRICS" not in {e["name"] for e in default["spec"]["containers"][0]["env"]}
    assert METRICS_LABEL not in default["metadata"]["labels"]
