"""Settings from Azure App Configuration, secrets from Azure Key Vault. Edge: SDK calls, a thread.

The provider (``azure.appconfiguration.provider.load``) selects ``<prefix>*`` unlabelled, then
``<prefix>*`` with the bot's label, and trims the prefix: ``helpdesk:temperature`` labelled ``prd``
becomes ``temperature``. It loads in a background thread, so an unreachable store leaves the bot up
and not ready (``/readyz`` says why) instead of blocking startup; it keeps retrying until it loads.

Key Vault references are resolved here, not by the provider: the provider caches a resolved secret by
its id for good, so a key rotated behind an unversioned reference would never reach the bot (and its
``secret_refresh_interval`` puts the new value under the untrimmed key). The provider gets a resolver
that returns a marker, and ``keyvault`` re-reads the unversioned secrets in use every ``refresh_interval``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from azure.appconfiguration.provider import SettingSelector, WatchKey, load
from azure.identity import DefaultAzureCredential

from chatbot_service.appconfig_options import AppConfigOptions, parse_connection_string, parse_options
from chatbot_service.azure_errors import describe
from chatbot_service.holder import Pending
from chatbot_service.keyvault import KeyVaultSecrets
from chatbot_service.settings import KNOWN_KEYS, SettingsError

log = logging.getLogger("kubechat.appconfig")

#: Pauses between attempts to load a store that failed to load (each attempt retries on its own too).
_RETRY_PAUSES = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0)


class Source(Protocol):
    """A layer of settings that ``app`` merges between the environment and the mounted files."""

    def values(self) -> dict[str, str]: ...

    def start(self, on_loaded: Callable[[], object] | None = None) -> None: ...

    def close(self) -> None: ...


def from_environ(environ: Mapping[str, str]) -> Source | None:
    """The App Configuration source the environment asks for, or None when it asks for none."""
    try:
        options = parse_options(environ)
    except SettingsError as exc:
        return Misconfigured(exc.problems)
    return AppConfigurationSource(options) if options else None


class Misconfigured:
    """App Configuration was asked for, but wrongly: the bot stays up, not ready, saying why."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems

    def values(self) -> dict[str, str]:
        raise SettingsError(self.problems)

    def start(self, on_loaded: Callable[[], object] | None = None) -> None:
        pass  # nothing to load; the holder logs the problems and /readyz shows them

    def close(self) -> None:
        pass


@dataclass(frozen=True)
class KeyVaultReference:
    """What the provider stores for a Key Vault reference; resolved by ``KeyVaultSecrets``."""

    uri: str


