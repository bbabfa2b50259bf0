"""The bot's settings: one typed object, parsed and validated in one place. Pure: no I/O.

Every source (environment, mounted ConfigMap files, Azure App Configuration) is turned into a flat
mapping of *canonical keys* (``model``, ``temperature``, ``openai_api_key`` ...) before it gets here;
the same key names are used in the ChatBot spec (camelCase), in App Configuration (after the prefix)
and in the environment (``KUBECHAT_`` + upper case), so one name means one thing everywhere.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from chatbot_service.compaction import ContextPolicy, parse_context
from chatbot_service.conversation import Budget
from chatbot_service.models import ModelInfo, lookup
from chatbot_service.policy import Access, Limits, PolicyError, parse_access, parse_limits

#: Keys whose values are secrets: never echoed in errors or logs.
SECRET_KEYS = frozenset({"openai_api_key", "azure_openai_api_key", "redis_url", "api_keys"})
#: Settings parsed after the others, because they depend on them (the bot's name, its model).
POLICY_KEYS = frozenset({"access", "limits", "api_keys"})


class Secret:
    """A string that does not show itself in reprs, logs or tracebacks."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('****')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


class SettingsError(ValueError):
    """Settings that cannot be used; ``problems`` name each key and what is wrong with it."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class Settings:
    """Everything one bot process needs to know; immutable, replaced whole on reload."""

    openai_api_key: Secret | None = None
    openai_base_url: str | None = None
    #: Azure OpenAI (``spec.azureOpenAI``): set, it is the provider; Entra ID unless a key is given.
    azure_openai_endpoint: str | None = None
    azure_openai_deployment: str | None = None
    #: ``v1``: the OpenAI-compatible ``/openai/v1/`` path; a date: ``/openai/deployments/...?api-version=``.
    azure_openai_api_version: str = "v1"
    azure_openai_api_key: Secret | None = None
    system_prompt: str = "You are a helpful assistant."
    model: str = "gpt-4o-mini"
    temperature: float | None = None
    max_context_tokens: int | None = None
    max_reply_tokens: int = 1024
    token_encoding: str | None = None
    request_timeout: float = 60.0
    stream_keepalive: float = 15.0
    max_retries: int = 2
    max_message_chars: int = 32_000
    session_max_count: int = 10_000
    session_idle_ttl: float = 3600.0
    session_max_messages: int = 2_000
    #: Bytes all in-memory sessions may hold; None: derived from the pod's memory limit.
    session_store_bytes: int | None = None
    #: Bytes one in-memory session may hold (its oldest messages go first past it).
    session_max_bytes: int = 4 << 20
    session_store: str = "memory"
    redis_url: Secret | None = None
    bot_name: str = "kubechat"
    access: Access | None = None
    limits: Limits | None = None
    api_keys: tuple[tuple[str, Secret], ...] = ()
    #: Trim (default) or compact history past a threshold (``spec.context``).
    context: ContextPolicy = field(default_factory=ContextPolicy)
    ignored_keys: tuple[str, ...] = field(default=(), compare=False)

    @property
    def model_info(self) -> ModelInfo:
        info = lookup(self.model)
        if self.token_encoding:
            info = ModelInfo(
                info.name, self.token_encoding, info.context_tokens, info.reply_limit_param, info.known
            )
        return info

    @property
    def token_counting(self) -> str:
        """Which encoding counts this bot's tokens and why, saying so when it is a guess."""
        info = self.model_info
        if self.token_encoding:
            return f"{info.encoding} (set by token_encoding)"
        if info.known:
            return f"{info.encoding} (the encoding of {info.name})"
        behind = "the model behind the Azure deployment" if self.provider == "azure" else "a known model name"
        return (
            f"{info.encoding} (a guess: {info.name!r} is not a model this service knows; set token_encoding, "
            f"or model to {behind})"
        )

    @property
    def provider(self) -> str:
        """Which model API this bot talks to (``upstream._PROVIDERS``)."""
        return "azure" if self.azure_openai_endpoint else "openai"

    @property
    def budget(self) -> Budget:
        return Budget(self.max_context_tokens or self.model_info.context_tokens, self.max_reply_tokens)

    @property
    def lock_ttl(self) -> float:
        """How long a turn may hold its session: every upstream attempt, plus a margin. A replica that
        dies mid-turn frees the session after this."""
        return self.request_timeout * (self.max_retries + 1) + 10

    def missing(self) -> list[str]:
        """What the bot still needs before it can answer (for ``/readyz``)."""
        if self.provider == "azure":
            missing = [] if self.azure_openai_deployment else ["azure_openai_deployment"]
        else:
            missing = [] if self.openai_api_key else ["openai_api_key"]
        if self.session_store == "redis" and self.redis_url is None:
            missing.append("redis_url")
        return missing


def _text(value: str) -> str:
    return value


