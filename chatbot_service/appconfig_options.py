"""Which Azure App Configuration keys belong to this bot, read from the environment. Pure: no I/O.

The operator sets these variables, so their names are fixed:

- ``KUBECHAT_APPCONFIG_ENDPOINT`` (Microsoft Entra auth via ``DefaultAzureCredential``), or
  ``KUBECHAT_APPCONFIG_CONNECTION_STRING_FILE`` (a mounted Secret), or
  ``KUBECHAT_APPCONFIG_CONNECTION_STRING`` (local runs); none of them: App Configuration is not used.
- ``KUBECHAT_APPCONFIG_KEY_PREFIX`` (default ``<KUBECHAT_BOT_NAME>:``), ``KUBECHAT_APPCONFIG_LABEL`` (the
  environment, e.g. ``prd``; default: unlabelled keys only), ``KUBECHAT_APPCONFIG_REFRESH_INTERVAL`` (s, 30),
  ``KUBECHAT_APPCONFIG_SENTINEL_KEY`` (after the prefix), ``KUBECHAT_APPCONFIG_STARTUP_TIMEOUT`` (s, 30),
  ``KUBECHAT_KEYVAULT_VERIFY_CHALLENGE_RESOURCE`` (default true).

Unlabelled keys are shared defaults: the labelled selector comes last, and the provider lets later
selectors win, so ``helpdesk:model`` (no label) applies unless ``helpdesk:model`` labelled ``prd`` exists.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from chatbot_service.settings import Secret, SettingsError

ENDPOINT = "KUBECHAT_APPCONFIG_ENDPOINT"
CONNECTION_STRING = "KUBECHAT_APPCONFIG_CONNECTION_STRING"
CONNECTION_STRING_FILE = "KUBECHAT_APPCONFIG_CONNECTION_STRING_FILE"
KEY_PREFIX = "KUBECHAT_APPCONFIG_KEY_PREFIX"
LABEL = "KUBECHAT_APPCONFIG_LABEL"
REFRESH_INTERVAL = "KUBECHAT_APPCONFIG_REFRESH_INTERVAL"
SENTINEL_KEY = "KUBECHAT_APPCONFIG_SENTINEL_KEY"
STARTUP_TIMEOUT = "KUBECHAT_APPCONFIG_STARTUP_TIMEOUT"
VERIFY_CHALLENGE_RESOURCE = "KUBECHAT_KEYVAULT_VERIFY_CHALLENGE_RESOURCE"
BOT_NAME = "KUBECHAT_BOT_NAME"

#: App Configuration's "no label" in selectors and watch keys.
NO_LABEL = "\0"
#: Characters that App Configuration's key and label filters treat as syntax.
_FILTER_SYNTAX = frozenset("*,\\")
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


@dataclass(frozen=True)
class AppConfigOptions:
    """Where the store is, how to authenticate, and which keys and labels are this bot's."""

    endpoint: str | None = None
    connection_string: Secret | None = None
    connection_string_file: str | None = None
    key_prefix: str = ""
    label: str | None = None
    refresh_interval: float = 30.0
    sentinel_key: str | None = None
    startup_timeout: float = 30.0
    verify_challenge_resource: bool = True

    @property
    def selectors(self) -> list[tuple[str, str]]:
        """(key filter, label filter) pairs, later ones winning: unlabelled defaults, then the label."""
        keys = self.key_prefix + "*"
        return [(keys, NO_LABEL)] + ([(keys, self.label)] if self.label else [])

    @property
    def watch_key(self) -> tuple[str, str] | None:
        """The sentinel (full key, label) whose change reloads every key; None: watch every page's ETag."""
        if not self.sentinel_key:
            return None
        return self.key_prefix + self.sentinel_key, self.label or NO_LABEL

    @property
    def where(self) -> str:
        """The store as shown in logs and ``/readyz``: an endpoint or a file name, never a secret."""
        if self.endpoint:
            return self.endpoint
        if self.connection_string_file:
            return f"(connection string from {self.connection_string_file})"
        return f"(connection string from ${CONNECTION_STRING})"


