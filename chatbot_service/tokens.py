"""Counting tokens the way the Chat Completions API bills them.

Per the OpenAI cookbook for current chat models: every message costs 3 tokens of framing plus its
encoded role and content (and 1 more plus the name when a name is given), and every reply is primed
with 3 more. Counting is pure CPU work on an encoding loaded once per process; encodings come from
tiktoken's cache (``TIKTOKEN_CACHE_DIR``), which images and tests seed so nothing is downloaded.
"""

from __future__ import annotations

import functools
from typing import Protocol

TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
REPLY_PRIMING_TOKENS = 3


class Encoding(Protocol):
    """The part of ``tiktoken.Encoding`` we use."""

    name: str

    def encode_ordinary(self, text: str) -> list[int]: ...


@functools.cache
def get_encoding(name: str) -> Encoding:
    """Load a tiktoken encoding once; the import is deferred so the CLI starts fast.

    tiktoken keeps the Python dict of byte strings it built its Rust tables from (200k entries, 27 MiB
    for o200k_base) only to pickle the encoding; counting uses the Rust tables alone. It is dropped,
    and the freed pages are handed back, so the idle process stays small.
    """
    import tiktoken

    from chatbot_service.memory import release_freed

    encoding = tiktoken.get_encoding(name)
    encoding._mergeable_ranks = {}
    release_freed()
    counter: Encoding = encoding
    return counter


def count_text(encoding: Encoding, text: str) -> int:
    """Tokens in plain text; special-token markers in user text count as ordinary text."""
    return len(encoding.encode_ordinary(text))


def count_message(encoding: Encoding, role: str, content: str, name: str | None = None) -> int:
    """Tokens one chat message adds to a request, framing included."""
    tokens = TOKENS_PER_MESSAGE + count_text(encoding, role) + count_text(encoding, content)
    if name:
        tokens += TOKENS_PER_NAME + count_text(encoding, name)
    return tokens