def _nonempty(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty")
    return value


def _url(value: str) -> str:
    if not value.startswith(("http://", "https://")):
        raise ValueError("must be an http:// or https:// URL")
    return value.rstrip("/")


def _number(low: float, high: float | None = None) -> Callable[[str], float]:
    def parse(value: str) -> float:
        try:
            number = float(value)
        except ValueError:
            raise ValueError("must be a number") from None
        if not math.isfinite(number) or number < low or (high is not None and number > high):
            raise ValueError(
                f"must be between {low:g} and {high:g}" if high is not None else f"must be >= {low:g}"
            )
        return number

    return parse


def _integer(low: int) -> Callable[[str], int]:
    def parse(value: str) -> int:
        try:
            number = int(value.strip())
        except ValueError:
            raise ValueError("must be a whole number") from None
        if number < low:
            raise ValueError(f"must be >= {low}")
        return number

    return parse


def _store(value: str) -> str:
    if value.strip() not in ("memory", "redis"):
        raise ValueError("must be memory or redis")
    return value.strip()


def _redis_url(value: str) -> Secret:
    if not value.strip().startswith(("redis://", "rediss://", "unix://")):
        raise ValueError("must be a redis://, rediss:// or unix:// URL")
    return Secret(value.strip())


def _https(value: str) -> str:
    if not value.strip().startswith("https://"):
        raise ValueError("must be an https:// URL (https://<resource>.openai.azure.com or a custom domain)")
    return value.strip().rstrip("/")


def _deployment(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", value.strip()):
        raise ValueError("must be a deployment name (letters, digits, . _ -, at most 64)")
    return value.strip()


def _api_version(value: str) -> str:
    if not re.fullmatch(r"v1|\d{4}-\d{2}-\d{2}(-preview)?", value.strip()):
        raise ValueError("must be v1 (the /openai/v1/ path) or a data-plane api-version like 2024-10-21")
    return value.strip()


def _encoding(value: str) -> str:
    if value not in ("o200k_base", "cl100k_base"):
        raise ValueError("must be o200k_base or cl100k_base (the encodings this service carries)")
    return value


_PARSERS: dict[str, Callable[[str], Any]] = {
    "openai_api_key": lambda v: Secret(_nonempty(v).strip()),
    "openai_base_url": _url,
    "azure_openai_endpoint": _https,
    "azure_openai_deployment": _deployment,
    "azure_openai_api_version": _api_version,
    "azure_openai_api_key": lambda v: Secret(_nonempty(v).strip()),
    "system_prompt": _nonempty,
    "model": lambda v: _nonempty(v).strip(),
    "temperature": _number(0, 2),
    "max_context_tokens": _integer(256),
    "max_reply_tokens": _integer(1),
    "token_encoding": _encoding,
    "request_timeout": _number(0.1, 3600),
    "stream_keepalive": _number(0.05, 300),
    "max_retries": _integer(0),
    "max_message_chars": _integer(1),
    "session_max_count": _integer(1),
    "session_idle_ttl": _number(1),
    "session_max_messages": _integer(2),
    "session_store_bytes": _integer(1 << 20),
    "session_max_bytes": _integer(64 << 10),
    "session_store": _store,
    "redis_url": _redis_url,
    "bot_name": _text,
    "context": parse_context,
}

KNOWN_KEYS = frozenset(_PARSERS) | POLICY_KEYS


def _api_keys(raw: str) -> tuple[tuple[str, Secret], ...]:
    """``{"client-name": "key", ...}`` (read from the mounted keys Secret); values never shown."""
    from chatbot_service.identity import KEY_NAME

    try:
        entries = json.loads(raw)
    except ValueError:
        raise ValueError("must be a JSON object of name -> key") from None
    if not isinstance(entries, dict):
        raise ValueError("must be a JSON object of name -> key")
    keys = []
    for name, key in sorted(entries.items()):
        if not KEY_NAME.match(name):
            raise ValueError(f"entry {name[:64]!r} is not a valid identity (letters, digits, . _ -)")
        if not isinstance(key, str) or len(key.strip()) < 16:
            raise ValueError(f"entry {name!r}: the key must be at least 16 characters")
        keys.append((name, Secret(key.strip())))
    return tuple(keys)


def _policies(settings: Settings, values: Mapping[str, str], problems: list[str]) -> Settings:
    """``access``, ``limits`` and ``api_keys``, which need the bot's name and model."""
    parsed: dict[str, Any] = {}
    for key, parse in (
        ("access", lambda raw: parse_access(raw, settings.bot_name)),
        ("limits", lambda raw: parse_limits(raw, settings.model)),
        ("api_keys", _api_keys),
    ):
        if key in values:
            try:
                parsed[key] = parse(values[key])
            except (PolicyError, ValueError) as exc:
                problems.append(str(exc) if isinstance(exc, PolicyError) else f"{key}: {exc}")
    return dataclasses.replace(settings, **parsed) if parsed else settings


def parse_settings(values: Mapping[str, str]) -> Settings:
    """Validate a flat mapping of canonical keys; unknown keys are kept in ``ignored_keys``.

    Every problem is collected, so one error names all bad keys at once.
    """
    parsed: dict[str, Any] = {}
    problems: list[str] = []
    for key, raw in values.items():
        parser = _PARSERS.get(key)
        if parser is None:
            continue
        try:
            parsed[key] = parser(raw)
        except ValueError as exc:
            shown = "" if key in SECRET_KEYS else f" (got {raw[:80]!r})"
            problems.append(f"{key}: {exc}{shown}")
    ignored = tuple(sorted(k for k in values if k not in KNOWN_KEYS))
    settings = Settings(**parsed, ignored_keys=ignored) if not problems else None
    if settings is not None:
        settings = _policies(settings, values, problems)
        window = settings.budget.context_tokens
        if settings.max_reply_tokens >= window:
            problems.append(
                f"max_reply_tokens: must be smaller than the context window ({window} tokens for "
                f"{settings.model!r}); lower it or raise max_context_tokens"
            )
    if problems:
        raise SettingsError(problems)
    assert settings is not None
    return settings
