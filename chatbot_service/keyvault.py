"""Key Vault references resolved by URI, with ``SecretClient``. Edge: network I/O.

Versioned references are read once (a version never changes); unversioned ones are read again once
``max_age`` has passed, which is how a rotated key reaches a running bot. A failed re-read keeps the
value read before; a reference never resolved is a problem naming the key in the store.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from azure.keyvault.secrets import KeyVaultSecretIdentifier, SecretClient

from chatbot_service.azure_errors import describe

log = logging.getLogger("kubechat.keyvault")


@dataclass
class _Cached:
    value: str
    read_at: float
    versioned: bool


class KeyVaultSecrets:
    """Key Vault references by URI: versioned ones read once, unversioned ones again after ``max_age``."""

    def __init__(
        self,
        credential: Callable[[], Any],
        verify_challenge_resource: bool,
        max_age: float,
        redact: Callable[[str], str] = str,
    ) -> None:
        self._credential = credential
        self._verify = verify_challenge_resource
        self._max_age = max_age
        self._redact = redact
        self._clients: dict[str, SecretClient] = {}
        self._cache: dict[str, _Cached] = {}
        self._stale: dict[str, str] = {}

    def resolve(self, references: Mapping[str, tuple[str, str]]) -> tuple[dict[str, str], list[str]]:
        """Values by key for ``{key: (key in the store, secret URI)}``, and problems naming store keys."""
        values: dict[str, str] = {}
        problems: list[str] = []
        now = time.monotonic()
        for key, (stored_as, uri) in references.items():
            cached = self._cache.get(uri)
            if cached and (cached.versioned or now - cached.read_at < self._max_age):
                values[key] = cached.value
                continue
            try:
                value, versioned = self._read(uri)
            except Exception as exc:
                cause = self._redact(describe(exc))
                if cached is None:
                    problems.append(f"{stored_as}: Key Vault reference {uri} cannot be resolved: {cause}")
                    continue
                if self._stale.get(uri) != cause:
                    log.warning(
                        "Key Vault secret %s not re-read, keeping the value read before: %s", uri, cause
                    )
                    self._stale[uri] = cause
                cached.read_at = now  # try again after another interval, not on every reload
                values[key] = cached.value
                continue
            if cached and cached.value != value:
                log.info("Key Vault secret %s has a new value (%s); it is in use now", uri, stored_as)
            self._stale.pop(uri, None)
            self._cache[uri] = _Cached(value, now, versioned)
            values[key] = value
        used = {uri for _, uri in references.values()}
        for uri in set(self._cache) - used:
            del self._cache[uri]
            self._stale.pop(uri, None)
        return values, problems

    def _read(self, uri: str) -> tuple[str, bool]:
        ident = KeyVaultSecretIdentifier(uri)
        client = self._clients.get(ident.vault_url)
        if client is None:
            client = SecretClient(
                ident.vault_url, self._credential(), verify_challenge_resource=self._verify, retry_total=2
            )
            self._clients[ident.vault_url] = client
        value = client.get_secret(ident.name, ident.version).value
        if not value:
            raise ValueError("the secret has no value")
        return value, bool(ident.version)

    def close(self) -> None:
        for client in self._clients.values():
            client.close()
        self._clients.clear()
