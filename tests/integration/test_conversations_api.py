"""The Conversations API over real HTTP with the official openai client: CRUD and items, responses that
append to a conversation, a /chat session continued as a conversation and back, access control and
limits as on /v1/chat/completions, and two `kubechat serve` processes on one Redis continuing each
other's chains."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest

from tests.integration.conftest import API_KEY, REDIS_PASSWORD, BotFactory
from tests.support.bot_process import Replicas
from tests.support.fake_openai import FakeOpenAI
from tests.support.mounted import write_keys
from tests.support.redis_server import RedisServer
from tests.support.servers import ThreadedServer


@pytest.fixture
def client(bot: ThreadedServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=bot.url + "/v1", api_key="unused", max_retries=0) as c:
        yield c


def texts(items: Any) -> list[tuple[str, str]]:
    return [(i.role, i.content[0].text) for i in items]


def test_conversation_crud_and_items(client: openai.OpenAI) -> None:
    conversation = client.conversations.create(
        items=[{"role": "user", "content": "first"}, {"role": "assistant", "content": "second"}],
        metadata={"topic": "demo"},
    )
    assert conversation.id.startswith("conv_") and conversation.metadata == {"topic": "demo"}
    got = client.conversations.retrieve(conversation.id)
    assert got.created_at == conversation.created_at and got.metadata == {"topic": "demo"}
    updated = client.conversations.update(conversation.id, metadata={"topic": "changed"})
    assert updated.metadata == {"topic": "changed"} and updated.created_at == conversation.created_at
    added = client.conversations.items.create(
        conversation.id, items=[{"role": "user", "content": [{"type": "input_text", "text": "third"}]}]
    )
    assert texts(added.data) == [("user", "third")]
    listed = client.conversations.items.list(conversation.id, order="asc")
    assert texts(listed.data) == [("user", "first"), ("assistant", "second"), ("user", "third")]
    assert texts(client.conversations.items.list(conversation.id, limit=1).data) == [("user", "third")]
    second = listed.data[1]
    assert second.id is not None
    item = client.conversations.items.retrieve(second.id, conversation_id=conversation.id)
    assert texts([item]) == [("assistant", "second")]
    client.conversations.items.delete(second.id, conversation_id=conversation.id)
    assert texts(client.conversations.items.list(conversation.id, order="asc").data) == [
        ("user", "first"),
        ("user", "third"),
    ]
    with pytest.raises(openai.NotFoundError):
        client.conversations.items.retrieve(second.id, conversation_id=conversation.id)
    deleted = client.conversations.delete(conversation.id)
    assert deleted.deleted and deleted.id == conversation.id
    with pytest.raises(openai.NotFoundError):
        client.conversations.retrieve(conversation.id)


def test_bad_conversation_bodies_are_400s(bot: ThreadedServer) -> None:
    too_many = [{"role": "user", "content": str(i)} for i in range(21)]
    for body, param in [
        ({"items": too_many}, "items"),
        ({"metadata": {str(i): "v" for i in range(17)}}, "metadata"),
        (
            {"items": [{"role": "user", "content": [{"type": "input_image", "image_url": "u"}]}]},
            "items[0].content[0].type",
        ),
    ]:
        raw = httpx2.post(bot.url + "/v1/conversations", json=body, timeout=10)
        assert raw.status_code == 400, raw.text
        assert raw.json()["error"]["param"] == param


def test_a_response_in_a_conversation_appends_to_it(client: openai.OpenAI, upstream: FakeOpenAI) -> None:
    conversation = client.conversations.create(items=[{"role": "user", "content": "I live in Oslo."}])
    first = client.responses.create(model="x", input="Where do I live?", conversation=conversation.id)
    assert first.conversation is not None and first.conversation.id == conversation.id
    assert [m["content"] for m in upstream.last.body["messages"]][1:] == [
        "I live in Oslo.",
        "Where do I live?",
    ]
    client.responses.create(model="x", input="And again?", conversation={"id": conversation.id})
    assert len(upstream.last.body["messages"]) == 5
    items = client.conversations.items.list(conversation.id, order="asc").data
    assert [i.role for i in items] == ["user", "user", "assistant", "user", "assistant"]
    assert items[2].id == first.output[0].id
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="x", input="hi", conversation="conv_missing")
    with pytest.raises(openai.BadRequestError):
        client.responses.create(
            model="x", input="hi", conversation=conversation.id, previous_response_id=first.id
        )


def test_a_chat_session_is_a_conversation_and_back(bot: ThreadedServer, client: openai.OpenAI) -> None:
    sid = httpx2.post(bot.url + "/chat", json={"message": "hello from /chat"}, timeout=10).json()[
        "session_id"
    ]
    assert client.conversations.retrieve(sid).id == sid
    response = client.responses.create(model="x", input="hello from responses", conversation=sid)
    assert response.output_text == "4 messages; last: hello from responses"
    back = httpx2.post(bot.url + "/chat", json={"message": "back in /chat", "session_id": sid}, timeout=10)
    assert back.json()["reply"] == "6 messages; last: back in /chat"
    history = httpx2.get(f"{bot.url}/sessions/{sid}", timeout=10).json()["messages"]
    assert [m["content"] for m in history[::2]] == [
        "hello from /chat",
        "hello from responses",
        "back in /chat",
    ]
    # and a conversation made by the Conversations API is a /chat session
    made = client.conversations.create(items=[{"role": "user", "content": "seeded"}])
    reply = httpx2.post(bot.url + "/chat", json={"message": "next", "session_id": made.id}, timeout=10)
    assert reply.json()["reply"] == "3 messages; last: next"
    # and a response chain's session is one too: the response names it as its conversation
    chained = client.responses.create(model="x", input="chain start")
    assert chained.conversation is not None
    items = client.conversations.items.list(chained.conversation.id)
    assert texts(items.data) == [("assistant", chained.output_text), ("user", "chain start")]
    after = httpx2.post(
        bot.url + "/chat", json={"message": "via /chat", "session_id": chained.conversation.id}, timeout=10
    )
    assert after.json()["reply"] == "4 messages; last: via /chat"
    then = client.responses.create(model="x", input="chain again", previous_response_id=chained.id)
    assert then.conversation is not None and then.conversation.id != chained.conversation.id  # a fork
    assert len(client.conversations.items.list(then.conversation.id).data) == 4


KEYS = {"team-a": "kc-team-a-5b0e1d7c9f2a4e68", "team-b": "kc-team-b-0c3f6a9e2d5b8174"}


def test_access_control_and_limits_apply_as_on_chat_completions(
    start_bot: BotFactory, bot_env: dict[str, str], upstream: FakeOpenAI, tmp_path: Path
) -> None:
    write_keys(tmp_path / "keys", KEYS)
    env = bot_env | {
        "KUBECHAT_ACCESS": '{"apiKeys": {}}',
        "KUBECHAT_API_KEYS_DIR": str(tmp_path / "keys"),
        "KUBECHAT_LIMITS": json.dumps({"perIdentity": {"requestsPerMinute": 2}}),
    }
    with start_bot(env) as bot:
        a = openai.OpenAI(base_url=bot.url + "/v1", api_key=KEYS["team-a"], max_retries=0)
        b = openai.OpenAI(base_url=bot.url + "/v1", api_key=KEYS["team-b"], max_retries=0)
        nobody = openai.OpenAI(base_url=bot.url + "/v1", api_key="kc-wrong-000000000000000", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            nobody.responses.create(model="x", input="hi")
        with pytest.raises(openai.AuthenticationError):
            nobody.conversations.create()
        mine = a.responses.create(model="x", input="a's secret")
        conversation = a.conversations.create(items=[{"role": "user", "content": "a's item"}])
        # another identity finds neither, and cannot continue them
        with pytest.raises(openai.NotFoundError):
            b.responses.retrieve(mine.id)
        with pytest.raises(openai.NotFoundError):
            b.conversations.retrieve(conversation.id)
        with pytest.raises(openai.BadRequestError):
            b.responses.create(model="x", input="steal", previous_response_id=mine.id)
        with pytest.raises(openai.NotFoundError):
            b.responses.create(model="x", input="steal", conversation=conversation.id)
        # a's second request this minute is admitted, the third refused before the upstream
        a.responses.create(model="x", input="again", previous_response_id=mine.id)
        before = len(upstream.requests)
        with pytest.raises(openai.RateLimitError):
            a.responses.create(model="x", input="third", previous_response_id=mine.id)
        with pytest.raises(openai.RateLimitError):
            list(a.responses.create(model="x", input="third", stream=True))
        assert len(upstream.requests) == before
        usage = httpx2.get(
            bot.url + "/v1/usage", headers={"Authorization": f"Bearer {KEYS['team-a']}"}
        ).json()
        assert json.dumps(usage).count("team-a") >= 1


def test_two_serve_processes_on_one_redis_continue_each_others_chains(
    bot_env: dict[str, str], redis_server: RedisServer, upstream: FakeOpenAI, tmp_path: Path
) -> None:
    replicas = Replicas(tmp_path)
    env = {
        **os.environ,
        **bot_env,
        "KUBECHAT_SESSION_STORE": "redis",
        "KUBECHAT_REDIS_URL": redis_server.url,
        "KUBECHAT_BOT_NAME": "helpdesk",
        "KUBECHAT_REQUEST_TIMEOUT": "30",  # the machine is shared: no deadline is under test here
    }
    try:
        bots = replicas.start(env, 2)
        clients = [openai.OpenAI(base_url=b.url + "/v1", api_key="unused", max_retries=0) for b in bots]
        previous = clients[0].responses.create(model="x", input="turn 0")
        for i in range(1, 5):
            client = clients[i % 2]
            if i % 2:
                with client.responses.stream(
                    model="x", input=f"turn {i}", previous_response_id=previous.id
                ) as s:
                    previous = s.get_final_response()
            else:
                previous = client.responses.create(
                    model="x", input=f"turn {i}", previous_response_id=previous.id
                )
            assert previous.output_text == f"{2 * i + 2} messages; last: turn {i}"
        assert clients[1].responses.retrieve(previous.id).output_text == previous.output_text
        conversation = clients[0].conversations.create(items=[{"role": "user", "content": "kept in Redis"}])
        clients[1].responses.create(model="x", input="seen?", conversation=conversation.id)
        items = clients[0].conversations.items.list(conversation.id, order="asc").data
        assert texts(items)[:2] == [("user", "kept in Redis"), ("user", "seen?")]
        first_input = clients[1].responses.input_items.list(previous.id).data
        assert texts(first_input) == [("user", "turn 4")]
    finally:
        replicas.stop((REDIS_PASSWORD, API_KEY))
