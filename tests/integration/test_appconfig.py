"""Settings and the OpenAI key from Azure App Configuration and Key Vault, through the real SDKs.

The provider, ``azure-keyvault-secrets`` and ``DefaultAzureCredential`` (workload identity path) talk to
local servers that speak the services' wire protocols (``tests/support/fake_azure``); the bot runs over
real HTTP. Every test checks that nothing left loopback and that no secret reached a log line.
"""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import httpx2
import pytest
from azure.appconfiguration import AzureAppConfigurationClient, SecretReferenceConfigurationSetting
from azure.core import MatchConditions
from azure.core.exceptions import ClientAuthenticationError

from chatbot_service.appconfig import AppConfigurationSource
from chatbot_service.appconfig_options import parse_options
from tests.integration.conftest import BotFactory
from tests.support.fake_azure.appconfig import KEYVAULT_REF, signed_headers
from tests.support.fake_azure.keyvault import SCOPE as VAULT_SCOPE
from tests.support.fake_azure.world import STORE_HOST, VAULT_HOST, AzureWorld, azure_world
from tests.support.fake_openai import FakeOpenAI
from tests.support.servers import ThreadedServer

T = TypeVar("T")
KEY_V1 = "sk-from-key-vault-v1-7c1e0a"
KEY_V2 = "sk-from-key-vault-v2-93b4d2"


