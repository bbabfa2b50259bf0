"""A test certificate authority (``trustme``) and server certificates it signs, as files."""

from __future__ import annotations

import ssl
from pathlib import Path

import trustme


class TestCA:
    """Trust ``ca_file`` (``REQUESTS_CA_BUNDLE``) and serve with ``server_cert(...)`` files."""

    __test__ = False  # not a pytest test class

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.ca = trustme.CA()
        self.ca_file = folder / "test-ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        self._issued = 0

    def server_cert(self, *names: str) -> dict[str, str]:
        """uvicorn's ``ssl_certfile``/``ssl_keyfile`` for a certificate valid for ``names``."""
        cert = self.ca.issue_cert(*names)
        self._issued += 1
        chain = self.folder / f"server-{self._issued}.pem"
        key = self.folder / f"server-{self._issued}.key"
        chain.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
        cert.private_key_pem.write_to_path(str(key))
        return {"ssl_certfile": str(chain), "ssl_keyfile": str(key)}

    def ssl_context(self) -> ssl.SSLContext:
        """A client context that trusts this CA (for clients other than the Azure SDKs)."""
        return ssl.create_default_context(cafile=str(self.ca_file))
