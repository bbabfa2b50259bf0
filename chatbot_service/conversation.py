"""A conversation and the token budget that decides what of it is sent. Pure: no I/O.

A request is the bot's system prompt, then the kept history, then the newest user message, in that
order. Each message carries its own token count, computed once when it is created, so fitting a
1,000-turn history costs summing integers, not re-encoding text.
"""

from __future__ import annotations

import dataclasses
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

from chatbot_service.errors import MessageTooLong
from chatbot_service.tokens import REPLY_PRIMING_TOKENS, Encoding, count_message

ROLES = ("system", "developer", "user", "assistant")


@dataclass(frozen=True, slots=True)
class Message:
    """One chat message with its token cost under ``encoding``; ``id`` names it as an item of the
    Conversations and Responses APIs (the store gives one to a message stored without)."""

    role: str
    content: str
    tokens: int
    encoding: str
    id: str = ""

    @classmethod
    def create(cls, encoding: Encoding, role: str, content: str) -> Message:
        """Count once, at creation; the count travels with the message (and into the session store)."""
        return cls(role, content, count_message(encoding, role, content), encoding.name)

    def recounted(self, encoding: Encoding) -> Message:
        """The same message counted for another encoding (after the bot's model changed)."""
        if self.encoding == encoding.name:
            return self
        return Message(
            self.role, self.content, count_message(encoding, self.role, self.content), encoding.name, self.id
        )

    def as_openai(self) -> dict[str, str]:
        """The message as the Chat Completions API takes it."""
        return {"role": self.role, "content": self.content}


def item_id(prefix: str = "msg") -> str:
    """A new id in OpenAI's style (``msg_<hex>``, ``resp_<hex>``, ``conv_<hex>``)."""
    return f"{prefix}_{secrets.token_hex(12)}"


def identified(messages: Sequence[Message]) -> list[Message]:
    """The messages, each with an id (the ones it had, else a new one)."""
    return [m if m.id else dataclasses.replace(m, id=item_id()) for m in messages]


@dataclass(frozen=True, slots=True)
class Budget:
    """How many prompt tokens a request may use: the context window minus the reply reserve."""

    context_tokens: int
    reply_tokens: int

    @property
    def prompt_tokens(self) -> int:
        return self.context_tokens - self.reply_tokens


@dataclass(frozen=True, slots=True)
class Prompt:
    """What will be sent, with our own count of it and whether older turns were left out."""

    messages: list[Message]
    tokens: int
    dropped: int

    @property
    def truncated(self) -> bool:
        return self.dropped > 0


def fit(pinned: Sequence[Message], history: Sequence[Message], newest: Message, budget: Budget) -> Prompt:
    """Build the request: all of ``pinned`` (system messages), the newest suffix of ``history`` that
    fits, then ``newest``.

    History is dropped from its oldest end, a whole turn at a time: the kept part starts at a user
    message, so the model never sees an assistant reply without the question it answered. Raises
    ``MessageTooLong`` when the pinned messages and the newest one cannot fit even alone.
    """
    fixed = REPLY_PRIMING_TOKENS + newest.tokens + sum(m.tokens for m in pinned)
    if fixed > budget.prompt_tokens:
        raise MessageTooLong(tokens=fixed, limit=budget.prompt_tokens)
    room = budget.prompt_tokens - fixed
    start = len(history)
    used = 0
    kept_tokens = 0
    for i in range(len(history) - 1, -1, -1):
        used += history[i].tokens
        if used > room:
            break
        if history[i].role == "user" or i == 0:
            start, kept_tokens = i, used
    kept = history[start:]
    messages = [*pinned, *kept, newest]
    return Prompt(messages, fixed + kept_tokens, dropped=start)
