"""``ChatBot.spec`` as typed values, with every default of the spec in one place. Pure: no I/O.

The API server applies the CRD's schema defaults before the operator sees a bot; the same defaults are
written here so a bot parsed from a manifest that has not been through the API server (tests, a dry
run) means the same thing. ``tests/unit/test_spec.py`` checks that the CRD and this module agree, field
by field, so a new CRD field without its twin here fails a test.

To add a field: one attribute on the dataclass (snake_case of the CRD's camelCase name, the CRD's
default as its default) and its line in ``parse``; render then reads it typed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

DEFAULT_MODEL = "gpt-4o-mini"
DEFAULT_REPLICAS = 1
DEFAULT_REFRESH_INTERVAL = 30  # seconds; the chat service's KUBECHAT_APPCONFIG_REFRESH_INTERVAL default too
DEFAULT_SESSION_STORE = "memory"
DEFAULT_SERVICE_TYPE = "ClusterIP"
DEFAULT_SERVICE_PORT = 80
DEFAULT_CONTEXT_MODE = "trim"  # the chat service's ContextPolicy defaults too
DEFAULT_COMPACTION_THRESHOLD = 0.75


@dataclass(frozen=True)
class KeyRef:
    """A key of a ConfigMap or a Secret in the bot's namespace."""

    name: str
    key: str


@dataclass(frozen=True)
class PromptSource:
    config_map_key_ref: KeyRef | None = None
    secret_key_ref: KeyRef | None = None


@dataclass(frozen=True)
class ApiKeySecretRef:
    name: str
    key: str = "apiKey"


@dataclass(frozen=True)
class OpenAI:
    api_key_secret_ref: ApiKeySecretRef | None = None
    base_url: str | None = None


@dataclass(frozen=True)
class AzureOpenAI:
    """``spec.azureOpenAI``: a deployment on an Azure OpenAI resource, reached with the pods' workload
    identity unless a key Secret is named. Unset fields are left to App Configuration."""

    endpoint: str | None = None
    deployment: str | None = None
    api_version: str | None = None
    api_key_secret_ref: ApiKeySecretRef | None = None

    @property
    def keyless(self) -> bool:
        return self.api_key_secret_ref is None


@dataclass(frozen=True)
class ConnectionStringSecretRef:
    name: str
    key: str = "connectionString"


@dataclass(frozen=True)
class AppConfiguration:
    endpoint: str | None = None
    connection_string_secret_ref: ConnectionStringSecretRef | None = None
    key_prefix: str | None = None  # None: the bot's name and a colon (said where it is used: render)
    label: str | None = None
    refresh_interval: int = DEFAULT_REFRESH_INTERVAL


@dataclass(frozen=True)
class RedisUrlSecretRef:
    name: str
    key: str = "url"


@dataclass(frozen=True)
class SessionStore:
    type: str = DEFAULT_SESSION_STORE
    redis_url_secret_ref: RedisUrlSecretRef | None = None


@dataclass(frozen=True)
class Service:
    type: str = DEFAULT_SERVICE_TYPE
    port: int = DEFAULT_SERVICE_PORT


@dataclass(frozen=True)
class Context:
    """Trim or compact history past ``threshold`` of the prompt budget (chatbot_service.compaction)."""

    mode: str = DEFAULT_CONTEXT_MODE
    threshold: float = DEFAULT_COMPACTION_THRESHOLD
    summary_prompt: str | None = None  # None: the chat service's default prompt

    def as_setting(self) -> dict[str, Any]:
        """The chat service's ``context`` setting (its JSON keys are the CRD's)."""
        out: dict[str, Any] = {"mode": self.mode, "threshold": self.threshold}
        if self.summary_prompt is not None:
            out["summaryPrompt"] = self.summary_prompt
        return out


@dataclass(frozen=True)
class Observability:
    """``metrics: false``: the pods serve no ``/metrics`` (``KUBECHAT_METRICS=off``), so Prometheus and
    the usage collector leave them alone: the bot's ``status.usage`` does not grow."""

    metrics: bool = True


@dataclass(frozen=True)
class Resources:
    """Container requests and limits, quantities as the user wrote them (the schema validates them)."""

    requests: Mapping[str, int | str] | None = None
    limits: Mapping[str, int | str] | None = None

    def as_dict(self) -> dict[str, dict[str, int | str]]:
        out = {"requests": self.requests, "limits": self.limits}
        return {k: dict(v) for k, v in out.items() if v is not None}


