"""Access by API key over real HTTP, with the official openai client: no key, a wrong key, a rotated
key and a removed key; keys as the mounted Secret's files, reloaded without a restart; sessions
belong to the identity that created them."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import httpx2
import openai
import pytest

from tests.cluster.polling import eventually
from tests.integration.conftest import API_KEY, BotFactory
from tests.support.fake_openai import FakeOpenAI
from tests.support.mounted import write_keys
from tests.support.servers import ThreadedServer

KEY_A = "kc-team-a-5b0e1d7c9f2a4e68"
KEY_B = "kc-team-b-0c3f6a9e2d5b8174"


@pytest.fixture
def keys_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "api-keys"
    write_keys(folder, {"team-a": KEY_A, "team-b": KEY_B})
    return folder


@pytest.fixture
def locked_env(bot_env: dict[str, str], keys_dir: Path) -> dict[str, str]:
    return bot_env | {
        "KUBECHAT_ACCESS": '{"apiKeys": {}}',
        "KUBECHAT_API_KEYS_DIR": str(keys_dir),
        "KUBECHAT_RELOAD_INTERVAL": "0.1",
    }


@pytest.fixture
def locked(start_bot: BotFactory, locked_env: dict[str, str]) -> Iterator[ThreadedServer]:
    with start_bot(locked_env) as bot:
        yield bot


def client(bot: ThreadedServer, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=bot.url + "/v1", api_key=key, max_retries=0)


def ask(bot: ThreadedServer, key: str) -> str:
    completion = client(bot, key).chat.completions.create(
        model="any", messages=[{"role": "user", "content": "hello"}]
    )
    return completion.choices[0].message.content or ""


def chat(bot: ThreadedServer, key: str | None, **body: object) -> httpx2.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx2.post(bot.url + "/chat", json={"message": "hi", **body}, headers=headers, timeout=10)


def test_no_key_and_a_wrong_key_get_401_in_openais_shape(
    locked: ThreadedServer, upstream: FakeOpenAI
) -> None:
    for headers in ({}, {"Authorization": "Bearer"}, {"Authorization": "Basic dGVhbS1hOng="}):
        for method, path in (("POST", "/chat"), ("GET", "/sessions/abc"), ("GET", "/v1/models")):
            response = httpx2.request(method, locked.url + path, json={"message": "hi"}, headers=headers)
            assert response.status_code == 401, (path, response.text)
            assert response.headers["www-authenticate"] == 'Bearer realm="kubechat"'
            error = response.json()["error"]
            assert error["type"] == "invalid_request_error" and error["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError) as refused:
        ask(locked, KEY_A[:-1] + "x")
    assert refused.value.status_code == 401
    assert KEY_A not in refused.value.response.text and KEY_A[:-1] not in refused.value.response.text
    assert upstream.requests == []  # nothing reached the model
    # the probes stay open to the kubelet, and the page says a key is needed
    assert httpx2.get(locked.url + "/healthz").status_code == 200
    assert httpx2.get(locked.url + "/readyz").status_code == 200
    assert httpx2.get(locked.url + "/info").json()["auth_required"] is True


def test_each_key_is_an_identity_that_works_with_the_openai_client(
    locked: ThreadedServer, upstream: FakeOpenAI
) -> None:
    assert ask(locked, KEY_A) == "2 messages; last: hello"
    assert ask(locked, KEY_B).endswith("last: hello")
    # the bot calls the model with its own key, never the client's
    assert {r.headers["authorization"] for r in upstream.requests} == {f"Bearer {API_KEY}"}
    reply = chat(locked, KEY_A)
    assert reply.status_code == 200, reply.text


def test_rotated_and_removed_keys_take_effect_without_a_restart(
    locked: ThreadedServer, keys_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="kubechat")
    assert ask(locked, KEY_A)
    rotated = "kc-team-a-rotated-9d8c7b6a5f4e"
    write_keys(keys_dir, {"team-a": rotated})  # team-a rotated, team-b removed

    def old_keys_refused() -> None:
        # Not pytest.raises: its failure is no Exception, so eventually() would not wait for the reload.
        for old in (KEY_A, KEY_B):
            try:
                ask(locked, old)
            except openai.AuthenticationError:
                continue
            raise AssertionError("a key no longer in the Secret is still accepted")

    eventually(old_keys_refused, timeout=10, what="the old and the removed key refused")
    assert ask(locked, rotated)
    logs = caplog.text
    assert "team-a" in logs  # keys are named and fingerprinted in the log, never shown
    for secret in (KEY_A, KEY_B, rotated, API_KEY):
        assert secret not in logs


def test_a_session_belongs_to_the_identity_that_created_it(locked: ThreadedServer) -> None:
    created = chat(locked, KEY_A, message="secret plans")
    sid = created.json()["session_id"]
    other = {"Authorization": f"Bearer {KEY_B}"}
    assert httpx2.get(f"{locked.url}/sessions/{sid}", headers=other).status_code == 404
    assert httpx2.delete(f"{locked.url}/sessions/{sid}", headers=other).status_code == 404
    continued = chat(locked, KEY_B, session_id=sid)
    assert continued.status_code == 404 and continued.json()["error"]["code"] == "session_not_found"
    assert sid in continued.json()["error"]["message"]  # the id the client knows, nothing else
    owner = {"Authorization": f"Bearer {KEY_A}"}
    history = httpx2.get(f"{locked.url}/sessions/{sid}", headers=owner).json()["messages"]
    assert [m["content"] for m in history] == ["secret plans", "2 messages; last: secret plans"]
    assert chat(locked, KEY_A, message="more", session_id=sid).status_code == 200


def test_bad_key_files_are_a_settings_problem_without_the_value(
    start_bot: BotFactory, locked_env: dict[str, str], keys_dir: Path
) -> None:
    write_keys(keys_dir, {"team-a": "short"})
    with start_bot(locked_env) as bot:
        ready = httpx2.get(bot.url + "/readyz").json()
        assert ready["ready"] is False
        assert any("api_keys" in p and "at least 16" in p for p in ready["problems"]), ready
        assert "short" not in str(ready["problems"])
