"""Azure App Configuration's key-value data plane, as the provider and ``azure-appconfiguration`` use it.

- ``GET /kv?key=<filter>&label=<filter>&api-version=...``: filters as the service reads them (``prefix*``,
  exact, comma-separated alternatives, ``%00`` for no label, ``*`` for any), sorted results, pages of
  ``page_size`` linked by ``Link: <...>; rel="next"`` (and ``@nextLink``), one ETag per page;
  ``If-None-Match`` with that ETag answers 304, still carrying ``Link``.
- ``GET /kv/<key>?label=...``: one setting (the sentinel), 304 when its ETag matches.
- Auth: HMAC-SHA256 (connection string) verified exactly as the service does, including a date no more
  than 15 minutes off; or a bearer token from ``FakeIdentity`` for the store's audience.
- Key Vault references are settings with ``KEYVAULT_REF`` content type and ``{"uri": ...}`` values.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import quote, urlencode

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.support.fake_azure.identity import FakeIdentity

KEYVAULT_REF = "application/vnd.microsoft.appconfig.keyvaultref+json;charset=utf-8"
KVSET = "application/vnd.microsoft.appconfig.kvset+json; charset=utf-8"
KV = "application/vnd.microsoft.appconfig.kv+json; charset=utf-8"
MAX_CLOCK_SKEW = timedelta(minutes=15)


@dataclass
class Item:
    key: str
    label: str | None
    value: str
    content_type: str | None = None
    etag: str = field(default_factory=lambda: secrets.token_hex(16))
    last_modified: str = field(default_factory=lambda: datetime.now(UTC).isoformat())

    def json(self) -> dict[str, Any]:
        return {
            "etag": self.etag,
            "key": self.key,
            "label": self.label,
            "content_type": self.content_type,
            "value": self.value,
            "tags": {},
            "locked": False,
            "last_modified": self.last_modified,
        }


@dataclass
class Seen:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    status: int = 0


class FakeAppConfig:
    def __init__(
        self,
        *,
        identity: FakeIdentity | None = None,
        scope: str = "https://appconfig.azure.com/.default",
        page_size: int = 100,
    ) -> None:
        self.credential_id = "fake-" + secrets.token_hex(4)
        self.secret = base64.b64encode(secrets.token_bytes(32)).decode()
        self.identity = identity
        self.scope = scope
        self.page_size = page_size
        self.url = ""  # set by whoever serves it
        self.items: dict[tuple[str, str | None], Item] = {}
        self.requests: list[Seen] = []
        self.fail_with: int | None = None  # answer every request with this status (an outage)
        self._lock = threading.Lock()
        self.app = Starlette(
            routes=[
                Route("/kv", self.list_kv, methods=["GET"]),
                Route("/kv/{key:path}", self.get_kv, methods=["GET"]),
            ]
        )

    # -- the store, as a test edits it ---------------------------------------------------------

    def connection_string(self, secret: str | None = None) -> str:
        return f"Endpoint={self.url};Id={self.credential_id};Secret={secret or self.secret}"

    def set(self, key: str, value: str, label: str | None = None, content_type: str | None = None) -> Item:
        item = Item(key, label, value, content_type)
        with self._lock:
            self.items[(key, label)] = item
        return item

    def set_reference(self, key: str, secret_uri: str, label: str | None = None) -> Item:
        return self.set(key, json.dumps({"uri": secret_uri}), label, KEYVAULT_REF)

    def delete(self, key: str, label: str | None = None) -> None:
        with self._lock:
            del self.items[(key, label)]

    def seen(self, path: str) -> list[Seen]:
        return [r for r in self.requests if r.path == path]

    # -- the wire ------------------------------------------------------------------------------

    async def list_kv(self, request: Request) -> Response:
        denied = await self._check(request)
        if denied:
            return denied
        query = request.query_params
        keys, labels = query.get("key", "*"), query.get("label", "*")
        with self._lock:
            matching = sorted(
                (i for i in self.items.values() if _matches(keys, i.key) and _matches(labels, i.label, True)),
                key=lambda i: (i.key, i.label or ""),
            )
        after = query.get("after")
        if after:
            last = tuple(json.loads(base64.urlsafe_b64decode(after)))
            matching = [i for i in matching if (i.key, i.label or "") > last]
        page, rest = matching[: self.page_size], matching[self.page_size :]
        headers = {"ETag": '"' + _page_etag(page, after) + '"'}
        body: dict[str, Any] = {"items": [i.json() for i in page]}
        if rest:
            token = base64.urlsafe_b64encode(json.dumps([page[-1].key, page[-1].label or ""]).encode())
            params = {
                "api-version": query["api-version"],
                "key": keys,
                "label": labels,
                "after": token.decode(),
            }
            link = "/kv?" + urlencode(params, quote_via=quote)
            headers["Link"] = f'<{link}>; rel="next"'
            body["@nextLink"] = link
        if _none_match(request, headers["ETag"]):
            return self._answer(request, Response(status_code=304, headers=headers))
        return self._answer(request, JSONResponse(body, headers=headers, media_type=KVSET))

    async def get_kv(self, request: Request) -> Response:
        denied = await self._check(request)
        if denied:
            return denied
        label = request.query_params.get("label") or None
        label = None if label == "\0" else label
        with self._lock:
            item = self.items.get((request.path_params["key"], label))
        if item is None:
            return self._answer(request, Response(status_code=404))
        headers = {"ETag": f'"{item.etag}"'}
        if _none_match(request, item.etag):
            return self._answer(request, Response(status_code=304, headers=headers))
        return self._answer(request, JSONResponse(item.json(), headers=headers, media_type=KV))

    def _answer(self, request: Request, response: Response) -> Response:
        self.requests[-1].status = response.status_code
        return response

    async def _check(self, request: Request) -> Response | None:
        seen = Seen(request.method, request.url.path, dict(request.query_params), dict(request.headers))
        self.requests.append(seen)
        if self.fail_with:
            return self._answer(
                request, Response(status_code=self.fail_with, headers={"retry-after-ms": "10"})
            )
        if "api-version" not in request.query_params:
            return self._answer(request, JSONResponse({"title": "api-version is required"}, status_code=400))
        authorization = request.headers.get("authorization", "")
        if authorization.startswith("Bearer "):
            if self.identity is None or not self.identity.valid(authorization, self.scope):
                return self._denied(request, "Bearer", "invalid or missing token")
            return None
        problem = self.hmac_problem(request, await request.body())
        return self._denied(request, "HMAC-SHA256", problem) if problem else None

    def _denied(self, request: Request, scheme: str, why: str) -> Response:
        challenge = f'{scheme} error="invalid_token", error_description="{why}"'
        return self._answer(request, Response(status_code=401, headers={"WWW-Authenticate": challenge}))

    def hmac_problem(self, request: Request, body: bytes) -> str | None:
        """Why the request's HMAC-SHA256 signature is refused, or None when it is good."""
        scheme, _, params = request.headers.get("authorization", "").partition(" ")
        fields = dict(part.partition("=")[::2] for part in params.split("&"))
        if scheme != "HMAC-SHA256" or fields.get("Credential") != self.credential_id:
            return "Invalid Credential"
        signed = fields.get("SignedHeaders", "").split(";")
        if not {"x-ms-date", "host", "x-ms-content-sha256"} <= set(signed):
            return "Missing signed headers"
        raw = request.headers.get("x-ms-date") or request.headers.get("date", "")
        date = _parse_date(raw)
        if date is None or abs(datetime.now(UTC) - date) > MAX_CLOCK_SKEW:
            return "The access token has expired or the date is out of range"
        if request.headers.get("x-ms-content-sha256") != _sha256(body):
            return "Invalid content hash"
        path_and_query = request.scope["raw_path"].decode()
        if request.scope["query_string"]:
            path_and_query += "?" + request.scope["query_string"].decode()
        values = ";".join(request.headers.get(name, "") for name in signed)
        expected = sign(self.secret, f"{request.method}\n{path_and_query}\n{values}")
        if not hmac.compare_digest(expected, fields.get("Signature", "")):
            return "Invalid Signature"
        return None


