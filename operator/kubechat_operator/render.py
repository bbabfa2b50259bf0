"""ChatBot spec -> the children that serve it. Pure: dicts in, dicts out, no I/O.

Every child has a fixed name derived from the bot, so rendering twice gives the same objects and
server-side apply makes the cluster match them (idempotent reconcile, no create-if-missing).
The pod template carries a hash of everything that needs new pods; replicas are not in it, so
scaling never rolls, and the prompt and settings are in it, so changing them always does.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kubechat_operator import GROUP, VERSION
from kubechat_operator.spec import CONNECTION_STRING_PATH, Bot, BotSpec

APP_PORT = 8080
CONFIG_DIR = "/etc/kubechat/config"
API_KEYS_DIR = "/etc/kubechat/api-keys"  # the access.apiKeys Secret, one file per client
#: Shipped by the Helm chart: create TokenReviews, nothing else; bound to a bot's pods when it needs it.
TOKENREVIEW_ROLE = "kubechat-tokenreview"
HASH_ANNOTATION = "kubechat.dev/config-hash"
REFRESH_ANNOTATION = "kubechat.dev/refresh-requested-at"
BOT_LABEL = "kubechat.dev/bot"
# A cluster-scoped child (the TokenReview binding) can have no owner reference: these labels name its bot,
# so the operator can tell whose it is, delete it with the bot, and find one a bot deleted while no
# operator ran left behind.
BOT_NAMESPACE_LABEL = "kubechat.dev/bot-namespace"
BOT_UID_LABEL = "kubechat.dev/bot-uid"
METRICS_LABEL = "kubechat.dev/metrics"  # "off" on the pods of a bot with spec.observability.metrics false

# Measured: ~90 MiB RSS idle (bench/service_memory.py), ~175 MiB with the session store full
# (its budget from the 256Mi limit).
DEFAULT_RESOURCES = {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "256Mi"}}


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


def endpoint(bot: str, namespace: str, spec: BotSpec) -> str:
    port = spec.service.port
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


def pull_policy_default(image: str) -> str:
    """The ``imagePullPolicy`` the API server gives a container that sets none: ``Always`` for a tag
    ``latest``, or no tag and no digest; ``IfNotPresent`` otherwise (its ``ParseImageName``)."""
    name, at, _digest = image.partition("@")
    tag = name.rsplit("/", 1)[-1].partition(":")[2]
    return "Always" if tag == "latest" or (not tag and not at) else "IfNotPresent"


def _number(value: float | int) -> str:
    return json.dumps(value)


def settings_data(bot: str, spec: BotSpec, annotations: Mapping[str, str]) -> dict[str, str]:
    """The explicit, non-secret settings of the spec, one entry per canonical key (the chat service's
    file names in its config dir); what the spec leaves unset is left to App Configuration or the service."""
    data = {"bot_name": bot}
    if spec.system_prompt is not None:
        data["system_prompt"] = spec.system_prompt
    data["model"] = spec.model
    if spec.temperature is not None:
        data["temperature"] = _number(spec.temperature)
    if spec.max_context_tokens is not None:
        data["max_context_tokens"] = _number(spec.max_context_tokens)
    if spec.max_reply_tokens is not None:
        data["max_reply_tokens"] = _number(spec.max_reply_tokens)
    if spec.context is not None:
        data["context"] = json.dumps(spec.context.as_setting(), sort_keys=True, separators=(",", ":"))
    if spec.open_ai.base_url:
        data["openai_base_url"] = spec.open_ai.base_url
    azure = spec.azure_open_ai
    if azure:
        for setting, text in (
            ("azure_openai_endpoint", azure.endpoint),
            ("azure_openai_deployment", azure.deployment),
            ("azure_openai_api_version", azure.api_version),
        ):
            if text:
                data[setting] = text
    if spec.session_store:
        data["session_store"] = spec.session_store.type
    for key, value in (("access", spec.access), ("limits", spec.limits)):
        if value:  # the service parses and validates them (chatbot_service.policy)
            data[key] = json.dumps(value, sort_keys=True, separators=(",", ":"))
    refresh = annotations.get(REFRESH_ANNOTATION)
    if refresh:
        data["refresh_requested_at"] = refresh  # changes a file: pods reload now, without a rollout
    return data


def _projected_sources(bot: str, spec: BotSpec) -> list[dict[str, Any]]:
    """Everything the service reads from files, in one directory: settings, prompt, key, connection string.

    Secrets are mounted ``optional`` so a missing one leaves the pod running and not ready (its
    ``/readyz`` says what is missing) instead of stuck, and it heals once the Secret appears.
    """
    sources: list[dict[str, Any]] = [{"configMap": {"name": config_map_name(bot)}}]
    prompt_map = spec.system_prompt_from.config_map_key_ref if spec.system_prompt_from else None
    if prompt_map:
        items = [{"key": prompt_map.key, "path": "system_prompt"}]
        sources.append({"configMap": {"name": prompt_map.name, "items": items}})
    for name, key, path in spec.secret_refs():
        sources.append({"secret": {"name": name, "items": [{"key": key, "path": path}], "optional": True}})
    return sources


def _env(bot: str, spec: BotSpec) -> list[dict[str, Any]]:
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
    if spec.api_keys_secret:
        env.append({"name": "KUBECHAT_API_KEYS_DIR", "value": API_KEYS_DIR})
    if not spec.observability.metrics:  # only then: the pods of every other bot stay as they were
        env.append({"name": "KUBECHAT_METRICS", "value": "off"})
    app_config = spec.app_configuration
    if app_config:
        if app_config.endpoint:
            env.append({"name": "KUBECHAT_APPCONFIG_ENDPOINT", "value": app_config.endpoint})
        else:
            env.append(
                {
                    "name": "KUBECHAT_APPCONFIG_CONNECTION_STRING_FILE",
                    "value": f"{CONFIG_DIR}/{CONNECTION_STRING_PATH}",
                }
            )
        prefix = app_config.key_prefix if app_config.key_prefix is not None else f"{bot}:"
        env.append({"name": "KUBECHAT_APPCONFIG_KEY_PREFIX", "value": prefix})
        if app_config.label:
            env.append({"name": "KUBECHAT_APPCONFIG_LABEL", "value": app_config.label})
        env.append({"name": "KUBECHAT_APPCONFIG_REFRESH_INTERVAL", "value": str(app_config.refresh_interval)})
    return env


def config_hash(data: dict[str, str], template: dict[str, Any]) -> str:
    """Changes exactly when pods must be replaced: settings (except a refresh request) or template."""
    stable = {k: v for k, v in data.items() if k != "refresh_requested_at"}
    blob = json.dumps({"settings": stable, "template": template}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def render(body: Mapping[str, Any], defaults: OperatorDefaults) -> Children:
    """Render a ChatBot (as the API server returns it, defaults applied) into its children."""
    return render_bot(Bot.from_body(body), defaults)


def render_bot(bot: Bot, defaults: OperatorDefaults) -> Children:
    """The bot's ConfigMap, Deployment and Service, and the hash of what its pods read."""
    name, namespace, uid, spec = bot.name, bot.namespace, bot.uid, bot.spec
    data = settings_data(name, spec, bot.annotations)
    config_map = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta(config_map_name(name), name, namespace, uid),
        "data": data,
    }
    # What the API server would default (a port's TCP protocol, the liveness probe's period and threshold,
    # the pull policy matching the image's tag, the pod-level non-root and seccomp settings repeated per
    # container) is left out: every field sent is parsed, merged and tracked in managedFields on each
    # apply, and the server fills those in anyway (tests/unit/test_render.py holds this).
    image = spec.image or defaults.image
    container: dict[str, Any] = {
        "name": "bot",
        "image": image,
        "args": ["serve", "--host", "0.0.0.0", "--port", str(APP_PORT)],
        "ports": [{"name": "http", "containerPort": APP_PORT}],
        "env": _env(name, spec),
        "readinessProbe": {
            "httpGet": {"path": "/readyz", "port": "http"},
            "periodSeconds": 5,
            "failureThreshold": 2,
        },
        "livenessProbe": {"httpGet": {"path": "/healthz", "port": "http"}},
        "resources": (spec.resources.as_dict() if spec.resources else None) or DEFAULT_RESOURCES,
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [
            {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
    }
    pull = spec.image_pull_policy or defaults.image_pull_policy
    if pull != pull_policy_default(image):
        container["imagePullPolicy"] = pull
    pod_spec: dict[str, Any] = {
        "containers": [container],
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": 10001,
            "runAsGroup": 10001,
            "fsGroup": 10001,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "automountServiceAccountToken": bool(spec.service_account_name or spec.reviews_tokens),
        "volumes": [
            {
                "name": "config",
                "projected": {"sources": _projected_sources(name, spec), "defaultMode": 0o440},
            },
            {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}},
        ],
    }
    account = spec.service_account_name or (bot_account(name) if spec.reviews_tokens else None)
    if account:
        # And the deprecated alias, so this field manager owns it too: the API server keeps it equal to
        # serviceAccountName, and an alias nobody owns would survive the account's removal from this
        # rendering and be copied back into serviceAccountName.
        pod_spec["serviceAccountName"] = pod_spec["serviceAccount"] = account
    if (
        spec.api_keys_secret
    ):  # its own volume: a client's entry name is a file name, and must not meet the settings
        pod_spec["volumes"].append(
            {
                "name": "api-keys",
                "secret": {"secretName": spec.api_keys_secret, "optional": True, "defaultMode": 0o440},
            }
        )
        container["volumeMounts"].append({"name": "api-keys", "mountPath": API_KEYS_DIR, "readOnly": True})
    pod_labels = labels(name)
    if not spec.observability.metrics:
        pod_labels[METRICS_LABEL] = "off"  # the chart's PodMonitor and the usage collector skip these pods
    if spec.uses_workload_identity:
        # Azure workload identity: the webhook injects AZURE_CLIENT_ID, AZURE_TENANT_ID and the token file
        # into pods carrying this label whose service account names the identity.
        pod_labels["azure.workload.identity/use"] = "true"
    template = {"metadata": {"labels": pod_labels}, "spec": pod_spec}
    digest = config_hash(data, template)
    template["metadata"]["annotations"] = {HASH_ANNOTATION: digest}
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(name, name, namespace, uid),
        "spec": {
            "replicas": spec.replicas,
            "selector": {"matchLabels": selector(name)},
            "template": template,
            "strategy": {"rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},  # type: RollingUpdate
        },
    }
    service_spec: dict[str, Any] = {
        "selector": selector(name),
        "ports": [{"name": "http", "port": spec.service.port, "targetPort": "http"}],
    }
    if spec.service.type != "ClusterIP":  # the server's default; left out, a switch back resets to it
        service_spec["type"] = spec.service.type
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(name, name, namespace, uid),
        "spec": service_spec,
    }
    access = _access_children(name, namespace, uid, spec, account) if spec.reviews_tokens and account else ()
    return Children(config_map, deployment, service, digest, access)


def bot_account(bot: str) -> str:
    return f"{bot}-chatbot"


def tokenreview_binding_name(bot: str, namespace: str) -> str:
    return f"kubechat-tokenreview:{namespace}:{bot}"


def _access_children(
    bot: str, namespace: str, uid: str, spec: BotSpec, account: str
) -> tuple[dict[str, Any], ...]:
    """The pods' ServiceAccount (unless the spec names its own) and a ClusterRoleBinding giving it
    exactly the right to create TokenReviews (cluster-scoped, so it carries no owner reference but labels
    naming its bot: the operator deletes it with the bot, or when the bot stops needing it)."""
    children: list[dict[str, Any]] = []
    if not spec.service_account_name:
        children.append(
            {
                "apiVersion": "v1",
                "kind": "ServiceAccount",
                "metadata": _meta(account, bot, namespace, uid),
                "automountServiceAccountToken": False,  # the pod mounts its token, nothing else does
            }
        )
    children.append(
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {
                "name": tokenreview_binding_name(bot, namespace),
                "labels": {**labels(bot), BOT_NAMESPACE_LABEL: namespace, BOT_UID_LABEL: uid},
            },
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": TOKENREVIEW_ROLE,
            },
            "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": namespace}],
        }
    )
    return tuple(children)
