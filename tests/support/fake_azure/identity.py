"""Microsoft Entra ID's token endpoint as workload identity uses it: one POST per token.

``azure-identity``'s ``WorkloadIdentityCredential`` (inside ``DefaultAzureCredential``) posts the
federated service-account token as a client assertion to ``$AZURE_AUTHORITY_HOST/<tenant>/oauth2/v2.0/token``
and gets an access token for one scope. Services built on this fake check tokens with ``valid``.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import parse_qs

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


@dataclass(frozen=True)
class Issued:
    scope: str
    tenant: str
    expires_at: float = float("inf")


class FakeIdentity:
    def __init__(self, *, tenant_id: str, client_id: str, federated_token: str) -> None:
        self.tenant_id = tenant_id
        self.client_id = client_id
        self.federated_token = federated_token
        #: How a client assertion is checked: by default, it must be ``federated_token``; on a real
        #: node, a projected service-account token checked by TokenReview (as Entra ID checks the issuer).
        self.accepts: Callable[[str], bool] = lambda assertion: assertion == self.federated_token
        self.url = ""  # the authority host, https://127.0.0.1:<port>, set by whoever serves it
        self.issued: dict[str, Issued] = {}
        self.scopes_requested: list[str] = []
        #: Seconds each token is valid for (``expires_in``); a token past it is refused by ``valid``.
        self.lifetime = 3600
        self._lock = threading.Lock()
        self.app = Starlette(routes=[Route("/{tenant}/oauth2/v2.0/token", self.token, methods=["POST"])])

    def valid(self, authorization: str | None, scope: str) -> bool:
        """Is ``authorization`` (``Bearer <token>``) an unexpired token this fake issued for ``scope``?"""
        scheme, _, token = (authorization or "").partition(" ")
        issued = self.issued.get(token)
        return (
            scheme.lower() == "bearer"
            and issued is not None
            and issued.scope == scope
            and time.time() < issued.expires_at
        )

    def issued_for(self, scope: str) -> list[str]:
        return [token for token, issued in self.issued.items() if issued.scope == scope]

    @property
    def tokens(self) -> list[str]:
        return list(self.issued)

    async def token(self, request: Request) -> Response:
        form = {k: v[0] for k, v in parse_qs((await request.body()).decode()).items()}
        tenant = request.path_params["tenant"]
        if tenant != self.tenant_id:
            return _error(400, "invalid_request", f"AADSTS90002: Tenant '{tenant}' not found.")
        if form.get("grant_type") != "client_credentials" or form.get("client_id") != self.client_id:
            return _error(400, "unauthorized_client", "AADSTS700016: application not found in the directory.")
        assertion_ok = self.accepts(form.get("client_assertion", ""))
        if form.get("client_assertion_type") != ASSERTION_TYPE or not assertion_ok:
            return _error(401, "invalid_client", "AADSTS700213: no matching federated identity record found.")
        scope = form.get("scope", "")
        token = "fake-access-" + secrets.token_hex(16)
        with self._lock:
            self.issued[token] = Issued(scope, tenant, time.time() + self.lifetime)
            self.scopes_requested.append(scope)
        life = self.lifetime
        return JSONResponse(
            {"token_type": "Bearer", "expires_in": life, "ext_expires_in": life, "access_token": token}
        )


def _error(status: int, code: str, description: str) -> Response:
    return JSONResponse({"error": code, "error_description": description}, status_code=status)
