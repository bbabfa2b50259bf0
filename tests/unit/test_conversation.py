from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chatbot_service.conversation import Budget, Message, fit
from chatbot_service.errors import MessageTooLong
from chatbot_service.tokens import REPLY_PRIMING_TOKENS


def msg(role: str, tokens: int, label: str = "") -> Message:
    return Message(role, label or f"{role}-{tokens}", tokens, "test")


def history_of(turn_tokens: list[tuple[int, int]]) -> list[Message]:
    out: list[Message] = []
    for i, (u, a) in enumerate(turn_tokens):
        out += [msg("user", u, f"u{i}"), msg("assistant", a, f"a{i}")]
    return out


def test_everything_is_kept_when_it_fits() -> None:
    system, newest = msg("system", 10), msg("user", 5)
    history = history_of([(5, 5), (5, 5)])
    prompt = fit([system], history, newest, Budget(1000, 100))
    assert prompt.messages == [system, *history, newest]
    assert prompt.tokens == REPLY_PRIMING_TOKENS + 10 + 20 + 5
    assert not prompt.truncated


def test_oldest_turns_are_dropped_whole() -> None:
    system, newest = msg("system", 10), msg("user", 10)
    history = history_of([(20, 20), (20, 20), (20, 20)])
    # room for the two newest turns only: 3 + 10 + 10 + 80 = 103
    prompt = fit([system], history, newest, Budget(103 + 50, 50))
    assert prompt.messages == [system, *history[2:], newest]
    assert prompt.dropped == 2
    assert prompt.truncated
    assert prompt.tokens == 103


def test_a_dangling_assistant_reply_is_not_kept_without_its_question() -> None:
    system, newest = msg("system", 1), msg("user", 1)
    history = history_of([(50, 5)])  # the assistant reply alone would fit, its question not
    prompt = fit([system], history, newest, Budget(3 + 1 + 1 + 10, 0))
    assert prompt.messages == [system, newest]


def test_a_message_that_cannot_fit_alone_is_refused() -> None:
    with pytest.raises(MessageTooLong) as info:
        fit([msg("system", 50)], [], msg("user", 60), Budget(100, 10))
    assert info.value.status == 413
    assert info.value.tokens == 3 + 50 + 60
    assert info.value.limit == 90


turns = st.lists(st.tuples(st.integers(1, 400), st.integers(1, 400)), max_size=40)


@settings(max_examples=300, deadline=None)
@given(turns, st.integers(1, 300), st.integers(1, 300), st.integers(50, 5000), st.integers(0, 500))
def test_fit_never_exceeds_budget_and_keeps_system_newest_and_order(
    turn_tokens: list[tuple[int, int]], system_tokens: int, newest_tokens: int, window: int, reserve: int
) -> None:
    system, newest = msg("system", system_tokens), msg("user", newest_tokens, "newest")
    history = history_of(turn_tokens)
    budget = Budget(window + reserve, reserve)
    try:
        prompt = fit([system], history, newest, budget)
    except MessageTooLong:
        assert REPLY_PRIMING_TOKENS + system_tokens + newest_tokens > budget.prompt_tokens
        return
    assert prompt.tokens <= budget.prompt_tokens
    assert prompt.tokens == REPLY_PRIMING_TOKENS + sum(m.tokens for m in prompt.messages)
    assert prompt.messages[0] is system and prompt.messages[-1] is newest
    kept = prompt.messages[1:-1]
    # a contiguous, newest suffix of the history, in order, starting at a question
    assert kept == history[len(history) - len(kept) :]
    assert not kept or kept[0].role == "user"
    assert prompt.dropped == len(history) - len(kept)
    # maximal: the next older whole turn would not have fit
    if prompt.dropped:
        start = prompt.dropped - 2
        extra = history[start].tokens + history[start + 1].tokens
        assert prompt.tokens + extra > budget.prompt_tokens
