"""The Kubernetes API server, called with httpx2: the chat image carries no kubernetes client (and none of
the ~120 MB it brings) for the one request it makes. Edge: files and HTTP.

It finds the server as ``apiserver.py`` says, reads the files named there and keeps what it read for
``REREAD`` seconds, as client-go does: projected service-account tokens rotate, so the token file is read
again. A 401 reads everything again at once and retries once, so a token rotated before the minute is up
costs no refusal. Errors carry a message for the log with no credential in it.
"""

from __future__ import annotations

import asyncio
import os
import ssl
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import yaml

from chatbot_service.apiserver import (
    ApiServer,
    KubeConfigError,
    Pem,
    from_kubeconfig,
    in_cluster,
    kubeconfig_path,
)

REREAD = 60.0  # seconds the token, CA and kubeconfig are trusted before being read again
TIMEOUT = httpx2.Timeout(10.0, connect=5.0)


class ApiServerError(Exception):
    """The API server could not be found, reached, or said no; ``status``: its HTTP status, if any."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class _Loaded:
    server: ApiServer
    verify: ssl.SSLContext | bool
    token: str | None
    at: float


class KubeClient:
    """POSTs JSON objects to one API server. ``environ`` is read on every (re)load, never at construction."""

    def __init__(
        self, environ: Mapping[str, str] | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._environ = environ
        self._clock = clock
        self._loaded: _Loaded | None = None

    async def create(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """POST ``body`` to ``path``; the answer's JSON object, or ``ApiServerError``."""
        loaded, fresh = await self._load()
        response = await _post(loaded, path, body)
        if response.status_code == 401 and not fresh:  # maybe rotated since it was read: read again, once
            loaded, _ = await self._load(force=True)
            response = await _post(loaded, path, body)
        if response.is_error:
            raise ApiServerError(_refusal(loaded.server, response), response.status_code)
        try:
            answer = response.json()
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            raise ApiServerError(f"the API server at {loaded.server.url} answered {path} with no JSON object")
        return answer

    async def _load(self, *, force: bool = False) -> tuple[_Loaded, bool]:
        """What is in force, and whether it was read just now (in a thread: files, a CA bundle)."""
        now = self._clock()
        loaded = self._loaded
        if not force and loaded is not None and now - loaded.at < REREAD:
            return loaded, False
        environ = os.environ if self._environ is None else self._environ
        self._loaded = loaded = await asyncio.to_thread(_read, environ, now)
        return loaded, True


def _read(environ: Mapping[str, str], now: float) -> _Loaded:
    server = _find(environ)
    return _Loaded(server, _verify(server), _token(server), now)


async def _post(loaded: _Loaded, path: str, body: Mapping[str, Any]) -> httpx2.Response:
    headers = {"Authorization": f"Bearer {loaded.token}"} if loaded.token else {}
    try:
        # One client per call: reviews are cached per token, so calls are rare, and nothing outlives the call.
        async with httpx2.AsyncClient(verify=loaded.verify, timeout=TIMEOUT) as http:
            return await http.post(loaded.server.url + path, json=dict(body), headers=headers)
    except httpx2.HTTPError as exc:
        url = loaded.server.url
        raise ApiServerError(f"cannot reach the API server at {url}: {type(exc).__name__}: {exc}") from None


def _refusal(server: ApiServer, response: httpx2.Response) -> str:
    """What to log of an error answer: its status and reason; the message only for 403, whose text the
    authorizer writes (who may not do what) and which never echoes the request's body."""
    try:
        status = response.json()
    except ValueError:
        status = {}
    reason = status.get("reason", "") if isinstance(status, dict) else ""
    said = f"the API server at {server.url} answered {response.status_code} {reason}".rstrip()
    if response.status_code == 401:
        return f"{said}: it does not accept this bot's own credentials ({server.source})"
    if response.status_code == 403:
        message = status.get("message", "") if isinstance(status, dict) else ""
        return f"{said}: {message}".rstrip(": ")
    return said


def _find(environ: Mapping[str, str]) -> ApiServer:
    server = in_cluster(environ)
    if server is not None:
        return server
    path = kubeconfig_path(environ, environ.get("HOME") or str(Path.home()))
    try:
        document = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise ApiServerError(
            f"not in a pod (no KUBERNETES_SERVICE_HOST) and cannot read the kubeconfig {path}: {exc.strerror}"
        ) from None
    except yaml.YAMLError:
        raise ApiServerError(f"the kubeconfig {path} is not YAML") from None
    try:
        return from_kubeconfig(document, path)
    except KubeConfigError as exc:
        raise ApiServerError(str(exc)) from None


def _token(server: ApiServer) -> str | None:
    if not server.token_file:
        return server.token
    try:
        token = Path(server.token_file).read_text().strip()
    except OSError as exc:
        raise ApiServerError(f"cannot read the token file {server.token_file}: {exc.strerror}") from None
    if not token:
        raise ApiServerError(f"the token file {server.token_file} is empty")
    return token


def _verify(server: ApiServer) -> ssl.SSLContext | bool:
    """The TLS context: the server's CA (else the system's), and the client certificate if there is one."""
    if server.insecure and not server.client_cert:
        return False
    try:
        if server.ca is None or server.insecure:
            context = httpx2.create_ssl_context(verify=not server.insecure)
        else:
            cadata = server.ca.data.decode() if server.ca.data else None
            context = ssl.create_default_context(cafile=server.ca.path, cadata=cadata)
        if server.client_cert:
            if not server.client_key:
                raise ApiServerError(f"{server.source}: a client certificate without its key")
            _load_chain(context, server.client_cert, server.client_key)
    except (OSError, ssl.SSLError, UnicodeDecodeError) as exc:
        raise ApiServerError(f"{server.source}: unusable CA or client certificate: {_why(exc)}") from None
    return context


def _load_chain(context: ssl.SSLContext, cert: Pem, key: Pem) -> None:
    """``load_cert_chain`` takes only files: inline data goes to private temporary files, removed at once."""
    with tempfile.TemporaryDirectory(prefix="kubechat-") as folder:
        paths = []
        for name, pem in (("cert.pem", cert), ("key.pem", key)):
            if pem.data is None:
                paths.append(pem.path or "")
                continue
            written = Path(folder, name)
            written.touch(mode=0o600)
            written.write_bytes(pem.data)
            paths.append(str(written))
        context.load_cert_chain(paths[0], paths[1])


def _why(exc: Exception) -> str:
    return getattr(exc, "strerror", None) or getattr(exc, "reason", None) or type(exc).__name__
