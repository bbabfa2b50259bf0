"""Compaction's pure part: when it is due, where the history is split, what the summary request sees."""

from __future__ import annotations

import pytest

from chatbot_service.compaction import ContextError, ContextPolicy, parse_context, split_point, transcript
from chatbot_service.conversation import Message

POLICY = ContextPolicy("compact", 0.5)


def turns(count: int, tokens: int = 10) -> list[Message]:
    return [
        Message("user" if i % 2 == 0 else "assistant", f"m{i}", tokens, "o200k_base", f"msg_{i}")
        for i in range(count)
    ]


def test_not_due_below_the_threshold_and_split_at_a_user_message_above() -> None:
    assert split_point(turns(10), 200, POLICY) == 0  # 100 tokens == 0.5 x 200: not past it
    split = split_point(turns(11), 200, POLICY)  # 110 > 100: keep about 50 tokens, from a user message
    assert split == 6 and turns(11)[split].role == "user"


def test_too_little_to_summarise_is_not_compacted() -> None:
    assert split_point(turns(1, tokens=300), 200, POLICY) == 0
    assert split_point(turns(3, tokens=80), 200, POLICY) == 3  # all of it: the new message follows


def test_the_transcript_keeps_an_earlier_summary_and_the_newest_messages() -> None:
    summary = Message("system", "Summary: 4417", 30, "o200k_base", "sum_1")
    text, left_out = transcript([summary, *turns(6)], room=55)
    assert text.splitlines() == ["system: Summary: 4417", "user: m4", "assistant: m5"]
    assert left_out == 4


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("[]", "must be a JSON object"),
        ('{"mode": "squash"}', "mode: must be trim or compact"),
        ('{"threshold": 1}', "threshold"),
        ('{"threshold": true}', "threshold"),
        ('{"summaryPrompt": " "}', "summaryPrompt"),
        ('{"extra": 1}', "unknown field(s) extra"),
    ],
)
def test_bad_context_settings_are_named(raw: str, message: str) -> None:
    with pytest.raises(ContextError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_context(raw)


def test_defaults_trim() -> None:
    assert not parse_context("{}").compacts and parse_context('{"mode": "compact"}').threshold == 0.75
