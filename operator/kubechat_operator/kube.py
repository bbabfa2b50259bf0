"""The few Kubernetes API calls the operator makes. Edge: network I/O through one shared client.

One ``ApiClient`` (one connection pool) serves every worker: a client per call costs a TLS handshake
on both sides. Children are written only by server-side apply under one field manager. A failed call
raises ``ApiError`` carrying the server's ``Status`` (reason, causes), which ``errors.classify`` sorts.
"""

from __future__ import annotations

import datetime
import json
import uuid
from typing import Any

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
_METADATA_ONLY = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1"


class ApiError(OperatorError):
    """A request the API server answered with a failure ``Status``."""

    def __init__(self, status: ApiStatus) -> None:
        super().__init__(f"HTTP {status.code} {status.reason}: {status.message}")
        self.status = status


class Kube:
    def __init__(self, api_client: client.ApiClient, metrics: OperatorMetrics | None = None) -> None:
        self.api = api_client
        self.metrics = metrics or OperatorMetrics()

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
        method, url, sent_headers, payload, _ = self.api.param_serialize(
            method=method,
            resource_path=path,
            query_params=query,
            header_params=dict(headers or {}),
            body=body,
            auth_settings=["BearerToken"],
        )
        try:
            response = self.api.call_api(method, url, header_params=sent_headers, body=payload)
            raw: bytes = response.read()  # type: ignore[no-untyped-call]
        except Exception:
            self.metrics.api_call(method, path, None, "Unreachable")
            raise
        if not 200 <= response.status <= 299:
            status = ApiStatus.parse(response.status, raw, response.reason)
            self.metrics.api_call(method, path, response.status, status.reason)
            raise ApiError(status)
        self.metrics.api_call(method, path, response.status, None)
        data: dict[str, Any] = json.loads(raw)
        return data

    def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Server-side apply ``obj`` (force: the operator owns these fields); returns the live object."""
        meta = obj["metadata"]
        path = _PATHS[(obj["apiVersion"], obj["kind"])].format(ns=meta.get("namespace"), name=meta["name"])
        return self._call(
            "PATCH",
            path,
            body=obj,
            query=[("fieldManager", FIELD_MANAGER), ("force", "true")],
            headers={"Content-Type": "application/apply-patch+yaml", "Accept": _JSON},
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

    def delete_cluster_role_binding(self, name: str) -> None:
        """Delete a ClusterRoleBinding; gone already is fine."""
        try:
            self._call(
                "DELETE",
                f"/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/{name}",
                headers={"Accept": _JSON},
            )
        except ApiError as exc:
            if exc.status.code != 404:
                raise

    def patch_bot_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        self._call(
            "PATCH",
            f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}/{name}/status",
            body={"status": status},
            headers={"Content-Type": "application/merge-patch+json", "Accept": _JSON},
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