@dataclass(frozen=True)
class BotSpec:
    """What a bot is; ``None`` means "not set": the chat service (or the operator) decides."""

    system_prompt: str | None = None
    system_prompt_from: PromptSource | None = None
    model: str = DEFAULT_MODEL
    replicas: int = DEFAULT_REPLICAS
    temperature: float | None = None
    max_context_tokens: int | None = None
    max_reply_tokens: int | None = None
    context: Context | None = None  # None: the chat service's (or App Configuration's) choice
    open_ai: OpenAI = field(default_factory=OpenAI)
    azure_open_ai: AzureOpenAI | None = None
    app_configuration: AppConfiguration | None = None
    session_store: SessionStore | None = None  # None: the chat service's (or App Configuration's) choice
    image: str | None = None
    image_pull_policy: str | None = None
    resources: Resources | None = None
    service_account_name: str | None = None
    service: Service = field(default_factory=Service)
    observability: Observability = field(default_factory=Observability)
    # Who may call and how much they may spend: passed to the chat service as they are, which parses and
    # validates them (chatbot_service.policy is their typed model); the operator reads only what it renders.
    access: Mapping[str, Any] | None = None
    limits: Mapping[str, Any] | None = None

    @property
    def api_keys_secret(self) -> str | None:
        """The Secret holding one API key per client (``access.apiKeys.secretRef``), if any."""
        keys = _obj(_obj(self.access).get("apiKeys")).get("secretRef")
        return str(_obj(keys)["name"]) if _obj(keys).get("name") else None

    @property
    def reviews_tokens(self) -> bool:
        """Callers may present Kubernetes service-account tokens: the pods need the TokenReview right."""
        return self.access is not None and self.access.get("serviceAccounts") is not None

    def secret_refs(self) -> list[tuple[str, str, str]]:
        """(Secret name, key, file in the config dir) for every Secret the bot reads: one table serves
        the mounts and the check that the Secrets exist."""
        refs: list[tuple[str, str, str]] = []
        prompt = self.system_prompt_from.secret_key_ref if self.system_prompt_from else None
        if prompt:
            refs.append((prompt.name, prompt.key, "system_prompt"))
        if self.open_ai.api_key_secret_ref:
            ref = self.open_ai.api_key_secret_ref
            refs.append((ref.name, ref.key, "openai_api_key"))
        azure_key = self.azure_open_ai.api_key_secret_ref if self.azure_open_ai else None
        if azure_key:
            refs.append((azure_key.name, azure_key.key, "azure_openai_api_key"))
        if self.session_store and self.session_store.redis_url_secret_ref:
            redis = self.session_store.redis_url_secret_ref
            refs.append((redis.name, redis.key, "redis_url"))
        app = self.app_configuration
        if app and app.connection_string_secret_ref:
            conn = app.connection_string_secret_ref
            refs.append((conn.name, conn.key, CONNECTION_STRING_PATH))
        return refs

    def required_secrets(self) -> list[tuple[str, str]]:
        """(Secret name, what of it) for every Secret the bot cannot work without: those it mounts into
        its config dir and the access.apiKeys Secret (one entry per client)."""
        refs = [(name, key) for name, key, _ in self.secret_refs()]
        if self.api_keys_secret:
            refs.append((self.api_keys_secret, "any: one entry per client"))
        return refs

    @property
    def uses_workload_identity(self) -> bool:
        """The pods authenticate to Azure as themselves (App Configuration by endpoint, keyless Azure
        OpenAI): the workload identity webhook must inject the identity."""
        app = self.app_configuration
        return bool(app and app.endpoint) or bool(self.azure_open_ai and self.azure_open_ai.keyless)

    @property
    def splits_conversations(self) -> bool:
        """More than one replica with conversations in each pod's memory: a user's next turn may land on
        a pod that has never seen the conversation."""
        store = self.session_store.type if self.session_store else DEFAULT_SESSION_STORE
        return self.replicas > 1 and store == "memory"


CONNECTION_STRING_PATH = "appconfig/connection_string"  # inside the config dir; a directory, not a setting


def _obj(raw: Any) -> Mapping[str, Any]:
    return raw if isinstance(raw, Mapping) else {}


def _key_ref(raw: Any) -> KeyRef | None:
    raw = _obj(raw)
    return KeyRef(str(raw["name"]), str(raw["key"])) if raw.get("name") else None


def _opt_str(raw: Any) -> str | None:
    return None if raw is None else str(raw)


def _opt_number(raw: Any) -> float | None:
    """A number as written (1 stays 1, not 1.0: the ConfigMap, hence the config hash, shows it so)."""
    return raw if raw is None or isinstance(raw, int | float) else float(raw)


def _opt_int(raw: Any) -> int | None:
    return None if raw is None else int(raw)


