"""Azure Key Vault's secrets data plane, as ``azure-keyvault-secrets`` uses it.

``GET /secrets/{name}/`` (latest version; the SDK adds the trailing slash) and
``GET /secrets/{name}/{version}``. Authentication is Key Vault's challenge flow: a request without a
valid bearer gets 401 with ``WWW-Authenticate`` naming the tenant and the resource, the client asks
the identity endpoint for a ``https://vault.azure.net/.default`` token, then retries. Serve it over
TLS: the SDK sends bearer tokens only over https. ``rotate`` adds a version, as ``az keyvault secret
set`` does.
"""

from __future__ import annotations

import secrets
import threading
import time
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.support.fake_azure.identity import FakeIdentity

RESOURCE = "https://vault.azure.net"
SCOPE = RESOURCE + "/.default"


class FakeKeyVault:
    def __init__(self, identity: FakeIdentity) -> None:
        self.identity = identity
        self.url = ""  # https://<host>:<port>, set by whoever serves it: secret ids are built from it
        self.versions: dict[str, list[tuple[str, str]]] = {}  # name -> [(version, value)], oldest first
        self.api_versions: set[str] = set()
        self.requests: list[tuple[str, bool]] = []  # (path, authorized)
        self._lock = threading.Lock()
        self.app = Starlette(
            routes=[
                Route("/secrets/{name}/", self.get_secret, methods=["GET"]),
                Route("/secrets/{name}", self.get_secret, methods=["GET"]),
                Route("/secrets/{name}/{version}", self.get_secret, methods=["GET"]),
            ]
        )

    def set_secret(self, name: str, value: str) -> str:
        """Store a new version (the latest from now on); returns its version id."""
        version = secrets.token_hex(16)
        with self._lock:
            self.versions.setdefault(name, []).append((version, value))
        return version

    rotate = set_secret

    def uri(self, name: str, version: str | None = None) -> str:
        return f"{self.url}/secrets/{name}" + (f"/{version}" if version else "")

    def secret_reads(self, name: str) -> int:
        return sum(1 for path, ok in self.requests if ok and path.startswith(f"/secrets/{name}/"))

    async def get_secret(self, request: Request) -> Response:
        authorized = self.identity.valid(request.headers.get("authorization"), SCOPE)
        self.requests.append((request.url.path.rstrip("/") + "/", authorized))
        api_version = request.query_params.get("api-version")
        if not api_version:
            return _error(400, "MissingApiVersionParameter", "The api-version query parameter is required.")
        self.api_versions.add(api_version)
        if not authorized:
            challenge = (
                f'Bearer authorization="{self.identity.url}/{self.identity.tenant_id}", resource="{RESOURCE}"'
            )
            body = {
                "error": {"code": "Unauthorized", "message": "AKV10000: Request is missing a Bearer token."}
            }
            return JSONResponse(body, status_code=401, headers={"WWW-Authenticate": challenge})
        name = request.path_params["name"]
        wanted = request.path_params.get("version")
        with self._lock:
            versions = list(self.versions.get(name, []))
        found = [v for v in versions if v[0] == wanted] if wanted else versions[-1:]
        if not found:
            what = f"{name}/{wanted}" if wanted else name
            return _error(
                404, "SecretNotFound", f"A secret with (name/id) {what} was not found in this key vault."
            )
        version, value = found[-1]
        return JSONResponse(self._bundle(name, version, value))

    def _bundle(self, name: str, version: str, value: str) -> dict[str, Any]:
        now = int(time.time())
        return {
            "value": value,
            "id": f"{self.url}/secrets/{name}/{version}",
            "attributes": {
                "enabled": True,
                "created": now,
                "updated": now,
                "recoveryLevel": "Recoverable+Purgeable",
                "recoverableDays": 90,
            },
            "tags": {},
        }


def _error(status: int, code: str, message: str) -> Response:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)
