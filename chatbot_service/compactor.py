"""Compacting a session's history with the bot's own model. Edge: one upstream call, one store write.

Called inside a turn's session lock, before the turn is fitted: when ``compaction.split_point`` says a
compaction is due, the older part is summarised and the session rewritten as the summary then the newest
turns. The summary call is made for the turn's caller and charged to its limits like any upstream call
(one request, its tokens, its cost: reserved before, settled with the usage after). Nothing here may fail
the turn: a refusal by the limits, an upstream or a store failure is logged and counted, and the turn goes
on with the history as it was (which ``fit`` then trims, as without compaction).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from typing import Any

from chatbot_service.compaction import split_point, summary_text, transcript
from chatbot_service.conversation import Message, item_id
from chatbot_service.errors import ChatError, LimitsUnavailable, QuotaExceeded, RateLimited
from chatbot_service.guard import Caller, Guard
from chatbot_service.recorder import Recorder
from chatbot_service.sessions import SessionStore
from chatbot_service.settings import Settings
from chatbot_service.tokens import Encoding
from chatbot_service.upstream import Upstream

log = logging.getLogger("kubechat.compaction")
#: Tokens kept free in the summary request beside the prompt and the transcript (priming, slack).
MARGIN = 16


class Compactor:
    def __init__(self, upstream: Upstream, metrics: Recorder, guard: Guard) -> None:
        self.upstream = upstream
        self.metrics = metrics
        self.guard = guard

    async def compact(
        self,
        settings: Settings,
        encoding: Encoding,
        history: Sequence[Message],
        caller: Caller,
        store: SessionStore | None = None,
        key: str | None = None,
    ) -> Sequence[Message]:
        """The history, compacted when due (and written to ``store`` at ``key`` when given)."""
        policy = settings.context
        if not policy.compacts:
            return history
        budget = settings.budget
        split = split_point(history, budget.prompt_tokens, policy)
        if not split:
            return history
        instructions = Message.create(encoding, "system", policy.prompt)
        room = budget.prompt_tokens - instructions.tokens - MARGIN
        text, _ = transcript(history[:split], room)
        request = Message.create(encoding, "user", text)
        params: dict[str, Any] = {
            "model": settings.model,
            "messages": [instructions.as_openai(), request.as_openai()],
            settings.model_info.reply_limit_param: settings.max_reply_tokens,
        }
        try:
            ticket = await self.guard.admit(caller, settings, instructions.tokens + request.tokens, params)
        except (RateLimited, QuotaExceeded, LimitsUnavailable) as exc:
            log.info("compaction not admitted by the limits (%s); trimming instead", exc.code)
            self.metrics.record_compaction("refused")
            return history
        try:
            reply = await ticket.guarded(self.upstream.complete(settings, params))
            summary = reply.text
            await ticket.settle(reply.usage, summary)
            if not summary.strip():
                raise ValueError("an empty summary")
            message = Message.create(encoding, "system", summary_text(summary, split))
            compacted = [dataclasses.replace(message, id=item_id("sum")), *history[split:]]
            if store is not None and key is not None:
                await store.put(key, compacted)
        except (ChatError, ValueError, LookupError, TypeError, AttributeError) as exc:
            log.warning("compaction failed (%s); trimming instead", type(exc).__name__)
            self.metrics.record_compaction("failed")
            return history
        self.metrics.record_compaction("ok")
        return compacted