def configured(environ: Mapping[str, str]) -> bool:
    return any(environ.get(name) for name in (ENDPOINT, CONNECTION_STRING, CONNECTION_STRING_FILE))


def parse_options(environ: Mapping[str, str]) -> AppConfigOptions | None:
    """The options, or None when App Configuration is not configured; ``SettingsError`` names every
    bad variable at once."""
    if not configured(environ):
        return None
    problems: list[str] = []
    endpoint = environ.get(ENDPOINT) or None
    connection_file = environ.get(CONNECTION_STRING_FILE) or None
    connection = environ.get(CONNECTION_STRING) or None
    if endpoint and (connection_file or connection):
        problems.append(f"{ENDPOINT}: set either the endpoint or a connection string, not both")
    if endpoint and not endpoint.startswith("https://"):
        problems.append(f"{ENDPOINT}: must be an https:// URL (got {endpoint[:80]!r})")
    prefix = environ.get(KEY_PREFIX)
    if prefix is None:
        bot = environ.get(BOT_NAME, "").strip()
        prefix = f"{bot}:" if bot else None
    if prefix is None:
        problems.append(f"{KEY_PREFIX}: required when {BOT_NAME} is not set (the keys are <prefix><setting>)")
    elif _FILTER_SYNTAX & set(prefix):
        problems.append(f"{KEY_PREFIX}: must not contain '*', ',' or '\\' (got {prefix[:80]!r})")
    label = environ.get(LABEL) or None
    if label and _FILTER_SYNTAX & set(label):
        problems.append(f"{LABEL}: must not contain '*', ',' or '\\' (got {label[:80]!r})")
    sentinel = environ.get(SENTINEL_KEY) or None
    if sentinel and "*" in sentinel:
        problems.append(f"{SENTINEL_KEY}: must be one key, not a filter (got {sentinel[:80]!r})")
    refresh = _seconds(environ, REFRESH_INTERVAL, 30.0, 1.0, problems)
    startup = _seconds(environ, STARTUP_TIMEOUT, 30.0, 0.0, problems)
    verify = _flag(environ, VERIFY_CHALLENGE_RESOURCE, True, problems)
    if problems:
        raise SettingsError(problems)
    return AppConfigOptions(
        endpoint=endpoint.rstrip("/") if endpoint else None,
        connection_string=Secret(connection) if connection and not connection_file else None,
        connection_string_file=connection_file,
        key_prefix=prefix or "",
        label=label,
        refresh_interval=refresh,
        sentinel_key=sentinel,
        startup_timeout=startup,
        verify_challenge_resource=verify,
    )


def parse_connection_string(text: str) -> tuple[str, str, Secret]:
    """(endpoint, credential id, secret) of ``Endpoint=...;Id=...;Secret=...``; the error never shows it."""
    fields: dict[str, str] = {}
    for part in text.strip().split(";"):
        name, sep, value = part.partition("=")
        if sep:
            fields[name.strip().lower()] = value.strip()
    endpoint, ident, secret = (fields.get(name, "") for name in ("endpoint", "id", "secret"))
    if not (endpoint.startswith(("https://", "http://")) and ident and secret):
        raise ValueError("the connection string is not of the form Endpoint=https://...;Id=...;Secret=...")
    return endpoint.rstrip("/"), ident, Secret(secret)


def _seconds(environ: Mapping[str, str], name: str, default: float, low: float, problems: list[str]) -> float:
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not value >= low or value == float("inf"):
        problems.append(f"{name}: must be a number of seconds >= {low:g} (got {raw[:80]!r})")
        return default
    return value


def _flag(environ: Mapping[str, str], name: str, default: bool, problems: list[str]) -> bool:
    raw = environ.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in _TRUE | _FALSE:
        return raw in _TRUE
    problems.append(f"{name}: must be true or false (got {raw[:80]!r})")
    return default
