"""The few Kubernetes API calls the operator makes. Edge: network I/O through one shared client.

One ``ApiClient`` (one connection pool) serves every worker: a client per call costs a TLS handshake
on both sides. Requests go straight to its urllib3 pool as JSON bytes: the generated client's path
(``param_serialize`` walking the body, the auth hook run per request, urllib3's field encoding) cost
more CPU than the request itself. Children are written only by server-side apply under one field
manager. A failed call raises ``ApiError`` carrying the server's ``Status`` (reason, causes), which
``errors.classify`` sorts.
"""

from __future__ import annotations

import datetime
import json
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode

import urllib3
from kubernetes import client

from kubechat_operator import FIELD_MANAGER, GROUP, PLURAL, VERSION
from kubechat_operator.errors import ApiStatus, OperatorError
from kubechat_operator.metrics import OperatorMetrics

_PATHS = {
    ("v1", "ConfigMap"): "/api/v1/namespaces/{ns}/configmaps/{name}",
    ("v1", "Service"): "/api/v1/namespaces/{ns}/services/{name}",
    ("apps/v1", "Deployment"): "/apis/apps/v1/namespaces/{ns}/deployments/{name}",
    ("v1", "ServiceAccount"): "/api/v1/namespaces/{ns}/serviceaccounts/{name}",
    ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding"): (
        "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/{name}"
    ),
}
_JSON = "application/json"
_AUTH_SECONDS = 10.0  # how long the auth header is reused; the client's hook rereads a rotated token
_TIMEOUT = urllib3.Timeout(connect=10.0, read=60.0)  # a hung request retries instead of holding a worker
WATCH_SECONDS = 300  # the server ends a watch after this; it is then resumed from the last version
_METADATA_ONLY = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1"
#: The kinds whose whole answer to an apply is read: the Deployment's status feeds the bot's. For the
#: others (and the bot's status write) only the metadata (uid, resourceVersion) is: asked as
#: ``PartialObjectMetadata``, the server encodes and sends a third to half the bytes.
_WHOLE_ANSWER = frozenset({"Deployment"})


class ApiError(OperatorError):
    """A request the API server answered with a failure ``Status``."""

    def __init__(self, status: ApiStatus) -> None:
        super().__init__(f"HTTP {status.code} {status.reason}: {status.message}")
        self.status = status


