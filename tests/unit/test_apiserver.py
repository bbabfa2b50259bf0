"""Where the API server is and how to authenticate (chatbot_service/apiserver.py), from the values a pod's
environment and a kubeconfig hold."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from chatbot_service.apiserver import (
    SERVICE_ACCOUNT_DIR,
    KubeConfigError,
    Pem,
    from_kubeconfig,
    in_cluster,
    kubeconfig_path,
)
from chatbot_service.tokenreview import identity_from


def test_in_a_pod_the_service_host_and_the_mounted_files() -> None:
    server = in_cluster({"KUBERNETES_SERVICE_HOST": "10.0.0.1", "KUBERNETES_SERVICE_PORT": "443"})
    assert server is not None and server.url == "https://10.0.0.1:443"
    assert server.token_file == f"{SERVICE_ACCOUNT_DIR}/token" and server.token is None
    assert server.ca == Pem(path=f"{SERVICE_ACCOUNT_DIR}/ca.crt")
    ipv6 = in_cluster({"KUBERNETES_SERVICE_HOST": "fd00::1", "KUBERNETES_SERVICE_PORT": "6443"})
    assert ipv6 is not None and ipv6.url == "https://[fd00::1]:6443"
    assert in_cluster({"KUBERNETES_SERVICE_HOST": "10.0.0.1"}) is None
    assert in_cluster({}) is None


def test_the_first_kubeconfig_path_else_the_home_one() -> None:
    assert kubeconfig_path({"KUBECONFIG": ":/a/one:/b/two"}, "/home/u") == "/a/one"
    assert kubeconfig_path({}, "/home/u") == "/home/u/.kube/config"
    assert kubeconfig_path({"KUBECONFIG": ""}, "/home/u") == "/home/u/.kube/config"


def config(cluster: dict[str, Any], user: dict[str, Any] | None) -> dict[str, Any]:
    other = {"name": "other", "cluster": {"server": "https://elsewhere:1"}}
    return {
        "clusters": [other, {"name": "c", "cluster": cluster}],
        "users": [{"name": "u", "user": user}] if user is not None else [],
        "contexts": [
            {"name": "x", "context": {"cluster": "other", "user": "u"}},
            {"name": "ctx", "context": {"cluster": "c", "user": "u" if user is not None else None}},
        ],
        "current-context": "ctx",
    }


def test_the_current_context_with_relative_files_resolved_beside_the_kubeconfig() -> None:
    server = from_kubeconfig(
        config(
            {"server": "https://127.0.0.1:6443/", "certificate-authority": "pki/ca.crt"},
            {"tokenFile": "token", "client-certificate": "/abs/c.crt", "client-key": "k.key"},
        ),
        "/home/u/.kube/config",
    )
    assert server.url == "https://127.0.0.1:6443" and server.source == "/home/u/.kube/config"
    assert server.ca == Pem(path="/home/u/.kube/pki/ca.crt")
    assert server.token_file == "/home/u/.kube/token"
    assert server.client_cert == Pem(path="/abs/c.crt") and server.client_key == Pem(
        path="/home/u/.kube/k.key"
    )
    assert not server.insecure


def test_inline_data_wins_and_is_decoded_and_the_token_stays_out_of_repr() -> None:
    pem = b"-----BEGIN CERTIFICATE-----\n"
    data = base64.b64encode(pem).decode()
    server = from_kubeconfig(
        config(
            {"server": "https://h:1", "certificate-authority-data": data, "certificate-authority": "ignored"},
            {"token": "s3cret-token-value"},
        ),
        "/k",
    )
    assert server.ca == Pem(data=pem) and server.token == "s3cret-token-value"
    assert "s3cret" not in repr(server)
    anonymous = from_kubeconfig(
        config({"server": "https://h:1", "insecure-skip-tls-verify": True}, None), "/k"
    )
    assert anonymous.insecure and anonymous.token is None and anonymous.ca is None


@pytest.mark.parametrize(
    ("document", "said"),
    [
        ("just text", "the kubeconfig is not a mapping"),
        ({"clusters": []}, "no current-context"),
        (
            {**config({"server": "https://h:1"}, {}), "current-context": "gone"},
            "no entry named 'gone' in contexts",
        ),
        (config({}, {"token": "t"}), "cluster 'c' has no server"),
        (config({"server": "https://h:1"}, {"exec": {"command": "aws"}}), "authenticates with 'exec'"),
        (config({"server": "https://h:1"}, {"auth-provider": {"name": "gcp"}}), "'auth-provider'"),
        (config({"server": "https://h:1", "certificate-authority-data": "%%%"}, {}), "not base64"),
        (config({"server": "https://h:1"}, {"token": 12}), "token is not a string"),
    ],
)
def test_what_cannot_be_used_is_said(document: object, said: str) -> None:
    with pytest.raises(KubeConfigError, match=said):
        from_kubeconfig(document, "/k")


AUDIENCE = "helpdesk.team"


@pytest.mark.parametrize(
    ("status", "name"),
    [
        (
            {
                "authenticated": True,
                "audiences": [AUDIENCE],
                "user": {"username": "system:serviceaccount:team:caller", "groups": ["g"]},
            },
            "system:serviceaccount:team:caller",
        ),
        ({"authenticated": False}, None),
        (
            {
                "authenticated": True,
                "audiences": ["other"],
                "user": {"username": "system:serviceaccount:a:b"},
            },
            None,
        ),
        ({"authenticated": True, "audiences": [AUDIENCE], "user": {"username": "alice"}}, None),
        ({"authenticated": True, "audiences": [AUDIENCE], "user": "nonsense"}, None),
        ({"authenticated": "yes", "audiences": [AUDIENCE]}, None),
        (None, None),
    ],
)
def test_only_an_authenticated_service_account_for_the_audience_is_an_identity(
    status: object, name: str | None
) -> None:
    identity = identity_from(status, AUDIENCE)
    assert (identity.name if identity else None) == name
    if identity:
        assert identity.groups == frozenset({"g"}) and identity.kind == "service-account"
