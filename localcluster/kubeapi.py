"""Just enough of a Kubernetes client (standard library only) to bootstrap the cluster and write kubeconfigs.

The starter must run before any pip install, so it cannot use the `kubernetes` package.
"""

from __future__ import annotations

import base64
import json
import ssl
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from localcluster.errors import ApiError, LocalClusterError


def tls_context(ca_file: Path, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
    """A verifying TLS context trusting only our CA, optionally presenting a client certificate."""
    context = ssl.create_default_context(cafile=str(ca_file))
    if cert is not None:
        context.load_cert_chain(str(cert), str(key) if key else None)
    return context


def request(
    url: str,
    context: ssl.SSLContext | None = None,
    method: str = "GET",
    body: Any = None,
    timeout: float = 5.0,
) -> Any:
    """Send one request; return the decoded JSON (or text) body, raise ApiError on HTTP errors."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    # No proxy handler: a developer's HTTPS_PROXY must never see (or break) loopback cluster traffic.
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context)
    )
    try:
        with opener.open(req, timeout=timeout) as response:
            text = response.read().decode()
    except urllib.error.HTTPError as err:
        raise ApiError(err.code, err.read().decode(errors="replace")) from None
    try:
        return json.loads(text)
    except ValueError:
        return text


def create(server: str, context: ssl.SSLContext, path: str, obj: dict[str, Any]) -> None:
    """POST `obj`; an object that already exists is fine (the cluster may be restarted on the same data)."""
    try:
        request(f"{server}{path}", context, "POST", obj)
    except ApiError as err:
        if err.status != 409:
            raise


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def write_kubeconfig(path: Path, server: str, ca_file: Path, cert: Path, key: Path, user: str) -> None:
    """Write a self-contained kubeconfig (credentials embedded), as JSON: valid YAML without a yaml module."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "kubechat-local",
                "cluster": {"server": server, "certificate-authority-data": _b64(ca_file)},
            }
        ],
        "users": [
            {"name": user, "user": {"client-certificate-data": _b64(cert), "client-key-data": _b64(key)}}
        ],
        "contexts": [{"name": "kubechat-local", "context": {"cluster": "kubechat-local", "user": user}}],
        "current-context": "kubechat-local",
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config, indent=2) + "\n")
    path.chmod(0o600)


def read_kubeconfig_server(path: Path) -> str:
    """The API server URL of the current context of a kubeconfig (JSON or the simple YAML kubectl writes)."""
    text = path.read_text()
    try:
        config = json.loads(text)
    except ValueError:
        # Not JSON: fall back to the first `server:` line, enough for a one-cluster kubeconfig.
        for line in text.splitlines():
            if line.strip().startswith("server:"):
                return line.split("server:", 1)[1].strip().strip("'\"")
        raise LocalClusterError(f"no server found in {path}") from None
    contexts = {c["name"]: c["context"] for c in config.get("contexts", [])}
    clusters = {c["name"]: c["cluster"] for c in config.get("clusters", [])}
    cluster_name = contexts[config["current-context"]]["cluster"]
    return str(clusters[cluster_name]["server"])
