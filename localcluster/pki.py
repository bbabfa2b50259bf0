"""A throwaway PKI for the local control plane, made with the `openssl` CLI.

A real CA (rather than self-signed serving certs and insecure-skip-tls-verify) lets every client verify the
API server: the Python kubernetes client warns on every request and runs ~4x slower without verification.
ECDSA P-256 keys keep generation to milliseconds.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from localcluster.errors import LocalClusterError

# The first IP of --service-cluster-ip-range 10.0.0.0/24: in-cluster clients reach the API server there.
SERVICE_IP = "10.0.0.1"
# 10.77.0.1: the real node's IP (tests/cluster/node.py), where pods reach the API server's endpoint.
APISERVER_SANS = (
    "IP:127.0.0.1",
    "IP:10.77.0.1",
    "DNS:localhost",
    f"IP:{SERVICE_IP}",
    "DNS:kubernetes",
    "DNS:kubernetes.default",
    "DNS:kubernetes.default.svc",
    "DNS:kubernetes.default.svc.cluster.local",
)
LOOPBACK_SANS = ("IP:127.0.0.1", "DNS:localhost")

_CA_EXTENSIONS = """\
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign,digitalSignature
subjectKeyIdentifier = hash
"""


@dataclass(frozen=True)
class CertSpec:
    """A leaf certificate: its Kubernetes identity (CN = user, O = groups) and where it may serve."""

    name: str
    common_name: str
    groups: tuple[str, ...] = ()
    sans: tuple[str, ...] = ()
    client: bool = True
    server: bool = False


@dataclass
class Pki:
    """Paths of the files one `create_pki` call wrote."""

    directory: Path
    ca_cert: Path
    ca_key: Path
    sa_key: Path
    sa_pub: Path
    certs: dict[str, tuple[Path, Path]] = field(default_factory=dict)  # name -> (cert, key)

    def cert(self, name: str) -> Path:
        return self.certs[name][0]

    def key(self, name: str) -> Path:
        return self.certs[name][1]


# Users the control plane's built-in RBAC roles already name (system:kube-controller-manager, ...).
DEFAULT_CERTS: tuple[CertSpec, ...] = (
    CertSpec("apiserver", "kube-apiserver", sans=APISERVER_SANS, client=False, server=True),
    CertSpec("admin", "kubechat-admin", groups=("system:masters",)),
    CertSpec("controller-manager", "system:kube-controller-manager", sans=LOOPBACK_SANS, server=True),
    CertSpec("scheduler", "system:kube-scheduler", sans=LOOPBACK_SANS, server=True),
    CertSpec("kwok", "kubechat:kwok"),
    # The API server's identity towards aggregated API servers; also makes it publish the request-header CA,
    # which the controller-manager and scheduler's delegated authentication otherwise complain is missing.
    CertSpec("front-proxy-client", "front-proxy-client"),
)


def _openssl(*args: str, cwd: Path) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        raise LocalClusterError("the `openssl` command is needed to create the local cluster's certificates")
    result = subprocess.run([openssl, *args], cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        raise LocalClusterError(f"openssl {' '.join(args)} failed:\n{result.stderr}")


def _subject(spec: CertSpec) -> str:
    return "/" + "/".join([*(f"O={g}" for g in spec.groups), f"CN={spec.common_name}"])


def _leaf_extensions(spec: CertSpec) -> str:
    usages = [u for u, on in (("serverAuth", spec.server), ("clientAuth", spec.client)) if on]
    lines = [
        "basicConstraints = critical,CA:FALSE",
        "keyUsage = critical,digitalSignature",
        f"extendedKeyUsage = {','.join(usages)}",
        "subjectKeyIdentifier = hash",
        "authorityKeyIdentifier = keyid",
    ]
    if spec.sans:
        lines.append(f"subjectAltName = {','.join(spec.sans)}")
    return "\n".join(lines) + "\n"


def _config(extensions: str) -> str:
    # Our own minimal config, so the system openssl.cnf cannot add CA extensions to leaf certs.
    return f"[req]\ndistinguished_name = dn\nprompt = no\n[dn]\n[ext]\n{extensions}"


def _new_cert(
    directory: Path, name: str, subject: str, extensions: str, days: int, signer: Pki | None
) -> None:
    cnf = directory / f"{name}.cnf"
    cnf.write_text(_config(extensions))
    args = ["req", "-x509", "-new", "-noenc", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]
    args += ["-keyout", f"{name}.key", "-out", f"{name}.crt", "-days", str(days), "-subj", subject]
    args += ["-config", cnf.name, "-extensions", "ext"]
    if signer is not None:
        args += ["-CA", str(signer.ca_cert), "-CAkey", str(signer.ca_key)]
    _openssl(*args, cwd=directory)
    cnf.unlink()


def create_pki(directory: Path, extra: tuple[CertSpec, ...] = ()) -> Pki:
    """Write a CA, the service-account signing key pair and one cert per spec into `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    _new_cert(directory, "ca", "/CN=kubechat-local-ca", _CA_EXTENSIONS, 3650, None)
    pki = Pki(
        directory, directory / "ca.crt", directory / "ca.key", directory / "sa.key", directory / "sa.pub"
    )
    _openssl(
        "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", "sa.key", cwd=directory
    )
    _openssl("pkey", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=directory)
    for spec in (*DEFAULT_CERTS, *extra):
        _new_cert(directory, spec.name, _subject(spec), _leaf_extensions(spec), 365, pki)
        pki.certs[spec.name] = (directory / f"{spec.name}.crt", directory / f"{spec.name}.key")
    return pki
