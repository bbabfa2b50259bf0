"""ChatBot spec -> the children that serve it. Pure: dicts in, dicts out, no I/O.

Every child has a fixed name derived from the bot, so rendering twice gives the same objects and
server-side apply makes the cluster match them (idempotent reconcile, no create-if-missing).
The pod template carries a hash of everything that needs new pods; replicas are not in it, so
scaling never rolls, and the prompt and settings are in it, so changing them always does.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from kubechat_operator import GROUP, VERSION

APP_PORT = 8080
CONFIG_DIR = "/etc/kubechat/config"
API_KEYS_DIR = "/etc/kubechat/api-keys"  # the access.apiKeys Secret, one file per client
#: Shipped by the Helm chart: create TokenReviews, nothing else; bound to a bot's pods when it needs it.
TOKENREVIEW_ROLE = "kubechat-tokenreview"
CONNECTION_STRING_PATH = "appconfig/connection_string"  # inside CONFIG_DIR; a directory, so not a setting
HASH_ANNOTATION = "kubechat.dev/config-hash"
REFRESH_ANNOTATION = "kubechat.dev/refresh-requested-at"
BOT_LABEL = "kubechat.dev/bot"

# Measured: ~107 MiB RSS idle, ~175 MiB with the session store full (its budget from the 256Mi limit).
DEFAULT_RESOURCES = {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "256Mi"}}

# spec field -> canonical setting name (the chat service's file names in its config dir)
_SPEC_SETTINGS = {
    "systemPrompt": "system_prompt",
    "model": "model",
    "temperature": "temperature",
    "maxContextTokens": "max_context_tokens",
    "maxReplyTokens": "max_reply_tokens",
}


@dataclass(frozen=True)
class OperatorDefaults:
    """What a spec may leave out and the operator fills in (flags, env, Helm values)."""

    image: str = "kubechat/chatbot:0.1.0"
    image_pull_policy: str = "IfNotPresent"


@dataclass(frozen=True)
class Children:
    config_map: dict[str, Any]
    deployment: dict[str, Any]
    service: dict[str, Any]
    config_hash: str
    #: What access.serviceAccounts needs: the pods' ServiceAccount and its TokenReview binding.
    access: tuple[dict[str, Any], ...] = ()

    def all(self) -> list[dict[str, Any]]:
        return [*self.access, self.config_map, self.deployment, self.service]


def labels(bot: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "kubechat",
        "app.kubernetes.io/instance": bot,
        "app.kubernetes.io/managed-by": "kubechat-operator",
        BOT_LABEL: bot,
    }


def selector(bot: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": "kubechat", "app.kubernetes.io/instance": bot}


def selector_string(bot: str) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(selector(bot).items()))


def config_map_name(bot: str) -> str:
    return f"{bot}-config"


def endpoint(bot: str, namespace: str, spec: dict[str, Any]) -> str:
    port = (spec.get("service") or {}).get("port", 80)
    suffix = "" if port == 80 else f":{port}"
    return f"http://{bot}.{namespace}.svc{suffix}"


def _owner(bot: str, uid: str) -> list[dict[str, Any]]:
    return [
        {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "ChatBot",
            "name": bot,
            "uid": uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]


def _meta(name: str, bot: str, namespace: str, uid: str) -> dict[str, Any]:
    return {"name": name, "namespace": namespace, "labels": labels(bot), "ownerReferences": _owner(bot, uid)}


def settings_data(bot: str, spec: dict[str, Any], annotations: dict[str, str]) -> dict[str, str]:
    """The explicit, non-secret settings of the spec, one entry per canonical key."""
    data = {"bot_name": bot}
    for field, key in _SPEC_SETTINGS.items():
        if spec.get(field) is not None:
            value = spec[field]
            data[key] = json.dumps(value) if isinstance(value, float | int) else str(value)
    base_url = (spec.get("openAI") or {}).get("baseUrl")
    if base_url:
        data["openai_base_url"] = base_url
    store = (spec.get("sessionStore") or {}).get("type")
    if store:
        data["session_store"] = store
    for field in ("access", "limits"):  # the service parses and validates them (chatbot_service.policy)
        if spec.get(field):
            data[field] = json.dumps(spec[field], sort_keys=True, separators=(",", ":"))
    refresh = annotations.get(REFRESH_ANNOTATION)
    if refresh:
        data["refresh_requested_at"] = refresh  # changes a file: pods reload now, without a rollout
    return data


def _projected_sources(bot: str, spec: dict[str, Any]) -> list[dict[str, Any]]:
    """Everything the service reads from files, in one directory: settings, prompt, key, connection string.

    Secrets are mounted ``optional`` so a missing one leaves the pod running and not ready (its
    ``/readyz`` says what is missing) instead of stuck, and it heals once the Secret appears.
    """
    sources: list[dict[str, Any]] = [{"configMap": {"name": config_map_name(bot)}}]
    prompt_map = (spec.get("systemPromptFrom") or {}).get("configMapKeyRef")
    if prompt_map:
        items = [{"key": prompt_map["key"], "path": "system_prompt"}]
        sources.append({"configMap": {"name": prompt_map["name"], "items": items}})
    for name, key, path in secret_mounts(spec):
        sources.append({"secret": {"name": name, "items": [{"key": key, "path": path}], "optional": True}})
    return sources


def _env(bot: str, spec: dict[str, Any]) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [
        {"name": "KUBECHAT_CONFIG_DIR", "value": CONFIG_DIR},
        {"name": "KUBECHAT_BOT_NAME", "value": bot},
        {"name": "HOME", "value": "/tmp"},
        # The bot sizes its in-memory session store from its memory limit (no value: the node's memory).
        {
            "name": "KUBECHAT_MEMORY_LIMIT",
            "valueFrom": {"resourceFieldRef": {"containerName": "bot", "resource": "limits.memory"}},
        },
    ]
    app_config = spec.get("appConfiguration")
    if (spec.get("access") or {}).get("apiKeys"):
        env.append({"name": "KUBECHAT_API_KEYS_DIR", "value": API_KEYS_DIR})
    if app_config:
        if app_config.get("endpoint"):
            env.append({"name": "KUBECHAT_APPCONFIG_ENDPOINT", "value": app_config["endpoint"]})
        else:
            env.append(
                {
                    "name": "KUBECHAT_APPCONFIG_CONNECTION_STRING_FILE",
                    "value": f"{CONFIG_DIR}/{CONNECTION_STRING_PATH}",
                }
            )
        env.append({"name": "KUBECHAT_APPCONFIG_KEY_PREFIX", "value": app_config.get("keyPrefix", f"{bot}:")})
        if app_config.get("label"):
            env.append({"name": "KUBECHAT_APPCONFIG_LABEL", "value": app_config["label"]})
        env.append(
            {
                "name": "KUBECHAT_APPCONFIG_REFRESH_INTERVAL",
                "value": str(app_config.get("refreshInterval", 30)),
            }
        )
    return env


def config_hash(data: dict[str, str], template: dict[str, Any]) -> str:
    """Changes exactly when pods must be replaced: settings (except a refresh request) or template."""
    stable = {k: v for k, v in data.items() if k != "refresh_requested_at"}
    blob = json.dumps({"settings": stable, "template": template}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def render(body: dict[str, Any], defaults: OperatorDefaults) -> Children:
    """Render a ChatBot (as the API server returns it, defaults applied) into its children."""
    meta = body["metadata"]
    bot, namespace, uid = meta["name"], meta["namespace"], meta["uid"]
    spec = body.get("spec") or {}
    data = settings_data(bot, spec, meta.get("annotations") or {})
    config_map = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta(config_map_name(bot), bot, namespace, uid),
        "data": data,
    }
    container: dict[str, Any] = {
        "name": "bot",
        "image": spec.get("image") or defaults.image,
        "imagePullPolicy": spec.get("imagePullPolicy") or defaults.image_pull_policy,
        "args": ["serve", "--host", "0.0.0.0", "--port", str(APP_PORT)],
        "ports": [{"name": "http", "containerPort": APP_PORT, "protocol": "TCP"}],
        "env": _env(bot, spec),
        "readinessProbe": {
            "httpGet": {"path": "/readyz", "port": "http"},
            "periodSeconds": 5,
            "failureThreshold": 2,
        },
        "livenessProbe": {
            "httpGet": {"path": "/healthz", "port": "http"},
            "periodSeconds": 10,
            "failureThreshold": 3,
        },
        "resources": spec.get("resources") or DEFAULT_RESOURCES,
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumeMounts": [
            {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
    }
    pod_spec: dict[str, Any] = {
        "containers": [container],
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": 10001,
            "runAsGroup": 10001,
            "fsGroup": 10001,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "automountServiceAccountToken": bool(spec.get("serviceAccountName") or _reviews_tokens(spec)),
        "volumes": [
            {"name": "config", "projected": {"sources": _projected_sources(bot, spec), "defaultMode": 0o440}},
            {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}},
        ],
    }
    account = spec.get("serviceAccountName") or (bot_account(bot) if _reviews_tokens(spec) else None)
    if account:
        pod_spec["serviceAccountName"] = account
    keys = ((spec.get("access") or {}).get("apiKeys") or {}).get("secretRef")
    if keys:  # its own volume: a client's entry name is a file name, and must not meet the settings
        pod_spec["volumes"].append(
            {
                "name": "api-keys",
                "secret": {"secretName": keys["name"], "optional": True, "defaultMode": 0o440},
            }
        )
        container["volumeMounts"].append({"name": "api-keys", "mountPath": API_KEYS_DIR, "readOnly": True})
    pod_labels = labels(bot)
    if (spec.get("appConfiguration") or {}).get("endpoint"):
        # Azure workload identity: the webhook injects AZURE_CLIENT_ID, AZURE_TENANT_ID and the token file
        # into pods carrying this label whose service account names the identity.
        pod_labels["azure.workload.identity/use"] = "true"
    template = {"metadata": {"labels": pod_labels}, "spec": pod_spec}
    digest = config_hash(data, template)
    template["metadata"]["annotations"] = {HASH_ANNOTATION: digest}
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(bot, bot, namespace, uid),
        "spec": {
            "replicas": spec.get("replicas", 1),
            "selector": {"matchLabels": selector(bot)},
            "template": template,
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
        },
    }
    svc_spec = spec.get("service") or {}
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(bot, bot, namespace, uid),
        "spec": {
            "type": svc_spec.get("type", "ClusterIP"),
            "selector": selector(bot),
            "ports": [
                {"name": "http", "port": svc_spec.get("port", 80), "targetPort": "http", "protocol": "TCP"}
            ],
        },
    }
    access = _access_children(bot, namespace, uid, spec, account) if _reviews_tokens(spec) else ()
    return Children(config_map, deployment, service, digest, access)


def bot_account(bot: str) -> str:
    return f"{bot}-chatbot"


def tokenreview_binding_name(bot: str, namespace: str) -> str:
    return f"kubechat-tokenreview:{namespace}:{bot}"


def _reviews_tokens(spec: dict[str, Any]) -> bool:
    return bool((spec.get("access") or {}).get("serviceAccounts") is not None)


def _access_children(
    bot: str, namespace: str, uid: str, spec: dict[str, Any], account: str | None
) -> tuple[dict[str, Any], ...]:
    """The pods' ServiceAccount (unless the spec names its own) and a ClusterRoleBinding giving it
    exactly the right to create TokenReviews (cluster-scoped, so it carries no owner reference: the
    operator deletes it with the bot)."""
    children: list[dict[str, Any]] = []
    if not spec.get("serviceAccountName"):
        children.append(
            {
                "apiVersion": "v1",
                "kind": "ServiceAccount",
                "metadata": _meta(bot_account(bot), bot, namespace, uid),
                "automountServiceAccountToken": False,  # the pod mounts its token, nothing else does
            }
        )
    children.append(
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": tokenreview_binding_name(bot, namespace), "labels": labels(bot)},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": TOKENREVIEW_ROLE,
            },
            "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": namespace}],
        }
    )
    return tuple(children)


def secret_mounts(spec: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(Secret name, key, file in the config dir) for every Secret the bot reads: one table serves the
    mounts and the check that the Secrets exist."""
    mounts = []
    for ref, default_key, path in (
        ((spec.get("systemPromptFrom") or {}).get("secretKeyRef"), "", "system_prompt"),
        ((spec.get("openAI") or {}).get("apiKeySecretRef"), "apiKey", "openai_api_key"),
        ((spec.get("sessionStore") or {}).get("redisUrlSecretRef"), "url", "redis_url"),
        (
            (spec.get("appConfiguration") or {}).get("connectionStringSecretRef"),
            "connectionString",
            CONNECTION_STRING_PATH,
        ),
    ):
        if ref:
            mounts.append((ref["name"], ref.get("key", default_key), path))
    return mounts


def secret_refs(spec: dict[str, Any]) -> list[tuple[str, str]]:
    """(Secret name, key) pairs the bot cannot work without."""
    refs = [(name, key) for name, key, _ in secret_mounts(spec)]
    keys = ((spec.get("access") or {}).get("apiKeys") or {}).get("secretRef")
    if keys:
        refs.append((keys["name"], "any: one entry per client"))
    return refs


def splits_conversations(spec: dict[str, Any]) -> bool:
    """More than one replica with conversations in each pod's memory: a user's next turn may land on a
    pod that has never seen the conversation."""
    store = (spec.get("sessionStore") or {}).get("type", "memory")
    return int(spec.get("replicas", 1)) > 1 and store == "memory"
