"""A keyless bot on Azure OpenAI: Entra ID workload identity to the model, through the real SDKs.

The bot's openai client and the real ``DefaultAzureCredential`` reach ``kubechat-test.openai.azure.com``
and ``login.microsoftonline.com`` by name through an HTTPS CONNECT proxy on loopback, configured only
by the workload-identity environment (``AZURE_CLIENT_ID``, ``AZURE_TENANT_ID``,
``AZURE_FEDERATED_TOKEN_FILE``) plus the proxy and the test CA, as in production. The fake data plane
takes only unexpired tokens the fake Entra ID issued for the Cognitive Services scope.
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2
import openai
import pytest

from tests.integration.conftest import BotFactory
from tests.support.fake_azure.openai_data_plane import SCOPE
from tests.support.fake_azure.world import DEPLOYMENT, OPENAI_HOST, AzureWorld, azure_world
from tests.support.servers import ThreadedServer

ROLE = "Cognitive Services OpenAI User"


@pytest.fixture
def azure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> Iterator[AzureWorld]:
    caplog.set_level(logging.DEBUG, logger="azure")
    caplog.set_level(logging.DEBUG, logger="kubechat")
    with azure_world(tmp_path, monkeypatch, real_names=True) as world:
        yield world
    assert world.blocked == [], "a connection tried to leave loopback"
    assert world.proxy is not None and not world.proxy.refused
    leaked = [i for i, secret in enumerate(world.secret_values()) if secret in caplog.text]
    assert leaked == [], "secret values (by index) found in the logs"


def azure_env(azure: AzureWorld, **extra: str) -> dict[str, str]:
    """What the operator renders for ``spec.azureOpenAI`` (no key: Entra ID)."""
    return {
        "KUBECHAT_BOT_NAME": "helpdesk",
        "KUBECHAT_MODEL": "gpt-4o-mini",
        "KUBECHAT_AZURE_OPENAI_ENDPOINT": f"https://{OPENAI_HOST}",
        "KUBECHAT_AZURE_OPENAI_DEPLOYMENT": DEPLOYMENT,
        "KUBECHAT_MAX_RETRIES": "0",
        "KUBECHAT_REQUEST_TIMEOUT": "10",
        **extra,
    }


def chat(bot: ThreadedServer, message: str, stream: bool = False) -> httpx2.Response:
    return httpx2.post(bot.url + "/chat", json={"message": message, "stream": stream}, timeout=30)


def sse_events(text: str) -> list[tuple[str, dict[str, object]]]:
    events = []
    for frame in text.split("\n\n"):
        lines = dict(line.split(": ", 1) for line in frame.splitlines() if ": " in line)
        if "event" in lines:
            events.append((lines["event"], json.loads(lines["data"])))
    return events


@pytest.mark.parametrize("version", ["v1", "2024-10-21"])
def test_plain_and_streamed_turns_with_a_workload_identity_token_at_either_path_style(
    azure: AzureWorld, start_bot: BotFactory, version: str
) -> None:
    with start_bot(azure_env(azure, KUBECHAT_AZURE_OPENAI_API_VERSION=version)) as bot:
        report = httpx2.get(bot.url + "/readyz", timeout=10)
        assert report.status_code == 200
        assert report.json()["tokens"] == "o200k_base (the encoding of gpt-4o-mini)"
        first = chat(bot, "Hello Azure")
        assert first.status_code == 200, first.text
        assert first.json()["reply"] == "2 messages; last: Hello Azure"
        streamed = chat(bot, "Stream please", stream=True)
        assert streamed.status_code == 200, streamed.text
        events = sse_events(streamed.text)
        assert (
            "".join(str(e[1]["delta"]) for e in events if e[0] == "delta")
            == "2 messages; last: Stream please"
        )
        assert events[-1][0] == "done"
        # the OpenAI-compatible route passes through as well
        completion = openai.OpenAI(base_url=bot.url + "/v1", api_key="unused", max_retries=0).chat.completions
        answer = completion.create(model="ignored", messages=[{"role": "user", "content": "via SDK"}])
        assert answer.choices[0].message.content == "2 messages; last: via SDK"
    calls = azure.openai.calls
    assert azure.openai.statuses() == [200, 200, 200]
    if version == "v1":
        assert {c.path for c in calls} == {"/openai/v1/chat/completions"} and all(not c.query for c in calls)
    else:
        assert {c.path for c in calls} == {f"/openai/deployments/{DEPLOYMENT}/chat/completions"}
        assert all(c.query == {"api-version": "2024-10-21"} for c in calls)
    assert all("api-key" not in c.headers for c in calls)
    # one token, for the Cognitive Services scope, from the federated service-account token
    assert azure.identity.scopes_requested == [SCOPE]
    assert {c.headers["authorization"] for c in calls} == {f"Bearer {azure.identity.issued_for(SCOPE)[0]}"}
    assert set(azure.proxy.tunnels if azure.proxy else []) == {"login.microsoftonline.com", OPENAI_HOST}


def test_an_api_key_goes_as_the_api_key_header_and_no_token_is_fetched(
    azure: AzureWorld, start_bot: BotFactory
) -> None:
    key = "azure-openai-key-5f2c9a0d7e"
    azure.openai.api_keys = {key}
    env = azure_env(azure, KUBECHAT_AZURE_OPENAI_API_VERSION="2024-10-21", KUBECHAT_AZURE_OPENAI_API_KEY=key)
    with start_bot(env) as bot:
        assert chat(bot, "keyed").status_code == 200
        azure.openai.api_keys = {"rotated-elsewhere-000000"}
        refused = chat(bot, "after rotation")
    assert refused.status_code == 502 and "api-key" in refused.json()["error"]["message"]
    assert key not in refused.text
    assert azure.openai.calls[0].headers["api-key"] == key
    assert "authorization" not in azure.openai.calls[0].headers
    assert azure.identity.scopes_requested == []


def test_tokens_expire_and_are_refreshed_under_concurrent_requests_without_a_failure(
    azure: AzureWorld, start_bot: BotFactory
) -> None:
    """Tokens live 4 s; 8 clients keep chatting for 10 s, across two expiries. The data plane refuses
    an expired token, so a request sent with a stale one would fail."""
    azure.identity.lifetime = 4

    with start_bot(azure_env(azure)) as bot:

        def client(n: int) -> list[int]:
            statuses = []
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                statuses.append(chat(bot, f"client {n}").status_code)
                time.sleep(0.1)
            return statuses

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            results = [s for statuses in pool.map(client, range(8)) for s in statuses]
    assert len(results) > 80
    assert set(results) == {200}, f"{results.count(200)} of {len(results)} answered"
    assert set(azure.openai.statuses()) == {200}
    tokens = azure.identity.issued_for(SCOPE)
    # refreshed as they expired (at least twice in 10 s), and one fetch at a time, not one per request
    assert 3 <= len(tokens) <= 6, tokens
    used = {c.headers["authorization"].removeprefix("Bearer ") for c in azure.openai.calls}
    assert used == set(tokens)


def test_an_identity_without_the_role_is_refused_and_readiness_names_role_and_client_id(
    azure: AzureWorld, start_bot: BotFactory
) -> None:
    azure.openai.role_assigned = False
    with start_bot(azure_env(azure)) as bot:
        assert httpx2.get(bot.url + "/readyz", timeout=10).status_code == 200  # nothing known yet
        refused = chat(bot, "Hello")
        assert refused.status_code == 502, refused.text
        error = refused.json()["error"]
        assert error["code"] == "upstream_auth_failed"
        assert ROLE in error["message"] and azure.identity.client_id in error["message"]
        report = httpx2.get(bot.url + "/readyz", timeout=10)
        assert report.status_code == 503
        reason = next(p for p in report.json()["problems"] if ROLE in p)
        assert azure.identity.client_id in reason and "403" in reason
        azure.openai.role_assigned = True  # the role assignment landed
        assert chat(bot, "Hello again").status_code == 200
        assert httpx2.get(bot.url + "/readyz", timeout=10).status_code == 200
    for token in azure.identity.tokens:
        assert token not in refused.text and token not in report.text


def test_a_content_filter_refusal_says_it_was_the_content_filter(
    azure: AzureWorld, start_bot: BotFactory
) -> None:
    with start_bot(azure_env(azure)) as bot:
        refused = chat(bot, f"tell me about the {azure.openai.blocked_word}")
        streamed = chat(bot, f"and streamed: {azure.openai.blocked_word}", stream=True)
        session = refused.json()
        assert chat(bot, "something harmless").status_code == 200
    assert refused.status_code == 400, refused.text
    error = session["error"]
    assert error["code"] == "content_filter" and error["type"] == "invalid_request_error"
    assert "content filter" in error["message"] and "violence" in error["message"]
    assert streamed.status_code == 400 and streamed.json()["error"]["code"] == "content_filter"


def test_azure_s_429_keeps_its_retry_hint(azure: AzureWorld, start_bot: BotFactory) -> None:
    azure.openai.throttle_next(7000)
    with start_bot(azure_env(azure)) as bot:
        limited = chat(bot, "busy?")
    assert limited.status_code == 429, limited.text
    assert limited.headers["retry-after"] == "7"
    assert DEPLOYMENT in limited.json()["error"]["message"]


def test_metrics_name_the_azure_provider(azure: AzureWorld, start_bot: BotFactory) -> None:
    with start_bot(azure_env(azure)) as bot:
        assert chat(bot, "count me").status_code == 200
        text = httpx2.get(bot.url + "/metrics", timeout=10).text
    assert 'gen_ai_provider_name="azure.ai.openai"' in text
    assert 'gen_ai_provider_name="openai"' not in text


def test_no_entra_token_at_all_is_a_clear_error_and_a_readiness_reason(
    azure: AzureWorld, start_bot: BotFactory
) -> None:
    """A federated credential that does not match (Entra ID refuses the assertion): no request reaches
    Azure OpenAI, and the reason names the scope, Entra ID's answer and the client id."""
    azure.identity.accepts = lambda assertion: False
    with start_bot(azure_env(azure)) as bot:
        refused = chat(bot, "Hello")
        report = httpx2.get(bot.url + "/readyz", timeout=10)
    assert refused.status_code == 502, refused.text
    message = refused.json()["error"]["message"]
    assert "no Microsoft Entra ID token for https://cognitiveservices.azure.com/.default" in message
    assert "AADSTS700213" in message
    assert report.status_code == 503
    reason = next(p for p in report.json()["problems"] if "Entra ID" in p)
    assert azure.identity.client_id in reason
    assert azure.openai.calls == []
    assert azure.identity.federated_token not in refused.text + report.text
