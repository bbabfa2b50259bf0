"""One test's Azure: a CA, the identity endpoint, a vault and a store on loopback, and the process
environment that makes the real ``DefaultAzureCredential`` take the workload identity path to them."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest

from tests.support.fake_azure.appconfig import FakeAppConfig
from tests.support.fake_azure.identity import FakeIdentity
from tests.support.fake_azure.keyvault import FakeKeyVault
from tests.support.fake_azure.network import ConnectProxy, loopback_only
from tests.support.fake_azure.openai_data_plane import FakeAzureOpenAI
from tests.support.fake_azure.tls import TestCA
from tests.support.servers import ThreadedServer, serving

TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
CLIENT_ID = "5c9d3f1e-2b7a-4c1d-9e8f-0a1b2c3d4e5f"
#: The production host names, reached through ``ConnectProxy`` when a test asks for ``real_names``.
LOGIN_HOST = "login.microsoftonline.com"
VAULT_HOST = "kubechat-test.vault.azure.net"
STORE_HOST = "kubechat-test.azconfig.io"
OPENAI_HOST = "kubechat-test.openai.azure.com"
#: The deployment the fake Azure OpenAI resource has.
DEPLOYMENT = "chat-prod"


class AzureWorld:
    def __init__(self, ca: TestCA, identity: FakeIdentity, vault: FakeKeyVault, store: FakeAppConfig) -> None:
        self.ca = ca
        self.identity = identity
        self.vault = vault
        self.store = store
        self.store_server: ThreadedServer | None = None
        self.extra_secrets: list[str] = []
        self.blocked: list[str] = []
        self.proxy: ConnectProxy | None = None
        self.openai = FakeAzureOpenAI(identity, {DEPLOYMENT})

    def start_store(self) -> None:
        """Serve the store (tests of a store that is down at first create it unstarted)."""
        assert self.store_server is not None
        self.store_server.start()

    def secret_values(self) -> list[str]:
        """Everything that must never show in a log line or a response body."""
        return [
            self.store.secret,
            self.store.connection_string(),
            self.identity.federated_token,
            *self.identity.tokens,
            *(value for versions in self.vault.versions.values() for _, value in versions),
            *self.openai.api_keys,
            *self.extra_secrets,
        ]


@contextmanager
def azure_world(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, start_store: bool = True, real_names: bool = False
) -> Iterator[AzureWorld]:
    """With ``real_names``, the SDKs reach the fakes as ``login.microsoftonline.com``,
    ``<vault>.vault.azure.net`` and ``<store>.azconfig.io`` through an HTTPS CONNECT proxy on loopback:
    the product's production configuration, challenge resource verification included."""
    with ExitStack() as stack:
        blocked = stack.enter_context(loopback_only(monkeypatch))
        ca = TestCA(tmp_path)

        def tls(name: str) -> dict[str, str]:
            return ca.server_cert("127.0.0.1", *([name] if real_names else []))

        identity = FakeIdentity(
            tenant_id=TENANT, client_id=CLIENT_ID, federated_token="fake-sa-token-" + secrets.token_hex(12)
        )
        identity_server = stack.enter_context(serving(identity.app, **tls(LOGIN_HOST)))
        vault = FakeKeyVault(identity)
        vault_server = stack.enter_context(serving(vault.app, **tls(VAULT_HOST)))
        store = FakeAppConfig(identity=identity, page_size=2)
        store_server = ThreadedServer(store.app, **tls(STORE_HOST))
        world = AzureWorld(ca, identity, vault, store)
        openai_server = stack.enter_context(serving(world.openai.app, **tls(OPENAI_HOST)))
        servers = {
            LOGIN_HOST: identity_server,
            VAULT_HOST: vault_server,
            STORE_HOST: store_server,
            OPENAI_HOST: openai_server,
        }
        identity.url, vault.url, store.url, world.openai.url = (
            f"https://{name}" if real_names else f"https://127.0.0.1:{server.port}"
            for name, server in servers.items()
        )
        token_file = tmp_path / "azure-identity-token"
        token_file.write_text(identity.federated_token)
        environment = {
            "AZURE_CLIENT_ID": CLIENT_ID,
            "AZURE_TENANT_ID": TENANT,
            "AZURE_FEDERATED_TOKEN_FILE": str(token_file),
            "AZURE_TOKEN_CREDENTIALS": "WorkloadIdentityCredential",
            "REQUESTS_CA_BUNDLE": str(ca.ca_file),
            # what httpx (the openai client) trusts, as a process with a private CA would be told
            "SSL_CERT_FILE": str(ca.ca_file),
        }
        for name in (
            "AZURE_CLIENT_SECRET",
            "AZURE_AUTHORITY_HOST",
            "HTTPS_PROXY",
            "https_proxy",
            "HTTP_PROXY",
        ):
            monkeypatch.delenv(name, raising=False)
        if real_names:
            store.scope = "https://azconfig.io/.default"  # the audience the SDK derives from *.azconfig.io
            world.proxy = ConnectProxy({name: server.port for name, server in servers.items()}).start()
            stack.callback(world.proxy.stop)
            environment |= {"HTTPS_PROXY": world.proxy.url, "NO_PROXY": "127.0.0.1,localhost"}
        else:
            environment["AZURE_AUTHORITY_HOST"] = identity.url
        for name, value in environment.items():
            monkeypatch.setenv(name, value)
        world.store_server = store_server
        world.blocked = blocked
        if start_store:
            store_server.start()
        try:
            yield world
        finally:
            # A client still retrying in a background thread keeps idle TLS connections open; without
            # force_exit uvicorn would wait for their TLS shutdown before stopping.
            for server in servers.values():
                server.server.force_exit = True
            if store_server.thread.is_alive():
                store_server.stop()
            else:
                store_server.sock.close()
