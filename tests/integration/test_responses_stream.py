"""Streamed responses over real HTTP with the official openai client: OpenAI's event sequence, every
event numbered, and a broken upstream stream stores nothing and extends nothing."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx2
import openai
import pytest

from tests.cluster.polling import eventually
from tests.support.fake_openai import FakeOpenAI, Fault
from tests.support.servers import ThreadedServer

SEQUENCE = [
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    "response.content_part.added",
]
CLOSING = [
    "response.output_text.done",
    "response.content_part.done",
    "response.output_item.done",
    "response.completed",
]


@pytest.fixture
def client(bot: ThreadedServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=bot.url + "/v1", api_key="unused", max_retries=0) as c:
        yield c


def test_create_stream_sends_openais_event_sequence(client: openai.OpenAI, upstream: FakeOpenAI) -> None:
    events = list(client.responses.create(model="x", input="Stream me please", stream=True))
    kinds = [e.type for e in events]
    deltas = kinds[len(SEQUENCE) : -len(CLOSING)]
    assert kinds[: len(SEQUENCE)] == SEQUENCE and kinds[-len(CLOSING) :] == CLOSING
    assert len(deltas) > 1 and set(deltas) == {"response.output_text.delta"}
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == "2 messages; last: Stream me please"
    done = events[-1]
    assert done.type == "response.completed"
    assert done.response.output_text == text and done.response.status == "completed"
    assert done.response.usage is not None and done.response.usage.output_tokens > 0
    created = events[0]
    assert created.type == "response.created" and created.response.status == "in_progress"
    item_ids = {getattr(e, "item_id", None) for e in events} - {None}
    assert item_ids == {done.response.output[0].id}
    assert upstream.last.body["stream"] is True
    assert client.responses.retrieve(done.response.id).output_text == text


def test_responses_stream_helper_and_a_streamed_chain(client: openai.OpenAI, upstream: FakeOpenAI) -> None:
    with client.responses.stream(model="x", input="My name is Ada.") as stream:
        pieces = [e.delta for e in stream if e.type == "response.output_text.delta"]
        first = stream.get_final_response()
    assert "".join(pieces) == first.output_text == "2 messages; last: My name is Ada."
    with client.responses.stream(model="x", input="Who am I?", previous_response_id=first.id) as stream:
        second = stream.get_final_response()
    assert second.output_text == "4 messages; last: Who am I?"
    assert [m["content"] for m in upstream.last.body["messages"]][1:3] == [
        "My name is Ada.",
        first.output_text,
    ]


def test_a_broken_upstream_stream_fails_the_response_and_stores_nothing(
    client: openai.OpenAI, upstream: FakeOpenAI
) -> None:
    first = client.responses.create(model="x", input="one")
    upstream.fail_next(Fault(break_stream_after=2))
    events = list(
        client.responses.create(model="x", input="lost", previous_response_id=first.id, stream=True)
    )
    kinds = [e.type for e in events]
    assert kinds[: len(SEQUENCE)] == SEQUENCE
    assert kinds[-2:] == ["error", "response.failed"] and "response.completed" not in kinds
    assert [e.sequence_number for e in events] == list(range(len(events)))
    failed = events[-1]
    assert failed.type == "response.failed" and failed.response.status == "failed"
    assert failed.response.error is not None and failed.response.error.message
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(failed.response.id)
    with pytest.raises(openai.BadRequestError):
        client.responses.create(model="x", input="x", previous_response_id=failed.response.id)
    # the chain did not grow: the next turn sees "one" and its reply, not "lost"
    client.responses.create(model="x", input="two", previous_response_id=first.id)
    assert [m["content"] for m in upstream.last.body["messages"]][1:] == ["one", first.output_text, "two"]


def test_the_stream_helper_raises_when_the_response_failed(
    client: openai.OpenAI, upstream: FakeOpenAI
) -> None:
    upstream.fail_next(Fault(break_stream_after=1))
    with client.responses.stream(model="x", input="doomed") as stream:
        kinds = [e.type for e in stream]
        assert kinds[-1] == "response.failed"
        with pytest.raises(RuntimeError):
            stream.get_final_response()


def test_an_upstream_refusal_before_the_stream_is_an_http_error(
    client: openai.OpenAI, upstream: FakeOpenAI
) -> None:
    upstream.fail_next(Fault(status=429))
    with pytest.raises(openai.RateLimitError):
        list(client.responses.create(model="x", input="hi", stream=True))


def test_a_client_that_leaves_mid_stream_leaves_nothing_stored(
    bot: ThreadedServer, client: openai.OpenAI, upstream: FakeOpenAI
) -> None:
    first = client.responses.create(model="x", input="one")
    upstream.fail_next(Fault(chunk_delay=0.3))
    body = {"input": "interrupted", "previous_response_id": first.id, "stream": True}
    with httpx2.stream("POST", bot.url + "/v1/responses", json=body, timeout=10) as raw:
        lines = raw.iter_lines()
        created = next(json.loads(line[6:]) for line in lines if line.startswith("data: "))
        assert created["type"] == "response.created"
        next(line for line in lines if "response.output_text.delta" in line)  # then leave

    def cut() -> None:
        assert upstream.streams_cut == 1

    eventually(cut, what="the bot closing the upstream stream")
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(created["response"]["id"])
    client.responses.create(model="x", input="two", previous_response_id=first.id)
    assert [m["content"] for m in upstream.last.body["messages"]][1:] == ["one", first.output_text, "two"]
