"""Access by OIDC bearer token over real HTTPS discovery: a local issuer on loopback (its own CA,
trusted through SSL_CERT_FILE as a pod would be told), rotating keys, expired and wrong-audience
tokens refused, groups allowed, the official openai client as the caller."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import httpx2
import jwt
import openai
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.cluster.polling import eventually
from tests.integration.conftest import BotFactory
from tests.support.fake_azure.tls import TestCA
from tests.support.oidc_issuer import Issuer
from tests.support.servers import ThreadedServer, serving

AUDIENCE = "api://helpdesk"


@pytest.fixture
def issuer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Issuer]:
    ca = TestCA(tmp_path)
    monkeypatch.setenv("SSL_CERT_FILE", str(ca.ca_file))
    local = Issuer()
    with serving(local.app, **ca.server_cert("127.0.0.1")) as server:
        local.url = server.url.replace("http://", "https://")
        yield local


@pytest.fixture
def start_oidc_bot(start_bot: BotFactory, bot_env: dict[str, str], issuer: Issuer) -> BotFactory:
    def start(**oidc: object) -> AbstractContextManager[ThreadedServer]:
        access = {"oidc": {"issuer": issuer.url, "audience": AUDIENCE, **oidc}}
        return start_bot(bot_env | {"KUBECHAT_ACCESS": json.dumps(access)})

    return start


@pytest.fixture
def bot(start_oidc_bot: BotFactory) -> Iterator[ThreadedServer]:
    with start_oidc_bot() as server:
        yield server


def ask(bot: ThreadedServer, token: str) -> str:
    client = openai.OpenAI(base_url=bot.url + "/v1", api_key=token, max_retries=0)
    reply = client.chat.completions.create(model="any", messages=[{"role": "user", "content": "hi"}])
    return reply.choices[0].message.content or ""


def refused(bot: ThreadedServer, token: str) -> int:
    response = httpx2.post(
        bot.url + "/chat", json={"message": "hi"}, headers={"Authorization": f"Bearer {token}"}, timeout=10
    )
    assert response.status_code in (401, 403), response.text
    if response.status_code == 401:
        assert response.headers["www-authenticate"].startswith("Bearer")
        assert response.json()["error"]["code"] == "invalid_api_key"
    return response.status_code


def test_a_valid_token_is_an_identity(bot: ThreadedServer, issuer: Issuer) -> None:
    alice = issuer.token(AUDIENCE, sub="alice")
    assert ask(bot, alice) == "2 messages; last: hi"
    sid = httpx2.post(
        bot.url + "/chat", json={"message": "mine"}, headers={"Authorization": f"Bearer {alice}"}
    ).json()["session_id"]
    bob = {"Authorization": f"Bearer {issuer.token(AUDIENCE, sub='bob')}"}
    assert httpx2.get(f"{bot.url}/sessions/{sid}", headers=bob).status_code == 404
    mine = httpx2.get(f"{bot.url}/sessions/{sid}", headers={"Authorization": f"Bearer {alice}"})
    assert mine.status_code == 200


def test_expired_wrong_audience_wrong_issuer_and_forged_tokens_are_refused(
    bot: ThreadedServer, issuer: Issuer
) -> None:
    assert ask(bot, issuer.token(AUDIENCE, sub="alice"))  # the keys are known from here on
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = int(time.time())
    claims = {"iss": issuer.url, "aud": AUDIENCE, "sub": "x", "exp": now + 60}
    forged_none = jwt.encode(claims, None, "none")  # type: ignore[arg-type]  # an unsigned token
    for token in (
        issuer.token(AUDIENCE, sub="alice", lifetime=-120),  # expired (beyond the 30 s leeway)
        issuer.token("api://another-bot", sub="alice"),
        issuer.token(AUDIENCE, sub="alice", iss="https://login.example/other"),
        issuer.token(AUDIENCE, sub="alice", key=stranger),  # a known kid, the wrong key
        forged_none,
        issuer.token(AUDIENCE, sub="alice", exp=None),  # no expiry at all
    ):
        assert refused(bot, token) == 401


def test_rotated_keys_are_fetched_once_for_an_unknown_kid(bot: ThreadedServer, issuer: Issuer) -> None:
    assert ask(bot, issuer.token(AUDIENCE, sub="alice"))
    fetches = issuer.jwks_fetches
    issuer.rotate()
    fresh = issuer.token(AUDIENCE, sub="alice")
    # a new kid makes the bot fetch the keys again (at most every 2 s, so it may take that long)
    eventually(lambda: ask(bot, fresh), timeout=10, interval=0.5, what="the rotated key accepted")
    assert issuer.jwks_fetches <= fetches + 2
    # made-up kids cannot make the bot hammer the issuer
    for i in range(20):
        claims = {"iss": issuer.url, "aud": AUDIENCE, "sub": "x", "exp": int(time.time()) + 60}
        forged = jwt.encode(claims, "k" * 32, "HS256", headers={"kid": f"made-up-{i}"})
        assert refused(bot, forged) == 401
    assert issuer.jwks_fetches <= fetches + 3


def test_groups_and_the_identity_claim(start_oidc_bot: BotFactory, issuer: Issuer) -> None:
    with start_oidc_bot(identityClaim="oid", allowedGroups=["chat-users"], allowedRoles=["Bot.Admin"]) as bot:
        assert ask(bot, issuer.token(AUDIENCE, sub="s1", oid="o-1", groups=["chat-users", "other"]))
        assert ask(bot, issuer.token(AUDIENCE, sub="s2", oid="o-2", roles=["Bot.Admin"]))
        outsider = issuer.token(AUDIENCE, sub="s3", oid="o-3", groups=["other"])
        assert refused(bot, outsider) == 403
        no_oid = issuer.token(AUDIENCE, sub="s4", groups=["chat-users"])
        assert refused(bot, no_oid) == 403
        member = issuer.token(AUDIENCE, sub="s1", oid="o-1", groups=["chat-users"])
        usage = httpx2.get(bot.url + "/v1/usage", headers={"Authorization": f"Bearer {member}"}).json()
        assert [i["identity"] for i in usage["identities"]] == ["o-1"]
