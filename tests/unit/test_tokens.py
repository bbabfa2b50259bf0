from __future__ import annotations

import tiktoken
from hypothesis import given, settings
from hypothesis import strategies as st

from chatbot_service.conversation import Message
from chatbot_service.models import CL100K, FALLBACK_CONTEXT_TOKENS, O200K, lookup
from chatbot_service.tokens import count_message, get_encoding
from tests.support.fake_openai import prompt_tokens


def test_model_families_map_to_their_encodings_and_windows() -> None:
    assert lookup("gpt-4o-mini").encoding == O200K
    assert lookup("gpt-4o-2024-08-06").context_tokens == 128_000
    assert lookup("gpt-4.1-nano").encoding == O200K
    assert lookup("gpt-5-mini").reply_limit_param == "max_completion_tokens"
    assert lookup("o3-mini").encoding == O200K
    assert lookup("gpt-4").encoding == CL100K
    assert lookup("gpt-4").context_tokens == 8_192
    assert lookup("gpt-4-turbo-2024-04-09").context_tokens == 128_000
    assert lookup("gpt-3.5-turbo").encoding == CL100K
    assert lookup("gpt-4o").known and lookup("gpt-4o").reply_limit_param == "max_tokens"


def test_unknown_models_fall_back_visibly() -> None:
    info = lookup("my-azure-deployment")
    assert not info.known
    assert info.encoding == O200K
    assert info.context_tokens == FALLBACK_CONTEXT_TOKENS
    # a name that merely starts like a known one is not that model
    assert not lookup("gpt-4omega").known


def test_message_count_matches_tiktoken_and_the_cookbook() -> None:
    enc = get_encoding(O200K)
    raw = tiktoken.get_encoding(O200K)
    text = "Hello, how many tokens is this sentence? 🤖"
    assert count_message(enc, "user", text) == 3 + len(raw.encode("user")) + len(raw.encode(text))
    assert count_message(enc, "user", text, name="bob") == count_message(enc, "user", text) + 1 + len(
        raw.encode("bob")
    )


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["system", "user", "assistant"]), st.text(max_size=200)),
        min_size=1,
        max_size=8,
    ),
    st.sampled_from(["gpt-4o-mini", "gpt-4", "gpt-3.5-turbo"]),
)
def test_request_count_equals_an_independent_cookbook_count(pairs: list[tuple[str, str]], model: str) -> None:
    enc = get_encoding(lookup(model).encoding)
    messages = [Message.create(enc, role, content) for role, content in pairs]
    ours = 3 + sum(m.tokens for m in messages)
    assert ours == prompt_tokens(model, [m.as_openai() for m in messages])


def test_special_token_text_is_counted_as_plain_text() -> None:
    enc = get_encoding(CL100K)
    assert count_message(enc, "user", "<|endoftext|>") > 3 + 1 + 1
