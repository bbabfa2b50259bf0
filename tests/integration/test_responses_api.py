"""The Responses API on a bot, over real HTTP with the official openai client, the fake upstream
recording what the bot sent it: the bot's prompt and model, chains that keep context, trimming, refusals."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx2
import openai
import pytest

from tests.integration.conftest import BotFactory
from tests.support.fake_openai import FakeOpenAI, Fault, prompt_tokens
from tests.support.servers import ThreadedServer


@pytest.fixture
def client(bot: ThreadedServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=bot.url + "/v1", api_key="unused", max_retries=0) as c:
        yield c


def sent(upstream: FakeOpenAI) -> list[tuple[str, str]]:
    return [(m["role"], m["content"]) for m in upstream.last.body["messages"]]


def test_a_string_input_is_answered_with_the_bots_prompt_and_model(
    client: openai.OpenAI, upstream: FakeOpenAI
) -> None:
    response = client.responses.create(model="gpt-5-whatever", input="Hello there", temperature=0.3)
    assert response.object == "response" and response.status == "completed"
    assert response.output_text == "2 messages; last: Hello there"
    assert response.model == "gpt-4o-mini"
    assert upstream.last.body["model"] == "gpt-4o-mini"
    assert upstream.last.body["temperature"] == 0.3
    assert sent(upstream) == [("system", "You are a test bot."), ("user", "Hello there")]
    usage = response.usage
    assert usage is not None
    assert usage.input_tokens == prompt_tokens("gpt-4o-mini", upstream.last.body["messages"])
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens
    assert response.output[0].type == "message" and response.output[0].id.startswith("msg_")
    assert response.id.startswith("resp_") and response.to_dict()["store"] is True


def test_items_instructions_and_max_output_tokens_are_translated(
    client: openai.OpenAI, upstream: FakeOpenAI
) -> None:
    response = client.responses.create(
        model="x",
        instructions="Answer in French.",
        input=[
            {"role": "developer", "content": "Be brief."},
            {
                "role": "user",
                "content": [{"type": "input_text", "text": "Bon"}, {"type": "input_text", "text": "jour"}],
            },
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Salut"}]},  # type: ignore[misc,list-item]
            {"role": "user", "content": "Ça va ?"},
        ],
        max_output_tokens=50,
        metadata={"ticket": "T-1"},
    )
    assert sent(upstream) == [
        ("system", "You are a test bot."),
        ("developer", "Answer in French."),
        ("developer", "Be brief."),
        ("user", "Bonjour"),
        ("assistant", "Salut"),
        ("user", "Ça va ?"),
    ]
    assert upstream.last.body["max_tokens"] == 50
    assert response.metadata == {"ticket": "T-1"} and response.instructions == "Answer in French."
    assert response.max_output_tokens == 50


def test_chained_turns_keep_context_and_instructions_do_not_carry_over(
    client: openai.OpenAI, upstream: FakeOpenAI
) -> None:
    first = client.responses.create(model="x", input="My name is Ada.", instructions="Be formal.")
    second = client.responses.create(model="x", input="What is my name?", previous_response_id=first.id)
    assert sent(upstream) == [
        ("system", "You are a test bot."),
        ("user", "My name is Ada."),
        ("assistant", first.output_text),
        ("user", "What is my name?"),
    ]
    third = client.responses.create(model="x", input="And again?", previous_response_id=second.id)
    assert third.output_text == "6 messages; last: And again?"
    assert third.previous_response_id == second.id
    # a fork from the first response: the second turn is not in its context
    fork = client.responses.create(model="x", input="Forked", previous_response_id=first.id)
    assert [c for _, c in sent(upstream)] == [
        "You are a test bot.",
        "My name is Ada.",
        first.output_text,
        "Forked",
    ]
    after_fork = client.responses.create(model="x", input="more", previous_response_id=fork.id)
    assert [c for _, c in sent(upstream)][-3:] == ["Forked", fork.output_text, "more"]
    # and the original chain is untouched by the fork
    client.responses.create(model="x", input="main line", previous_response_id=third.id)
    assert len(upstream.last.body["messages"]) == 8
    assert after_fork.status == "completed"


def test_retrieve_delete_and_input_items_paginated(client: openai.OpenAI, upstream: FakeOpenAI) -> None:
    created = client.responses.create(
        model="x", input=[{"role": "user", "content": f"item {i}"} for i in range(5)]
    )
    got = client.responses.retrieve(created.id)
    assert got.id == created.id and got.output_text == created.output_text and got.usage == created.usage
    page = client.responses.input_items.list(created.id, limit=2, order="asc")
    assert [i.content[0].text for i in page.data] == ["item 0", "item 1"]
    listed = page.model_dump()
    assert page.has_more and listed["first_id"] == page.data[0].id and listed["last_id"] == page.data[1].id
    rest = client.responses.input_items.list(created.id, after=listed["last_id"], limit=10, order="asc")
    assert [i.content[0].text for i in rest.data] == ["item 2", "item 3", "item 4"]
    assert not rest.has_more
    newest_first = client.responses.input_items.list(created.id)
    assert newest_first.data[0].content[0].text == "item 4"
    every = [i.id for i in client.responses.input_items.list(created.id, limit=1)]  # the SDK pages on
    assert len(every) == 5 and len(set(every)) == 5
    client.responses.delete(created.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(created.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.delete(created.id)


def test_store_false_keeps_nothing(client: openai.OpenAI) -> None:
    response = client.responses.create(model="x", input="secret", store=False)
    assert response.to_dict()["store"] is False and response.output_text
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(response.id)
    with pytest.raises(openai.BadRequestError) as error:
        client.responses.create(model="x", input="next", previous_response_id=response.id)
    assert error.value.param == "previous_response_id"


def test_a_long_chain_is_trimmed_to_the_budget_and_says_so(
    start_bot: BotFactory, bot_env: dict[str, str], upstream: FakeOpenAI
) -> None:
    bot_env |= {"KUBECHAT_MAX_CONTEXT_TOKENS": "300", "KUBECHAT_MAX_REPLY_TOKENS": "100"}
    with start_bot(bot_env) as bot:
        previous: str | None = None
        trimmed = False
        for i in range(12):
            raw = httpx2.post(
                bot.url + "/v1/responses",
                json={"input": f"turn {i}: " + "words " * 10, "previous_response_id": previous},
                timeout=10,
            )
            assert raw.status_code == 200, raw.text
            body = raw.json()
            previous = body["id"]
            messages = upstream.last.body["messages"]
            assert prompt_tokens("gpt-4o-mini", messages) <= 200
            assert messages[0]["role"] == "system" and messages[1]["role"] == "user"
            assert messages[-1]["content"].startswith(f"turn {i}:")
            assert raw.headers["x-kubechat-truncated"] == str(body["usage"]["truncated"]).lower()
            assert body["usage"]["truncated"] == (body["usage"]["dropped_messages"] > 0)
            assert int(raw.headers["x-kubechat-prompt-tokens"]) == body["usage"]["counted_input_tokens"]
            trimmed |= body["usage"]["truncated"]
        assert trimmed
        refused = httpx2.post(
            bot.url + "/v1/responses",
            json={"input": "one more", "previous_response_id": previous, "truncation": "disabled"},
            timeout=10,
        )
        assert refused.status_code == 400 and refused.json()["error"]["code"] == "context_length_exceeded"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"tools": [{"type": "function", "name": "f", "parameters": {}}]}, "tools"),
        ({"reasoning": {"effort": "high"}}, "reasoning"),
        ({"background": True}, "background"),
        ({"include": ["reasoning.encrypted_content"]}, "include"),
        (
            {"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]},
            "input[0].content[0].type",
        ),
        (
            {"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]},
            "input[0].content[0].type",
        ),
        ({"input": [{"type": "function_call_output", "call_id": "c", "output": "x"}]}, "input[0].type"),
        ({"input": [{"role": "tool", "content": "x"}]}, "input[0].role"),
        ({"temperature": 3}, "temperature"),
        ({"surprise": 1}, "surprise"),
        ({"previous_response_id": "resp_nope"}, "previous_response_id"),
    ],
)
def test_what_a_bot_cannot_honour_is_a_400_naming_the_param(
    bot: ThreadedServer, upstream: FakeOpenAI, body: dict[str, Any], param: str
) -> None:
    before = len(upstream.requests)
    raw = httpx2.post(bot.url + "/v1/responses", json={"input": "hi", **body}, timeout=10)
    assert raw.status_code == 400, raw.text
    error = raw.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error" and error["message"]
    assert len(upstream.requests) == before  # refused before anything went upstream


def test_an_upstream_failure_is_the_upstreams_status_and_stores_nothing(
    client: openai.OpenAI, upstream: FakeOpenAI
) -> None:
    first = client.responses.create(model="x", input="one")
    upstream.fail_next(Fault(status=429))
    with pytest.raises(openai.RateLimitError):
        client.responses.create(model="x", input="two", previous_response_id=first.id)
    client.responses.create(model="x", input="three", previous_response_id=first.id)
    assert [c for _, c in sent(upstream)][1:] == ["one", first.output_text, "three"]
