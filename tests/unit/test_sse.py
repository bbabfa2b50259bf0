from __future__ import annotations

import json

import pytest

from chatbot_service.errors import UpstreamError
from chatbot_service.sse import CompletionStream, delta_text


def chunk(content: str | None = None, finish: str | None = None, index: int = 0) -> bytes:
    delta = {} if content is None else {"content": content}
    return json.dumps({"choices": [{"index": index, "delta": delta, "finish_reason": finish}]}).encode()


def whole(*datas: bytes, sep: bytes = b"\n") -> bytes:
    return b"".join(b"data: " + d + sep + sep for d in datas)


def test_events_come_whole_whatever_the_pieces_and_line_ends() -> None:
    body = whole(chunk("Hel"), chunk("lo"), chunk(finish="stop"), b"[DONE]", sep=b"\r\n")
    for size in (1, 3, 7, len(body)):
        stream = CompletionStream()
        events = []
        for i in range(0, len(body), size):
            events += stream.feed(body[i : i + size])
        events += stream.finish()
        assert "".join(delta_text(e.chunk) for e in events if e.chunk) == "Hello"
        assert events[-1].chunk is None and events[-1].frame == b"data: [DONE]\n\n"
        assert all(e.frame.endswith(b"\n\n") and b"\r" not in e.frame for e in events)


def test_comments_other_fields_and_multiline_data() -> None:
    stream = CompletionStream()
    events = stream.feed(b': ping\n\nevent: x\nid: 3\ndata: {"choices":\ndata: []}\n\n')
    assert len(events) == 1 and events[0].chunk == {"choices": []}
    assert events[0].frame == b'data: {"choices":\ndata: []}\n\n'


def test_done_without_its_blank_line_at_the_very_end_is_accepted() -> None:
    stream = CompletionStream()
    assert len(stream.feed(whole(chunk("a", "stop")) + b"data: [DONE]")) == 1
    assert [e.chunk for e in stream.finish()] == [None]


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (whole(chunk("a"), chunk(finish="stop")), "upstream_incomplete"),  # no [DONE]
        (whole(chunk("a"), b"[DONE]"), "upstream_incomplete"),  # no finish reason
        (whole(chunk("a", "stop", 0), chunk("b", None, 1), b"[DONE]"), "upstream_incomplete"),  # one of two
        (whole(chunk("a")) + b'data: {"choices": [', "upstream_bad_response"),  # cut mid-event
        (whole(b'{"choices": [') + whole(b"[DONE]"), "upstream_bad_response"),
        (whole(b'{"error": {"message": "overloaded"}}'), "upstream_error"),
        (whole(b"[1]"), "upstream_bad_response"),
        (whole(b'{"choices": 3}'), "upstream_bad_response"),
        (whole(chunk("a", "stop"), b"[DONE]", chunk("late")), "upstream_bad_response"),
    ],
)
def test_streams_that_end_badly_raise(body: bytes, code: str) -> None:
    stream = CompletionStream()

    def read_all() -> None:
        stream.feed(body)
        stream.finish()

    with pytest.raises(UpstreamError) as info:
        read_all()
    assert info.value.code == code
