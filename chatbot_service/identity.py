"""Who is calling: identities, the bearer credential, API keys. Pure: no I/O.

API keys are compared in constant time against every key (no early exit that would time which
entry matched) and are only ever shown as a fingerprint: the first 8 hex digits of their SHA-256.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Sequence
from dataclasses import dataclass

from chatbot_service.settings import Secret

#: What an API key entry (the Secret's key) may be called: it is the client's identity.
KEY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


@dataclass(frozen=True, slots=True)
class Identity:
    name: str
    kind: str  # api-key | service-account | oidc
    groups: frozenset[str] = frozenset()

    @property
    def tag(self) -> str:
        """A short, stable tag naming the identity inside storage keys (its sessions)."""
        return hashlib.sha256(f"{self.kind}\0{self.name}".encode()).hexdigest()[:20]


def fingerprint(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()[:8]


def bearer(header: str | None) -> str | None:
    """The credential of ``Authorization: Bearer <credential>``, else None."""
    if not header:
        return None
    scheme, _, credential = header.partition(" ")
    credential = credential.strip()
    if scheme.lower() != "bearer" or not credential or len(credential) > 16_384:
        return None
    return credential


def looks_like_jwt(credential: str) -> bool:
    return credential.count(".") == 2 and credential.startswith("eyJ")


class ApiKeys:
    """The keys in force, as digests; ``match`` gives the entry's name."""

    def __init__(self, keys: Sequence[tuple[str, Secret]]) -> None:
        self._digests = [(name, hashlib.sha256(key.reveal().encode()).digest()) for name, key in keys]
        self.fingerprints = {name: fingerprint(key.reveal()) for name, key in keys}

    def match(self, credential: str) -> str | None:
        presented = hashlib.sha256(credential.encode()).digest()
        found = None
        for name, digest in self._digests:
            if hmac.compare_digest(presented, digest):
                found = name
        return found