class AppConfigurationSource:
    """This bot's keys in one store, loaded in the background and refreshed on ``values()``."""

    def __init__(self, options: AppConfigOptions, *, keys: frozenset[str] | None = KNOWN_KEYS) -> None:
        self.options = options
        self._keys = keys  # None: every key under the prefix (known settings are filtered by default)
        self._where = options.where
        self._hidden: set[str] = set()
        if options.connection_string:
            self._hide_connection_string(options.connection_string.reveal())
        self._credential: Any = None
        self._provider: Any = None
        self._status = f"loading (startup timeout {options.startup_timeout:g}s)"
        self._refresh_problem: str | None = None
        self._refresh_failed_at = 0.0
        self._ignored: tuple[str, ...] = ()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.secrets = KeyVaultSecrets(
            self._get_credential, options.verify_challenge_resource, options.refresh_interval, self.redact
        )

    # -- loading -------------------------------------------------------------------------------

    def start(self, on_loaded: Callable[[], object] | None = None) -> None:
        """Load in a daemon thread, retrying until it works; ``on_loaded`` runs once it has."""
        self._thread = threading.Thread(
            target=self._run, args=(on_loaded,), name="kubechat-appconfig", daemon=True
        )
        self._thread.start()

    @property
    def loaded(self) -> bool:
        return self._provider is not None

    def _run(self, on_loaded: Callable[[], object] | None) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                provider = self._load()
            except Exception as exc:
                status = self.describe(exc) + "; retrying"
                if status != self._status:
                    log.warning("App Configuration %s not loaded yet: %s", self._where, status)
                self._status = status
                pause = _RETRY_PAUSES[min(failures, len(_RETRY_PAUSES) - 1)]
                failures += 1
                self._stop.wait(pause)
                continue
            if self._stop.is_set():
                provider.close()
                return
            self._provider = provider
            log.info(
                "App Configuration %s loaded: %d keys under %r", self._where, len(provider), self._prefix
            )
            if on_loaded is not None:
                try:
                    on_loaded()
                except Exception:  # the reload loop will pick the values up anyway
                    log.exception("reloading the settings after App Configuration loaded failed")
            return

    @property
    def _prefix(self) -> str:
        return self.options.key_prefix

    def _load(self) -> Any:
        options = self.options
        kwargs: dict[str, Any] = {
            "selects": [SettingSelector(key_filter=k, label_filter=label) for k, label in options.selectors],
            "trim_prefixes": [options.key_prefix] if options.key_prefix else [],
            "secret_resolver": KeyVaultReference,
            "refresh_interval": options.refresh_interval,
            "startup_timeout": options.startup_timeout,
            "replica_discovery_enabled": False,
        }
        watch = options.watch_key
        if watch:
            kwargs["refresh_on"] = [WatchKey(*watch)]
        else:
            kwargs["refresh_enabled"] = True  # every page's ETag is checked instead
        if options.endpoint:
            return load(endpoint=options.endpoint, credential=self._get_credential(), **kwargs)
        return load(connection_string=self._connection_string(), **kwargs)

    def _connection_string(self) -> str:
        path = self.options.connection_string_file
        if path:
            try:
                text = Path(path).read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise OSError(f"cannot read {path}: {exc.strerror or exc}") from None
        else:
            assert self.options.connection_string is not None
            text = self.options.connection_string.reveal().strip()
        self._hide_connection_string(text)
        endpoint, _, _ = parse_connection_string(text)
        self._where = endpoint
        return text

    def _hide_connection_string(self, text: str) -> None:
        self._hidden.add(text)
        with contextlib.suppress(ValueError):
            self._hidden.add(parse_connection_string(text)[2].reveal())

    def _get_credential(self) -> Any:
        """One ``DefaultAzureCredential`` for the store and the vaults (workload identity in AKS)."""
        if self._credential is None:
            self._credential = DefaultAzureCredential()
        return self._credential

    # -- reading -------------------------------------------------------------------------------

    def values(self) -> dict[str, str]:
        """The store's current settings by canonical key, Key Vault references resolved.

        Refreshes first (the provider only calls the store once its interval has passed). Raises
        ``SettingsError`` while not loaded, or when a reference cannot be resolved the first time.
        """
        provider = self._provider
        if provider is None:
            raise Pending([f"App Configuration {self._where} not loaded yet: {self._status}"])
        with self._lock:
            self._refresh(provider)
            plain: dict[str, str] = {}
            references: dict[str, tuple[str, str]] = {}
            ignored = []
            for key, value in list(provider.items()):
                if self._keys is not None and key not in self._keys:
                    ignored.append(key)
                elif isinstance(value, KeyVaultReference):
                    references[key] = (self._prefix + key, value.uri)
                else:
                    plain[key] = value if isinstance(value, str) else json.dumps(value)
            self._note_ignored(tuple(sorted(ignored)))
            resolved, problems = self.secrets.resolve(references)
        if problems:
            raise SettingsError(problems)
        return {**plain, **resolved}

    def _refresh(self, provider: Any) -> None:
        try:
            provider.refresh()
        except Exception as exc:
            problem = self.describe(exc)
            # Warn once per outage: while the provider backs off, its refresh fails with a vaguer error.
            if self._refresh_problem is None:
                log.warning(
                    "App Configuration %s refresh failed, keeping the values loaded before: %s",
                    self._where,
                    problem,
                )
            else:
                log.debug("App Configuration %s refresh failed again: %s", self._where, problem)
            self._refresh_problem, self._refresh_failed_at = problem, time.monotonic()
            return
        # refresh() also returns quietly while its timer is not due; once a whole interval has passed
        # since the failure, the store was really asked (the provider's backoff is capped at it).
        if (
            self._refresh_problem
            and time.monotonic() - self._refresh_failed_at >= self.options.refresh_interval
        ):
            log.info("App Configuration %s refreshes again", self._where)
            self._refresh_problem = None

    def _note_ignored(self, ignored: tuple[str, ...]) -> None:
        if ignored != self._ignored:
            log.debug("App Configuration keys that are no setting, ignored: %s", ", ".join(ignored) or "none")
            self._ignored = ignored

    # -- hygiene -------------------------------------------------------------------------------

    def redact(self, text: str) -> str:
        for hidden in sorted(self._hidden, key=len, reverse=True):
            if len(hidden) >= 4:
                text = text.replace(hidden, "****")
        return text

    def describe(self, exc: BaseException) -> str:
        return self.redact(describe(exc))

    def close(self) -> None:
        """Stop loading and close the clients (after a ``values()`` in flight, if it ends soon)."""
        self._stop.set()
        locked = self._lock.acquire(timeout=5)
        try:
            self.secrets.close()
            provider, self._provider = self._provider, None
            if provider is not None:
                provider.close()
            if self._credential is not None:
                self._credential.close()
        finally:
            if locked:
                self._lock.release()