def sign(secret: str, string_to_sign: str) -> str:
    digest = hmac.new(base64.b64decode(secret), string_to_sign.encode(), hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


def signed_headers(
    *, credential_id: str, secret: str, method: str, path_and_query: str, host: str, date: datetime
) -> dict[str, str]:
    """Headers of a request signed as the SDK signs it (for tests that need a stale date)."""
    stamp = date.strftime("%b, %d %Y %H:%M:%S.%f ") + "GMT"
    content = _sha256(b"")
    signature = sign(secret, f"{method}\n{path_and_query}\n{stamp};{host};{content}")
    return {
        "x-ms-date": stamp,
        "x-ms-content-sha256": content,
        "Authorization": f"HMAC-SHA256 Credential={credential_id}"
        f"&SignedHeaders=x-ms-date;host;x-ms-content-sha256&Signature={signature}",
    }


def _sha256(body: bytes) -> str:
    return base64.b64encode(hashlib.sha256(body).digest()).decode()


def _parse_date(raw: str) -> datetime | None:
    """The SDK's ``Nov, 24 2026 06:35:23.800380 GMT``, or RFC 1123 as other clients send."""
    try:
        return datetime.strptime(raw, "%b, %d %Y %H:%M:%S.%f GMT").replace(tzinfo=UTC)
    except ValueError:
        pass
    try:
        return parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None


def _matches(filter_: str, value: str | None, is_label: bool = False) -> bool:
    for alternative in _split(filter_):
        if alternative == "*":
            return True
        if is_label and alternative == "\0":
            if value is None:
                return True
            continue
        if value is None:
            continue
        if alternative.endswith("*") and not alternative.endswith("\\*"):
            if value.startswith(_unescape(alternative[:-1])):
                return True
        elif value == _unescape(alternative):
            return True
    return False


def _split(filter_: str) -> list[str]:
    parts, current, escaped = [], "", False
    for char in filter_:
        if escaped:
            current += "\\" + char
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == ",":
            parts.append(current)
            current = ""
        else:
            current += char
    return [*parts, current]


def _unescape(text: str) -> str:
    return text.replace("\\*", "*").replace("\\,", ",").replace("\\\\", "\\")


def _page_etag(page: list[Item], after: str | None) -> str:
    return hashlib.sha256(((after or "") + "".join(i.etag for i in page)).encode()).hexdigest()


def _none_match(request: Request, etag: str) -> bool:
    wanted = request.headers.get("if-none-match")
    return wanted is not None and wanted.strip('"') == etag.strip('"')