class Kube:
    def __init__(self, api_client: client.ApiClient, metrics: OperatorMetrics | None = None) -> None:
        self.api = api_client
        self.metrics = metrics or OperatorMetrics()
        # the API server's pool itself (through a configured proxy, if any): the pool manager's lookup
        # of it parses and normalises the URL on every request
        host = api_client.configuration.host.rstrip("/")
        self._pool: urllib3.HTTPConnectionPool = api_client.rest_client.pool_manager.connection_from_url(host)
        self._prefix = urllib3.util.parse_url(host).path or ""
        self._auth_lock = threading.Lock()
        self._auth: dict[str, str] = {}
        self._auth_until = 0.0

    def _auth_headers(self) -> dict[str, str]:
        """The credentials header(s), from the client's configuration (which refreshes an expiring or
        rotated token in its hook), asked at most every ``_AUTH_SECONDS``."""
        with self._auth_lock:
            now = time.monotonic()
            if now >= self._auth_until:
                settings = self.api.configuration.auth_settings().values()
                self._auth = {
                    s["key"]: s["value"] for s in settings if s.get("in") == "header" and s.get("value")
                }
                self._auth_until = now + _AUTH_SECONDS
            return self._auth

    def _call(
        self,
        method: str,
        path: str,
        *,
        query: list[tuple[str, str]] | None = None,
        headers: dict[str, str] | None = None,
        body: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """One request; a non-2xx answer raises ``ApiError`` with the server's status."""
        url = self._prefix + path + ("?" + urlencode(query) if query else "")
        sent = {"User-Agent": FIELD_MANAGER, **self._auth_headers(), **(headers or {})}
        payload = None if body is None else json.dumps(body, separators=(",", ":")).encode()
        try:
            response = self._pool.urlopen(
                method, url, body=payload, headers=sent, timeout=_TIMEOUT, redirect=False
            )
        except Exception:
            self.metrics.api_call(method, path, None, "Unreachable")
            raise
        raw: bytes = response.data
        if not 200 <= response.status <= 299:
            status = ApiStatus.parse(response.status, raw, response.reason)
            self.metrics.api_call(method, path, response.status, status.reason)
            raise ApiError(status)
        self.metrics.api_call(method, path, response.status, None)
        data: dict[str, Any] = json.loads(raw)
        return data

    def list_pages(self, path: str, query: list[tuple[str, str]]) -> Iterator[dict[str, Any]]:
        """Every page of a collection (500 items a page, so a relist of thousands stays small)."""
        token = ""
        while True:
            page = self._call(
                "GET",
                path,
                query=[*query, ("limit", "500"), *([("continue", token)] if token else [])],
                headers={"Accept": _JSON},
            )
            yield page
            token = (page.get("metadata") or {}).get("continue") or ""
            if not token:
                return

    def watch(
        self,
        path: str,
        query: list[tuple[str, str]],
        streams: list[urllib3.BaseHTTPResponse],
        read_timeout: float = WATCH_SECONDS + 30.0,
    ) -> Iterator[dict[str, Any]]:
        """The events of one watch request, parsed, until the server ends it. The open response is
        kept in ``streams`` while it lasts, so another thread can ``shutdown()`` it to stop."""
        url = self._prefix + path + "?" + urlencode([*query, ("watch", "1")])
        headers = {"User-Agent": FIELD_MANAGER, "Accept": _JSON, **self._auth_headers()}
        timeout = urllib3.Timeout(connect=10.0, read=read_timeout)
        response = self._pool.urlopen(
            "GET", url, headers=headers, timeout=timeout, preload_content=False, redirect=False
        )
        streams.append(response)
        try:
            if not 200 <= response.status <= 299:
                raise ApiError(ApiStatus.parse(response.status, response.read(), response.reason))
            for line in response:
                if line.strip():
                    yield json.loads(line)
        finally:  # closed, not pooled: a stream stopped halfway leaves unread bytes on its connection
            streams.remove(response)
            response.close()
            response.release_conn()

    def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Server-side apply ``obj`` (force: the operator owns these fields); returns the live object
        (only its metadata, as ``PartialObjectMetadata``, for the kinds not in ``_WHOLE_ANSWER``).

        ``fieldValidation=Ignore``: by default (``Warn``) the API server parses every apply body a second
        time, as strict YAML, only to find duplicate keys, which ``json.dumps`` cannot write; a field the
        API does not know is refused by the apply itself whatever the setting. That second parse was a
        third of the API server's CPU in a new bot's applies (profiled under operator-bench)."""
        meta = obj["metadata"]
        path = _PATHS[(obj["apiVersion"], obj["kind"])].format(ns=meta.get("namespace"), name=meta["name"])
        accept = _JSON if obj["kind"] in _WHOLE_ANSWER else _METADATA_ONLY
        return self._call(
            "PATCH",
            path,
            body=obj,
            query=[("fieldManager", FIELD_MANAGER), ("force", "true"), ("fieldValidation", "Ignore")],
            headers={"Content-Type": "application/apply-patch+yaml", "Accept": accept},
        )

    def secret_exists(self, namespace: str, name: str) -> bool | None:
        """Whether a Secret exists, asked as ``PartialObjectMetadata`` (its values never travel) from the
        API server's watch cache (``resourceVersion=0``: no etcd read).

        None when RBAC does not let the operator look (then the pods' readiness tells).
        """
        try:
            self._call(
                "GET",
                f"/api/v1/namespaces/{namespace}/secrets/{name}",
                query=[("resourceVersion", "0")],
                headers={"Accept": _METADATA_ONLY},
            )
        except ApiError as exc:
            if exc.status.reason == "NotFound":
                return False
            if exc.status.reason == "Forbidden":
                return None
            raise
        return True

    def list_pods(self, namespace: str | None, selector: str) -> list[dict[str, Any]]:
        """Pods matching a label selector, in one namespace or all (None), from the API server's watch
        cache (``resourceVersion=0``: no etcd read)."""
        path = "/api/v1/pods" if namespace is None else f"/api/v1/namespaces/{namespace}/pods"
        data = self._call(
            "GET",
            path,
            query=[("labelSelector", selector), ("resourceVersion", "0")],
            headers={"Accept": _JSON},
        )
        return list(data.get("items") or ())

    def delete(self, kind: str, namespace: str | None, name: str, uid: str | None) -> None:
        """Delete a child by kind and name, only if it is still the object ``uid`` names (a precondition:
        one of the same name made since is left alone); gone already is fine."""
        api_version = next(v for v, k in _PATHS if k == kind)
        body: dict[str, Any] = {"apiVersion": "v1", "kind": "DeleteOptions"}
        if uid:
            body["preconditions"] = {"uid": uid}
        try:
            self._call(
                "DELETE",
                _PATHS[(api_version, kind)].format(ns=namespace, name=name),
                body=body,
                headers={"Content-Type": _JSON, "Accept": _JSON},
            )
        except ApiError as exc:
            if exc.status.code not in (404, 409):  # 409: the precondition failed, it is another object
                raise

    def bot_uid(self, namespace: str, name: str) -> str | None:
        """The uid of a ChatBot, None if there is none (metadata only, from the watch cache)."""
        try:
            meta = self._call(
                "GET",
                f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}/{name}",
                query=[("resourceVersion", "0")],
                headers={"Accept": _METADATA_ONLY},
            ).get("metadata")
        except ApiError as exc:
            if exc.status.code == 404:
                return None
            raise
        return str((meta or {}).get("uid") or "") or None

    def patch_bot_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        self._call(
            "PATCH",
            f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}/{name}/status",
            body={"status": status},
            headers={"Content-Type": "application/merge-patch+json", "Accept": _METADATA_ONLY},
        )

    def post_event(self, bot: dict[str, str], type_: str, reason: str, message: str) -> None:
        """A core v1 Event on the bot (``kubectl describe chatbot`` shows it)."""
        now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        namespace = bot["namespace"]
        self._call(
            "POST",
            f"/api/v1/namespaces/{namespace}/events",
            body={
                "apiVersion": "v1",
                "kind": "Event",
                "metadata": {"name": f"{bot['name']}.{uuid.uuid4().hex[:16]}", "namespace": namespace},
                "involvedObject": {
                    "apiVersion": f"{GROUP}/{VERSION}",
                    "kind": "ChatBot",
                    "name": bot["name"],
                    "namespace": namespace,
                    "uid": bot["uid"],
                },
                "reason": reason,
                "message": message[:1024],
                "type": type_,
                "source": {"component": FIELD_MANAGER},
                "reportingComponent": FIELD_MANAGER,
                "firstTimestamp": now,
                "lastTimestamp": now,
                "count": 1,
            },
            headers={"Content-Type": _JSON, "Accept": _JSON},
        )
