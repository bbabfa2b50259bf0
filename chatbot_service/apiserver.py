"""Where the Kubernetes API server is and how this process proves who it is, found as client-go finds it.
Pure: the edge (``kubeclient.py``) reads the files and passes their text in.

In a pod: ``KUBERNETES_SERVICE_HOST`` / ``KUBERNETES_SERVICE_PORT`` and the service-account token and CA the
kubelet mounts. Outside a cluster (a developer's ``kubechat serve``): the current context of the first
``KUBECONFIG`` file, ``~/.kube/config`` when it is unset. Only what one TokenReview needs is understood: the
server and its CA, a bearer token or token file, a client certificate. Exec plugins and auth providers are
refused by name rather than ignored, so a bot never calls the API server anonymously by surprise.
"""

from __future__ import annotations

import base64
import binascii
import posixpath
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"  # fixed in every pod
DEFAULT_KUBECONFIG = ".kube/config"  # under the home directory


class KubeConfigError(ValueError):
    """The kubeconfig cannot say where the API server is or how to authenticate; the message says why."""


@dataclass(frozen=True)
class Pem:
    """PEM material named by its file (read by the edge, so a rotated file is seen) or given inline."""

    path: str | None = None
    data: bytes | None = None


@dataclass(frozen=True)
class ApiServer:
    """One API server and this process's credentials for it. ``token_file`` wins over ``token``, as in
    client-go: projected tokens rotate, so the file is read again (see ``kubeclient.REREAD``)."""

    url: str
    source: str  # "in-cluster" or the kubeconfig's path: for messages
    ca: Pem | None = None  # None: the system's trust store
    insecure: bool = False  # the kubeconfig's insecure-skip-tls-verify
    token: str | None = None
    token_file: str | None = None
    client_cert: Pem | None = None
    client_key: Pem | None = None

    def __repr__(self) -> str:  # never the token
        return f"ApiServer(url={self.url!r}, source={self.source!r})"


def in_cluster(environ: Mapping[str, str]) -> ApiServer | None:
    """The API server a pod reaches, or None outside a pod (either variable unset, as client-go decides)."""
    host, port = environ.get("KUBERNETES_SERVICE_HOST"), environ.get("KUBERNETES_SERVICE_PORT")
    if not host or not port:
        return None
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"  # an IPv6 address
    return ApiServer(
        url=f"https://{host}:{port}",
        source="in-cluster",
        ca=Pem(path=f"{SERVICE_ACCOUNT_DIR}/ca.crt"),
        token_file=f"{SERVICE_ACCOUNT_DIR}/token",
    )


def kubeconfig_path(environ: Mapping[str, str], home: str) -> str:
    """The kubeconfig file to read: the first of ``KUBECONFIG``'s paths, else ``~/.kube/config``."""
    first = next((p for p in environ.get("KUBECONFIG", "").split(":") if p), None)
    return first or posixpath.join(home, DEFAULT_KUBECONFIG)


def from_kubeconfig(document: object, path: str) -> ApiServer:
    """The current context's cluster and user; relative file names are relative to the kubeconfig's folder."""
    config = _mapping(document, "the kubeconfig", path)
    name = config.get("current-context")
    if not name or not isinstance(name, str):
        raise KubeConfigError(f"{path}: no current-context")
    context = _mapping(_named(config, "contexts", name, path).get("context"), f"context {name!r}", path)
    cluster_name, user_name = context.get("cluster"), context.get("user")
    cluster = _mapping(_named(config, "clusters", cluster_name, path).get("cluster"), "cluster", path)
    user: Mapping[str, Any] = {}
    if user_name:
        user = _mapping(
            _named(config, "users", user_name, path).get("user") or {}, f"user {user_name!r}", path
        )
    server = cluster.get("server")
    if not server or not isinstance(server, str):
        raise KubeConfigError(f"{path}: cluster {cluster_name!r} has no server")
    for unsupported in ("exec", "auth-provider"):
        if user.get(unsupported):
            raise KubeConfigError(
                f"{path}: user {user_name!r} authenticates with {unsupported!r}, which kubechat does not "
                "run; give it a token, tokenFile or client certificate"
            )
    folder = posixpath.dirname(path)
    where = f"{path}: user {user_name!r}"
    return ApiServer(
        url=server.rstrip("/"),
        source=path,
        ca=_pem(cluster, "certificate-authority", folder, f"{path}: cluster {cluster_name!r}"),
        insecure=cluster.get("insecure-skip-tls-verify") is True,
        token=_string(user.get("token"), f"{where}: token"),
        token_file=_file(user.get("tokenFile"), folder, f"{where}: tokenFile"),
        client_cert=_pem(user, "client-certificate", folder, where),
        client_key=_pem(user, "client-key", folder, where),
    )


def _mapping(value: object, what: str, path: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise KubeConfigError(f"{path}: {what} is not a mapping")
    return value


def _named(config: Mapping[str, Any], section: str, name: object, path: str) -> Mapping[str, Any]:
    for entry in config.get(section) or ():
        if isinstance(entry, Mapping) and entry.get("name") == name:
            return entry
    raise KubeConfigError(f"{path}: no entry named {name!r} in {section}")


def _string(value: object, what: str) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise KubeConfigError(f"{what} is not a string")
    return value


def _file(value: object, folder: str, what: str) -> str | None:
    name = _string(value, what)
    return posixpath.join(folder, name) if name else None


def _pem(section: Mapping[str, Any], key: str, folder: str, where: str) -> Pem | None:
    """``key`` (a file) or ``key-data`` (base64 PEM), the data first as client-go takes it."""
    inline = _string(section.get(f"{key}-data"), f"{where}: {key}-data")
    if inline:
        try:
            return Pem(data=base64.b64decode(inline, validate=True))
        except (binascii.Error, ValueError):
            raise KubeConfigError(f"{where}: {key}-data is not base64") from None
    named = _file(section.get(key), folder, f"{where}: {key}")
    return Pem(path=named) if named else None
