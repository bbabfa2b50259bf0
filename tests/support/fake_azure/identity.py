"""Microsoft Entra ID's token endpoint as workload identity uses it: one POST per token.

``azure-identity``'s ``WorkloadIdentityCredential`` (inside ``DefaultAzureCredential``) posts the
federated service-account token as a client assertion to ``$AZURE_AUTHORITY_HOST/<tenant>/oauth2/v2.0/token``
and gets an access token for one scope. Services built on this fake check tokens with ``valid``.
"""

from __future__ import annotations

import secrets
import threading
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


class FakeIdentity:
    def __init__(self, *, tenant_id: str, client_id: str, federated_token: str) -> None:
        self.tenant_id = tenant_id
        self.client_id = client_id
        self.federated_token = federated_token
        self.url = ""  # the authority host, https://127.0.0.1:<port>, set by whoever serves it
        self.issued: dict[str, Issued] = {}
        self.scopes_requested: list[str] = []
        self._lock = threading.Lock()
        self.app = Starlette(routes=[Route("/{tenant}/oauth2/v2.0/token", self.token, methods=["POST"])])

    def valid(self, authorization: str | None, scope: str) -> bool:
        """Is ``authorization`` (``Bearer <token>``) a token this fake issued for ``scope``?"""
        scheme, _, token = (authorization or "").partition(" ")
        issued = self.issued.get(token)
        return scheme.lower() == "bearer" and issued is not None and issued.scope == scope

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
        assertion_ok = form.get("client_assertion") == self.federated_token
        if form.get("client_assertion_type") != ASSERTION_TYPE or not assertion_ok:
            return _error(401, "invalid_client", "AADSTS700213: no matching federated identity record found.")
        scope = form.get("scope", "")
        token = "fake-access-" + secrets.token_hex(16)
        with self._lock:
            self.issued[token] = Issued(scope, tenant)
            self.scopes_requested.append(scope)
        return JSONResponse(
            {"token_type": "Bearer", "expires_in": 3600, "ext_expires_in": 3600, "access_token": token}
        )


def _error(status: int, code: str, description: str) -> Response:
    return JSONResponse({"error": code, "error_description": description}, status_code=status)