def parse(raw_spec: Mapping[str, Any] | None) -> BotSpec:
    """The spec as the API server returns it (schema-validated) -> ``BotSpec``; absent fields default."""
    s = _obj(raw_spec)
    prompt_from = _obj(s.get("systemPromptFrom"))
    openai, azure, app, store, svc = (
        _obj(s.get(k)) for k in ("openAI", "azureOpenAI", "appConfiguration", "sessionStore", "service")
    )
    azure_key = _obj(azure.get("apiKeySecretRef"))
    key_ref = _obj(openai.get("apiKeySecretRef"))
    conn_ref = _obj(app.get("connectionStringSecretRef"))
    redis_ref = _obj(store.get("redisUrlSecretRef"))
    resources = _obj(s.get("resources"))
    context = _obj(s.get("context"))
    observability = _obj(s.get("observability"))
    return BotSpec(
        system_prompt=_opt_str(s.get("systemPrompt")),
        system_prompt_from=PromptSource(
            _key_ref(prompt_from.get("configMapKeyRef")), _key_ref(prompt_from.get("secretKeyRef"))
        )
        if prompt_from
        else None,
        model=str(s.get("model", DEFAULT_MODEL)),
        replicas=int(s.get("replicas", DEFAULT_REPLICAS)),
        temperature=_opt_number(s.get("temperature")),
        max_context_tokens=_opt_int(s.get("maxContextTokens")),
        max_reply_tokens=_opt_int(s.get("maxReplyTokens")),
        context=Context(
            str(context.get("mode", DEFAULT_CONTEXT_MODE)),
            float(context.get("threshold", DEFAULT_COMPACTION_THRESHOLD)),
            _opt_str(context.get("summaryPrompt")),
        )
        if s.get("context") is not None
        else None,
        open_ai=OpenAI(
            ApiKeySecretRef(str(key_ref["name"]), str(key_ref.get("key", "apiKey"))) if key_ref else None,
            _opt_str(openai.get("baseUrl")),
        ),
        azure_open_ai=AzureOpenAI(
            endpoint=_opt_str(azure.get("endpoint")),
            deployment=_opt_str(azure.get("deployment")),
            api_version=_opt_str(azure.get("apiVersion")),
            api_key_secret_ref=ApiKeySecretRef(str(azure_key["name"]), str(azure_key.get("key", "apiKey")))
            if azure_key
            else None,
        )
        if s.get("azureOpenAI") is not None
        else None,
        app_configuration=AppConfiguration(
            endpoint=_opt_str(app.get("endpoint")),
            connection_string_secret_ref=ConnectionStringSecretRef(
                str(conn_ref["name"]), str(conn_ref.get("key", "connectionString"))
            )
            if conn_ref
            else None,
            key_prefix=_opt_str(app.get("keyPrefix")),
            label=_opt_str(app.get("label")),
            refresh_interval=int(app.get("refreshInterval", DEFAULT_REFRESH_INTERVAL)),
        )
        if "appConfiguration" in s and s["appConfiguration"] is not None
        else None,
        session_store=SessionStore(
            str(store.get("type", DEFAULT_SESSION_STORE)),
            RedisUrlSecretRef(str(redis_ref["name"]), str(redis_ref.get("key", "url")))
            if redis_ref
            else None,
        )
        if s.get("sessionStore") is not None
        else None,
        image=_opt_str(s.get("image")) or None,
        image_pull_policy=_opt_str(s.get("imagePullPolicy")) or None,
        resources=Resources(
            dict(resources["requests"]) if "requests" in resources else None,
            dict(resources["limits"]) if "limits" in resources else None,
        )
        if resources
        else None,
        service_account_name=_opt_str(s.get("serviceAccountName")) or None,
        service=Service(
            str(svc.get("type", DEFAULT_SERVICE_TYPE)), int(svc.get("port", DEFAULT_SERVICE_PORT))
        ),
        observability=Observability(bool(observability.get("metrics", True))),
        access=dict(s["access"]) if isinstance(s.get("access"), Mapping) and s["access"] else None,
        limits=dict(s["limits"]) if isinstance(s.get("limits"), Mapping) and s["limits"] else None,
    )


OWN_ANNOTATIONS = "kubechat.dev/"  # the only annotations render reads; others (kubectl's copy of the
# whole manifest, for one) would only make the per-bot state larger


@dataclass(frozen=True)
class Bot:
    """A ChatBot as the operator needs it: identity, the refresh annotation, the typed spec."""

    name: str
    namespace: str
    uid: str
    generation: int
    spec: BotSpec
    annotations: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> Bot:
        meta = body["metadata"]
        return cls(
            name=str(meta["name"]),
            namespace=str(meta["namespace"]),
            uid=str(meta["uid"]),
            generation=int(meta.get("generation") or 0),
            spec=parse(body.get("spec")),
            annotations={
                str(k): str(v)
                for k, v in (meta.get("annotations") or {}).items()
                if str(k).startswith(OWN_ANNOTATIONS)
            },
        )
