"""A local OpenID Connect issuer: a discovery document and a JWKS whose keys can be rotated, and
tokens signed with them (RS256, as Microsoft Entra ID signs)."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route


class Issuer:
    __test__ = False

    def __init__(self) -> None:
        self.url = ""  # set once served: https://127.0.0.1:<port>
        self.keys: dict[str, rsa.RSAPrivateKey] = {}
        self.jwks_fetches = 0
        self.rotate()
        self.app = Starlette(
            routes=[
                Route("/.well-known/openid-configuration", self.discovery),
                Route("/discovery/v2.0/keys", self.jwks),
            ]
        )

    def rotate(self) -> str:
        """A new signing key replaces the old ones in the JWKS; returns its kid."""
        kid = uuid.uuid4().hex[:12]
        self.keys = {kid: rsa.generate_private_key(public_exponent=65537, key_size=2048)}
        return kid

    @property
    def kid(self) -> str:
        return next(iter(self.keys))

    async def discovery(self, _: Request) -> JSONResponse:
        return JSONResponse(
            {
                "issuer": self.url,
                "jwks_uri": self.url + "/discovery/v2.0/keys",
                "id_token_signing_alg_values_supported": ["RS256"],
            }
        )

    async def jwks(self, _: Request) -> JSONResponse:
        self.jwks_fetches += 1
        keys = []
        for kid, key in self.keys.items():
            jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
            keys.append({**jwk, "kid": kid, "use": "sig", "alg": "RS256"})
        return JSONResponse({"keys": keys})

    def token(
        self, audience: str, *, lifetime: float = 600, key: rsa.RSAPrivateKey | None = None, **claims: Any
    ) -> str:
        now = int(time.time())
        payload = {"iss": self.url, "aud": audience, "iat": now, "nbf": now, "exp": int(now + lifetime)}
        payload |= claims
        return jwt.encode(payload, key or self.keys[self.kid], algorithm="RS256", headers={"kid": self.kid})
