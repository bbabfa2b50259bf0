"""Compaction: a conversation's older turns replaced by a summary instead of dropped. Pure: no I/O.

Opt-in (``context``: ``{"mode": "compact"}``; the default ``trim`` drops the oldest turns, as ``fit``
always does). When a session's history passes ``threshold`` of the prompt budget, everything but the
newest turns (about half of that threshold) is summarised by the bot's own model; the summary is one
``system`` message at the head of the session, with an id ``sum_<hex>`` and a text that says what it is,
counted in the budget like any message. ``compactor`` makes the call; when it fails, trimming stays.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from chatbot_service.conversation import Message

DEFAULT_PROMPT = (
    "You compact a conversation between a user and an assistant. Write a concise summary of the "
    "transcript below that keeps every fact, name, number, decision and open question a later reply "
    "may need, in the transcript's language. Write only the summary."
)
SUMMARY_PREFIX = "Summary of the earlier conversation"
SUMMARY_ID_PREFIX = "sum"


class ContextError(ValueError):
    """A ``context`` setting that cannot be used."""


@dataclass(frozen=True)
class ContextPolicy:
    """What to do when history outgrows the window: ``trim`` or ``compact`` past ``threshold``."""

    mode: str = "trim"
    threshold: float = 0.75
    prompt: str = DEFAULT_PROMPT

    @property
    def compacts(self) -> bool:
        return self.mode == "compact"


def parse_context(raw: str) -> ContextPolicy:
    """``spec.context`` as JSON: ``{"mode": "trim"|"compact", "threshold": 0.1-0.95, "summaryPrompt"}``."""
    try:
        spec = json.loads(raw)
    except ValueError:
        raise ContextError("must be a JSON object") from None
    if not isinstance(spec, dict):
        raise ContextError("must be a JSON object")
    unknown = set(spec) - {"mode", "threshold", "summaryPrompt"}
    if unknown:
        raise ContextError(f"unknown field(s) {', '.join(sorted(unknown))}")
    mode = spec.get("mode", "trim")
    if mode not in ("trim", "compact"):
        raise ContextError("mode: must be trim or compact")
    threshold = spec.get("threshold", 0.75)
    if isinstance(threshold, bool) or not isinstance(threshold, int | float) or not 0.1 <= threshold <= 0.95:
        raise ContextError("threshold: must be a number from 0.1 to 0.95 (a share of the prompt budget)")
    prompt = spec.get("summaryPrompt", DEFAULT_PROMPT)
    if not isinstance(prompt, str) or not prompt.strip():
        raise ContextError("summaryPrompt: must be a non-empty string")
    return ContextPolicy(mode, float(threshold), prompt)


def split_point(history: Sequence[Message], prompt_budget: int, policy: ContextPolicy) -> int:
    """How many of the oldest messages to summarise: 0 when compaction is not due. The kept newest part
    starts at a user message and holds about half of the threshold, so compaction is not due again at
    the next turn."""
    limit = policy.threshold * prompt_budget
    if sum(m.tokens for m in history) <= limit:
        return 0
    keep, kept, split = limit / 2, 0, len(history)
    for i in range(len(history) - 1, -1, -1):
        kept += history[i].tokens
        if kept > keep:
            break
        if history[i].role == "user":
            split = i
    return split if split >= 2 else 0


def transcript(older: Sequence[Message], room: int) -> tuple[str, int]:
    """The messages to summarise as text, newest kept when they do not all fit in ``room`` tokens (the
    summary request must fit the model's window), an earlier summary always (it holds what came before);
    with how many were left out."""
    head = list(older[:1]) if older and is_summary(older[0]) else []
    rest = older[len(head) :]
    used = sum(m.tokens for m in head)
    kept: list[Message] = []
    for message in reversed(rest):
        used += message.tokens
        if used > room and kept:
            break
        kept.append(message)
    chosen = [*head, *reversed(kept)]
    return "\n".join(f"{m.role}: {m.content}" for m in chosen), len(older) - len(chosen)


def summary_text(summary: str, summarised: int) -> str:
    return f"{SUMMARY_PREFIX} ({summarised} messages, compacted):\n{summary.strip()}"


def is_summary(message: Message) -> bool:
    return message.id.startswith(SUMMARY_ID_PREFIX + "_")
