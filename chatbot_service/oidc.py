"""OIDC / JWT bearer tokens (Microsoft Entra ID, or any issuer). Edge: fetches the issuer's keys.

Signature, expiry, issuer and audience are checked by PyJWT; the keys come from the issuer's JWKS
(found through its discovery document), cached, and fetched again when a token names a ``kid`` the
cache does not hold (the issuer rotated its keys), at most once every ``REFRESH_AFTER`` seconds so a
flood of made-up ``kid``s cannot hammer the issuer. Only asymmetric algorithms are accepted.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import OrderedDict
from typing import Any

import httpx2
import jwt

from chatbot_service.errors import Forbidden, Unauthenticated
from chatbot_service.identity import Identity
from chatbot_service.policy import OidcAccess

log = logging.getLogger("kubechat.access")

ALGORITHMS = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512"]
REFRESH_AFTER = 2.0  # seconds between two JWKS fetches caused by unknown kids
MAX_AGE = 3600.0  # keys are fetched again after this even if every kid is known
LEEWAY = 30  # seconds of clock skew tolerated on exp / nbf / iat
VERIFIED_FOR = 300.0  # a verified token is trusted again without a signature check for this long (or to exp)
MAX_CACHED = 10_000


class OidcVerifier:
    def __init__(self, access: OidcAccess) -> None:
        self.access = access
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched = 0.0
        self._jwks_uri: str | None = None
        self._lock = asyncio.Lock()
        self._verified: OrderedDict[bytes, tuple[float, Identity]] = OrderedDict()

    def claims_issuer(self, token: str) -> bool:
        """Is this token (unverified) from our issuer? Decides which check it gets."""
        try:
            claims = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            return False
        return isinstance(claims, dict) and str(claims.get("iss", "")).rstrip("/") == self.access.issuer

    def known(self, token: str) -> Identity | None:
        """The identity of a token verified before and not expired (no decoding, no signature check)."""
        cached = self._verified.get(hashlib.sha256(token.encode()).digest())
        return cached[1] if cached is not None and cached[0] > time.time() else None

    async def verify(self, token: str) -> Identity:
        """The token's identity, checked; remembered by its digest until it expires."""
        digest = hashlib.sha256(token.encode()).digest()
        identity, expires = await self._verify(token)
        self._verified[digest] = (min(expires, time.time() + VERIFIED_FOR), identity)
        while len(self._verified) > MAX_CACHED:
            self._verified.popitem(last=False)
        return identity

    async def _verify(self, token: str) -> tuple[Identity, float]:
        try:
            kid = jwt.get_unverified_header(token).get("kid")
            key = await self._key(str(kid) if kid is not None else "")
            if key is None:
                raise Unauthenticated()
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=ALGORITHMS,
                audience=self.access.audience,
                issuer=[self.access.issuer, self.access.issuer + "/"],
                leeway=LEEWAY,
                options={"require": ["exp", "iss", "aud"]},
            )
        except jwt.PyJWTError as exc:
            log.debug("refused a JWT: %s", type(exc).__name__)
            raise Unauthenticated() from None
        name = claims.get(self.access.identity_claim)
        if not isinstance(name, str) or not name:
            raise Forbidden(f"the token has no {self.access.identity_claim!r} claim to name its identity")
        groups = _strings(claims.get(self.access.groups_claim))
        roles = _strings(claims.get(self.access.roles_claim))
        if not self.access.allows(groups, roles):
            raise Forbidden("this identity is not in a group or role this bot allows")
        return Identity(name, "oidc", groups | roles), float(claims["exp"])

    async def _key(self, kid: str) -> jwt.PyJWK | None:
        now = time.monotonic()
        if kid in self._keys and now - self._fetched < MAX_AGE:
            return self._keys[kid]
        async with self._lock:
            if (kid not in self._keys and time.monotonic() - self._fetched >= REFRESH_AFTER) or (
                kid in self._keys and time.monotonic() - self._fetched >= MAX_AGE
            ):
                await self._refresh()
        return self._keys.get(kid)

    async def _refresh(self) -> None:
        try:
            async with httpx2.AsyncClient(timeout=5) as client:
                if self._jwks_uri is None:
                    discovery = await client.get(self.access.issuer + "/.well-known/openid-configuration")
                    discovery.raise_for_status()
                    uri = discovery.json().get("jwks_uri")
                    if not isinstance(uri, str) or not uri.startswith("https://"):
                        raise ValueError("the discovery document names no https jwks_uri")
                    self._jwks_uri = uri
                response = await client.get(self._jwks_uri)
                response.raise_for_status()
                keys = jwt.PyJWKSet.from_dict(response.json())
        except (httpx2.HTTPError, ValueError, jwt.PyJWTError) as exc:
            self._fetched = time.monotonic()  # do not retry on every request
            log.warning("could not fetch the keys of %s: %s", self.access.issuer, exc)
            return
        self._keys = {k.key_id: k for k in keys.keys if k.key_id}
        self._fetched = time.monotonic()
        log.info("keys of %s: %s", self.access.issuer, ", ".join(sorted(self._keys)) or "none")


def _strings(value: object) -> frozenset[str]:
    if isinstance(value, str):
        return frozenset({value})
    if isinstance(value, list):
        return frozenset(v for v in value if isinstance(v, str))
    return frozenset()
