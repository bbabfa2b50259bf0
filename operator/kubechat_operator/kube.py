"""The few Kubernetes API calls the operator makes. Edge: network I/O through one shared client.

One ``ApiClient`` (one connection pool) serves every handler: a client per call costs a TLS
handshake on both sides. Children are written only by server-side apply under one field manager.
"""

from __future__ import annotations

import json
from typing import Any

from kubernetes import client

from kubechat_operator import FIELD_MANAGER, GROUP, PLURAL, VERSION

_PATHS = {
    ("v1", "ConfigMap"): "/api/v1/namespaces/{ns}/configmaps/{name}",
    ("v1", "Service"): "/api/v1/namespaces/{ns}/services/{name}",
    ("apps/v1", "Deployment"): "/apis/apps/v1/namespaces/{ns}/deployments/{name}",
    ("v1", "ServiceAccount"): "/api/v1/namespaces/{ns}/serviceaccounts/{name}",
    ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding"): (
        "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/{name}"
    ),
}


class Kube:
    def __init__(self, api_client: client.ApiClient) -> None:
        self.api = api_client

    def _call(
        self,
        method: str,
        path: str,
        *,
        query: list[tuple[str, str]] | None = None,
        headers: dict[str, str] | None = None,
        body: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """One request; a non-2xx answer raises ``ApiException`` with the server's status and body."""
        method, url, sent_headers, payload, _ = self.api.param_serialize(
            method=method,
            resource_path=path,
            query_params=query,
            header_params=dict(headers or {}),
            body=body,
            auth_settings=["BearerToken"],
        )
        response = self.api.call_api(method, url, header_params=sent_headers, body=payload)
        raw: bytes = response.read()  # type: ignore[no-untyped-call]
        if not 200 <= response.status <= 299:
            raise client.ApiException(http_resp=response, body=raw.decode(errors="replace"))
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
            headers={"Content-Type": "application/apply-patch+yaml", "Accept": "application/json"},
        )

    def get_deployment(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            found = self._call(
                "GET",
                _PATHS[("apps/v1", "Deployment")].format(ns=namespace, name=name),
                headers={"Accept": "application/json"},
            )
        except client.ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return found

    def secret_exists(self, namespace: str, name: str) -> bool | None:
        """Whether a Secret exists, asked as ``PartialObjectMetadata``: its values never travel.

        None when RBAC does not let the operator look (then the pods' readiness tells).
        """
        try:
            self._call(
                "GET",
                f"/api/v1/namespaces/{namespace}/secrets/{name}",
                headers={"Accept": "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1"},
            )
        except client.ApiException as exc:
            if exc.status == 404:
                return False
            if exc.status == 403:
                return None
            raise
        return True

    def delete_cluster_role_binding(self, name: str) -> None:
        """Delete a ClusterRoleBinding; gone already is fine."""
        try:
            self._call(
                "DELETE",
                f"/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/{name}",
                headers={"Accept": "application/json"},
            )
        except client.ApiException as exc:
            if exc.status != 404:
                raise

    def patch_bot_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        self._call(
            "PATCH",
            f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}/{name}/status",
            body={"status": status},
            headers={"Content-Type": "application/merge-patch+json", "Accept": "application/json"},
        )