@pytest.fixture
def azure(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> Iterator[AzureWorld]:
    """The Azure fakes, with logs captured at DEBUG; afterwards, no secret may be in any log line."""
    caplog.set_level(logging.DEBUG, logger="azure")
    caplog.set_level(logging.DEBUG, logger="kubechat")
    options = getattr(request, "param", {})
    with azure_world(tmp_path, monkeypatch, **options) as world:
        world.extra_secrets += [KEY_V1, KEY_V2]
        yield world
    assert world.blocked == [], "a connection tried to leave loopback"
    leaked = [i for i, secret in enumerate(world.secret_values()) if secret in caplog.text]
    assert leaked == [], "secret values (by index) found in the logs"


def eventually(check: Callable[[], T | None], timeout: float = 15.0, what: str = "condition") -> T:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def store_env(upstream: FakeOpenAI, azure: AzureWorld, **extra: str) -> dict[str, str]:
    """A bot named helpdesk in the prd environment, reading the store with workload identity."""
    return {
        "OPENAI_BASE_URL": upstream.url,
        "KUBECHAT_BOT_NAME": "helpdesk",
        "KUBECHAT_APPCONFIG_ENDPOINT": azure.store.url,
        "KUBECHAT_APPCONFIG_LABEL": "prd",
        "KUBECHAT_APPCONFIG_REFRESH_INTERVAL": "1",
        "KUBECHAT_APPCONFIG_STARTUP_TIMEOUT": "1",
        "KUBECHAT_KEYVAULT_VERIFY_CHALLENGE_RESOURCE": "false",
        "KUBECHAT_RELOAD_INTERVAL": "0.2",
        "KUBECHAT_MAX_RETRIES": "0",
        "KUBECHAT_REQUEST_TIMEOUT": "5",
        **extra,
    }


def helpdesk_store(azure: AzureWorld, upstream: FakeOpenAI) -> None:
    """Shared defaults unlabelled, prd overrides, the key as a Key Vault reference (which the
    upstream accepts)."""
    upstream.api_keys = {KEY_V1}
    azure.vault.set_secret("helpdesk-openai-key", KEY_V1)
    azure.store.set("helpdesk:model", "gpt-4o-mini")
    azure.store.set("helpdesk:system_prompt", "You are the help desk.")
    azure.store.set("helpdesk:temperature", "0.3")
    azure.store.set("helpdesk:temperature", "0.7", label="prd")
    azure.store.set("helpdesk:unknown_knob", "ignored")
    azure.store.set_reference("helpdesk:openai_api_key", azure.vault.uri("helpdesk-openai-key"))
    azure.store.set("otherbot:model", "gpt-4")


def readyz(bot: ThreadedServer) -> httpx2.Response:
    return httpx2.get(bot.url + "/readyz", timeout=10)


def ready(bot: ThreadedServer) -> bool:
    return readyz(bot).status_code == 200


def problems_matching(bot: ThreadedServer, *parts: str) -> str | None:
    response = readyz(bot)
    assert response.status_code == 503, response.text
    return next((p for p in response.json()["problems"] if all(x in p for x in parts)), None)


def chat(bot: ThreadedServer, message: str, session_id: str | None = None) -> httpx2.Response:
    body: dict[str, Any] = {"message": message} | ({"session_id": session_id} if session_id else {})
    return httpx2.post(bot.url + "/chat", json=body, timeout=10)


def assert_no_secrets(azure: AzureWorld, *texts: str) -> None:
    assert not [s for s in azure.secret_values() for t in texts if s in t], "a secret value in a response"


# -- the fakes are faithful ------------------------------------------------------------------


def test_the_store_speaks_app_configurations_wire_protocol(azure: AzureWorld) -> None:
    for n in range(5):
        azure.store.set(f"app1:k{n}", str(n), label="prd")
    azure.store.set_reference("app1:mysecret", azure.vault.uri("mysecret"), label="prd")
    with AzureAppConfigurationClient.from_connection_string(azure.store.connection_string()) as client:
        check_pages_etags_and_one_key(azure, client)
    # HMAC as the service checks it: a wrong secret, or a date 20 minutes off, is refused
    wrong = base64.b64encode(b"not the secret at all, 32 bytes!").decode()
    azure.extra_secrets.append(wrong)
    with (
        AzureAppConfigurationClient.from_connection_string(azure.store.connection_string(wrong)) as client,
        pytest.raises(ClientAuthenticationError),
    ):
        client.get_configuration_setting("app1:k0", label="prd")
    path = "/kv?api-version=2026-04-01&key=app1%3A%2A&label=prd"
    host = azure.store.url.removeprefix("https://")
    for offset, status in ((timedelta(minutes=20), 401), (timedelta(0), 200)):
        headers = signed_headers(
            credential_id=azure.store.credential_id,
            secret=azure.store.secret,
            method="GET",
            path_and_query=path,
            host=host,
            date=datetime.now(UTC) - offset,
        )
        response = httpx2.get(azure.store.url + path, headers=headers, verify=azure.ca.ssl_context())
        assert response.status_code == status


def check_pages_etags_and_one_key(azure: AzureWorld, client: AzureAppConfigurationClient) -> None:
    pages = client.list_configuration_settings(key_filter="app1:*", label_filter="prd").by_page()
    settings, etags = [], []
    for page in pages:
        settings += list(page)
        etags.append(pages.etag)
    assert [s.key for s in settings] == [*(f"app1:k{n}" for n in range(5)), "app1:mysecret"]
    assert len(etags) == 3 and sum("after" in r.query for r in azure.store.seen("/kv")) == 2
    reference = settings[-1]
    assert (
        isinstance(reference, SecretReferenceConfigurationSetting) and reference.content_type == KEYVAULT_REF
    )
    assert reference.secret_id == azure.vault.uri("mysecret")
    assert all(r.query["api-version"] for r in azure.store.requests)
    # unchanged pages answer 304 (still linked to the next), a changed one 200
    unchanged = client.list_configuration_settings(key_filter="app1:*", label_filter="prd")
    assert list(unchanged.by_page(match_conditions=etags)) == []
    azure.store.set("app1:k4", "changed", label="prd")
    changed = client.list_configuration_settings(key_filter="app1:*", label_filter="prd")
    assert len(list(changed.by_page(match_conditions=etags))) == 1
    assert [r.status for r in azure.store.seen("/kv")][-4:] == [304, 304, 304, 200]
    # one key, as the sentinel is read; its ETag works too
    one = client.get_configuration_setting("app1:k0", label="prd")
    assert one.value == "0"
    again = client.get_configuration_setting(
        "app1:k0", label="prd", etag=one.etag, match_condition=MatchConditions.IfModified
    )
    assert again is None and azure.store.requests[-1].status == 304


# -- selection: prefix, labels, unlabelled defaults -------------------------------------------


def load_source(env: dict[str, str]) -> AppConfigurationSource:
    options = parse_options(env)
    assert options is not None
    source = AppConfigurationSource(options, keys=None)  # every key under the prefix, not only settings
    source.start()
    eventually(lambda: source.loaded, what="the store to load")
    return source


def test_one_store_serves_each_environment_its_label_over_unlabelled_defaults(azure: AzureWorld) -> None:
    azure.vault.set_secret("mysecret", "kv-secret-value-1f9a")
    azure.extra_secrets.append("kv-secret-value-1f9a")
    azure.store.set("app1:setting1", "value1", label="dev")
    azure.store.set("app1:setting1", "value2", label="prd")
    azure.store.set_reference("app1:mysecret", azure.vault.uri("mysecret"))
    azure.store.set("app1:shared", "everywhere")
    azure.store.set("app1:setting2", "default")
    azure.store.set("app1:setting2", "prd only", label="prd")
    azure.store.set("app2:setting1", "another app")
    seen = {}
    for label in ("dev", "prd"):
        env = {
            "KUBECHAT_APPCONFIG_CONNECTION_STRING": azure.store.connection_string(),
            "KUBECHAT_APPCONFIG_KEY_PREFIX": "app1:",
            "KUBECHAT_APPCONFIG_LABEL": label,
            "KUBECHAT_KEYVAULT_VERIFY_CHALLENGE_RESOURCE": "false",
        }
        source = load_source(env)
        try:
            seen[label] = source.values()
        finally:
            source.close()
    common = {"mysecret": "kv-secret-value-1f9a", "shared": "everywhere"}
    assert seen["dev"] == {"setting1": "value1", "setting2": "default", **common}
    assert seen["prd"] == {"setting1": "value2", "setting2": "prd only", **common}
    # unlabelled first, then the label (later wins); pages of two, followed by their Link
    queries = [(r.query["key"], r.query["label"], "after" in r.query) for r in azure.store.seen("/kv")]
    assert queries[:2] == [("app1:*", "\0", False), ("app1:*", "\0", True)]
    assert ("app1:*", "prd", False) in queries
    assert VAULT_SCOPE in azure.identity.scopes_requested


# -- the bot -----------------------------------------------------------------------------------


def test_the_key_from_key_vault_is_the_upstream_bearer_and_a_rotated_key_is_used_after_a_refresh(
    azure: AzureWorld, upstream: FakeOpenAI, start_bot: BotFactory
) -> None:
    helpdesk_store(azure, upstream)
    with start_bot(store_env(upstream, azure)) as bot:
        eventually(lambda: ready(bot), what="ready")
        first = chat(bot, "Hello")
        assert first.status_code == 200, first.text
        sent = upstream.last
        assert sent.headers["authorization"] == f"Bearer {KEY_V1}"
        assert sent.body["model"] == "gpt-4o-mini" and sent.body["temperature"] == 0.7
        assert sent.body["messages"][0] == {"role": "system", "content": "You are the help desk."}
        # the store was read with a workload identity token for its audience, the vault with one for its own
        assert set(azure.identity.scopes_requested) == {"https://appconfig.azure.com/.default", VAULT_SCOPE}
        azure.vault.rotate("helpdesk-openai-key", KEY_V2)
        upstream.api_keys = {KEY_V2}  # the old key is revoked at once

        def answered_with_new_key() -> bool:
            reply = chat(bot, "Still there?", first.json()["session_id"])
            return reply.status_code == 200 and upstream.last.headers["authorization"] == f"Bearer {KEY_V2}"

        eventually(answered_with_new_key, what="the rotated key")
        # the conversation went on across the rotation
        assert upstream.last.body["messages"][1]["content"] == "Hello"
        report = readyz(bot)
        assert report.status_code == 200
        assert_no_secrets(azure, report.text, first.text)


def test_a_changed_setting_applies_when_the_sentinel_changes(
    azure: AzureWorld, upstream: FakeOpenAI, start_bot: BotFactory
) -> None:
    helpdesk_store(azure, upstream)
    azure.store.set("helpdesk:sentinel", "1", label="prd")
    env = store_env(upstream, azure, KUBECHAT_APPCONFIG_SENTINEL_KEY="sentinel")
    with start_bot(env) as bot:
        eventually(lambda: ready(bot), what="ready")
        assert chat(bot, "one").status_code == 200 and upstream.last.body["temperature"] == 0.7
        azure.store.set("helpdesk:temperature", "0.2", label="prd")
        lists_before = len(azure.store.seen("/kv"))
        # the sentinel is read at startup, then once per refresh interval
        eventually(lambda: len(azure.store.seen("/kv/helpdesk:sentinel")) >= 2, what="a sentinel check")
        assert len(azure.store.seen("/kv")) == lists_before, "only the sentinel is read while it is unchanged"
        azure.store.set("helpdesk:sentinel", "2", label="prd")

        def new_temperature() -> bool:
            return chat(bot, "two").status_code == 200 and upstream.last.body["temperature"] == 0.2

        eventually(new_temperature, what="the new temperature")


def test_the_chatbot_spec_beats_app_configuration_which_beats_the_environment(
    azure: AzureWorld, upstream: FakeOpenAI, start_bot: BotFactory, tmp_path: Path
) -> None:
    helpdesk_store(azure, upstream)
    config_dir = tmp_path / "spec"
    config_dir.mkdir()
    (config_dir / "system_prompt").write_text("You are the bot the ChatBot spec describes.")
    key_file = tmp_path / "openai-key"
    key_file.write_text("sk-from-the-mounted-secret-5d2a")
    azure.extra_secrets.append("sk-from-the-mounted-secret-5d2a")
    connection_file = tmp_path / "connection-string"
    connection_file.write_text(azure.store.connection_string() + "\n")
    upstream.api_keys = {"sk-from-the-mounted-secret-5d2a"}
    env = store_env(upstream, azure, KUBECHAT_MODEL="gpt-4", KUBECHAT_MAX_REPLY_TOKENS="99")
    del env["KUBECHAT_APPCONFIG_ENDPOINT"]
    env |= {
        "KUBECHAT_APPCONFIG_CONNECTION_STRING_FILE": str(connection_file),
        "KUBECHAT_CONFIG_DIR": str(config_dir),
        "KUBECHAT_OPENAI_API_KEY_FILE": str(key_file),
    }
    with start_bot(env) as bot:
        eventually(lambda: ready(bot), what="ready")
        assert chat(bot, "hi").status_code == 200
        body = upstream.last.body
        assert body["model"] == "gpt-4o-mini"  # App Configuration over the environment
        assert body["max_tokens"] == 99  # only the environment sets it
        assert body["messages"][0]["content"] == "You are the bot the ChatBot spec describes."  # files win
        assert upstream.last.headers["authorization"] == "Bearer sk-from-the-mounted-secret-5d2a"


# -- failures ----------------------------------------------------------------------------------


@pytest.mark.parametrize("azure", [{"start_store": False}], indirect=True)
def test_a_store_down_at_start_leaves_the_bot_up_not_ready_until_it_loads(
    azure: AzureWorld, upstream: FakeOpenAI, start_bot: BotFactory
) -> None:
    helpdesk_store(azure, upstream)
    with start_bot(store_env(upstream, azure)) as bot:
        where = f"App Configuration {azure.store.url} not loaded yet"
        assert problems_matching(bot, where, "loading")
        assert chat(bot, "hi").json()["error"]["code"] == "not_ready"
        eventually(
            lambda: problems_matching(bot, where, "cannot connect", "Connection refused"), what="cause"
        )
        azure.start_store()
        eventually(lambda: ready(bot), what="ready once the store is up")
        assert chat(bot, "hi").status_code == 200


def test_a_wrong_hmac_secret_is_reported_not_fatal(
    azure: AzureWorld, upstream: FakeOpenAI, start_bot: BotFactory
) -> None:
    helpdesk_store(azure, upstream)
    wrong = base64.b64encode(b"a wrong secret of thirty-two b!!").decode()
    azure.extra_secrets.append(wrong)
    env = store_env(
        upstream, azure, KUBECHAT_APPCONFIG_CONNECTION_STRING=azure.store.connection_string(wrong)
    )
    del env["KUBECHAT_APPCONFIG_ENDPOINT"]
    with start_bot(env) as bot:
        problem = eventually(lambda: problems_matching(bot, "HTTP 401", "Invalid Signature"), what="the 401")
        assert problem.startswith(f"App Configuration {azure.store.url} not loaded yet")
        assert httpx2.get(bot.url + "/healthz").status_code == 200
        assert_no_secrets(azure, readyz(bot).text, chat(bot, "hi").text)


def test_a_missing_key_vault_secret_names_the_store_key_until_it_exists(
    azure: AzureWorld, upstream: FakeOpenAI, start_bot: BotFactory
) -> None:
    helpdesk_store(azure, upstream)
    azure.store.set_reference("helpdesk:openai_api_key", azure.vault.uri("no-such-secret"), label="prd")
    upstream.api_keys = {KEY_V2}
    with start_bot(store_env(upstream, azure)) as bot:
        problem = eventually(lambda: problems_matching(bot, "helpdesk:openai_api_key", "SecretNotFound"))
        assert "no-such-secret" in problem and "HTTP 404" in problem
        azure.vault.set_secret("no-such-secret", KEY_V2)
        eventually(lambda: ready(bot), what="ready once the secret exists")
        assert chat(bot, "hi").status_code == 200
        assert upstream.last.headers["authorization"] == f"Bearer {KEY_V2}"


def test_challenge_verification_refuses_a_vault_outside_vault_azure_net(
    azure: AzureWorld, upstream: FakeOpenAI, start_bot: BotFactory
) -> None:
    """The default: a vault reached as 127.0.0.1 cannot claim ``vault.azure.net``; no token is sent."""
    helpdesk_store(azure, upstream)
    env = store_env(upstream, azure)
    del env["KUBECHAT_KEYVAULT_VERIFY_CHALLENGE_RESOURCE"]
    with start_bot(env) as bot:
        problem = eventually(lambda: problems_matching(bot, "helpdesk:openai_api_key", "does not match"))
        assert "The challenge resource 'vault.azure.net'" in problem
    assert VAULT_SCOPE not in azure.identity.scopes_requested


def test_a_failing_refresh_keeps_the_last_good_settings(
    azure: AzureWorld, upstream: FakeOpenAI, start_bot: BotFactory, caplog: pytest.LogCaptureFixture
) -> None:
    helpdesk_store(azure, upstream)
    with start_bot(store_env(upstream, azure)) as bot:
        eventually(lambda: ready(bot), what="ready")
        session = chat(bot, "before").json()["session_id"]
        azure.store.fail_with = 503
        eventually(lambda: "refresh failed, keeping the values loaded before" in caplog.text, what="warning")
        reply = chat(bot, "during", session)
        assert reply.status_code == 200 and ready(bot)
        assert [m["content"] for m in upstream.last.body["messages"] if m["role"] == "user"] == [
            "before",
            "during",
        ]
        azure.store.fail_with = None
        azure.store.set("helpdesk:model", "gpt-4.1")

        def new_model() -> bool:
            return chat(bot, "after", session).status_code == 200 and upstream.last.body["model"] == "gpt-4.1"

        eventually(new_model, what="the change after the outage")
        assert caplog.text.count("refresh failed, keeping") == 1 and "refreshes again" in caplog.text


# -- production names ------------------------------------------------------------------------


@pytest.mark.parametrize("azure", [{"real_names": True}], indirect=True)
def test_production_configuration_with_real_host_names_and_challenge_verification(
    azure: AzureWorld, upstream: FakeOpenAI, start_bot: BotFactory
) -> None:
    """``*.azconfig.io``, ``*.vault.azure.net`` and ``login.microsoftonline.com`` through a loopback
    proxy: no authority override, ``verify_challenge_resource`` left on."""
    helpdesk_store(azure, upstream)
    assert azure.vault.uri("x").startswith(f"https://{VAULT_HOST}/")
    env = store_env(upstream, azure)
    del env["KUBECHAT_KEYVAULT_VERIFY_CHALLENGE_RESOURCE"]
    assert env["KUBECHAT_APPCONFIG_ENDPOINT"] == f"https://{STORE_HOST}"
    with start_bot(env) as bot:
        eventually(lambda: ready(bot), what="ready")
        assert chat(bot, "hi").status_code == 200
        assert upstream.last.headers["authorization"] == f"Bearer {KEY_V1}"
    assert azure.proxy is not None and not azure.proxy.refused
    assert set(azure.proxy.tunnels) == {"login.microsoftonline.com", VAULT_HOST, STORE_HOST}
    assert set(azure.identity.scopes_requested) == {"https://azconfig.io/.default", VAULT_SCOPE}
