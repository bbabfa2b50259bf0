"""One bot's turn logic: sessions, budgeting and the upstream call, without HTTP.

``ChatService`` is what both the HTTP routes and the terminal bot drive. A turn holds its
session's lock from reading the history to recording the reply, and records the user message and
the reply together only after the model answered, so a failed turn leaves the session as it was.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from chatbot_service.api_models import CompletionRequest
from chatbot_service.compactor import Compactor
from chatbot_service.conversation import Message, Prompt, fit
from chatbot_service.errors import BadRequest, ChatError, MessageTooLong, SessionNotFound
from chatbot_service.guard import OPEN, Caller, Guard
from chatbot_service.holder import SettingsHolder
from chatbot_service.observe import Observer, Turn
from chatbot_service.recorder import NoMetrics
from chatbot_service.relay import Relay
from chatbot_service.sessions import Stores
from chatbot_service.settings import Settings
from chatbot_service.tokens import Encoding, get_encoding
from chatbot_service.upstream import Upstream


@dataclass(frozen=True)
class TurnResult:
    session_id: str
    reply: str
    usage: dict[str, int]
    truncated: bool

    def as_json(self) -> dict[str, Any]:
        return {
            "session_id": self.session_id,
            "reply": self.reply,
            "usage": self.usage,
            "truncated": self.truncated,
        }


def new_session_id() -> str:
    return secrets.token_urlsafe(16)


class ChatService:
    def __init__(
        self,
        holder: SettingsHolder,
        stores: Stores,
        upstream: Upstream,
        observer: Observer | None = None,
        guard: Guard | None = None,
    ) -> None:
        self.holder = holder
        self.stores = stores
        self.upstream = upstream
        self.observer = observer or Observer(NoMetrics())  # the terminal bot: no /metrics to serve
        self.metrics = self.observer.metrics
        self.guard = guard or Guard(stores)
        self.compactor = Compactor(upstream, self.metrics, self.guard)
        self._system: tuple[Settings, Message] | None = None

    # -- helpers ---------------------------------------------------------------------------

    def _encoding(self, settings: Settings) -> Encoding:
        return get_encoding(settings.model_info.encoding)

    def _system_message(self, settings: Settings) -> Message:
        """The bot's system prompt, counted once per settings object."""
        if self._system is None or self._system[0] is not settings:
            self._system = (
                settings,
                Message.create(self._encoding(settings), "system", settings.system_prompt),
            )
        return self._system[1]

    def _params(self, settings: Settings, prompt: Prompt, reply_limit: int | None = None) -> dict[str, Any]:
        params: dict[str, Any] = {
            "model": settings.model,
            "messages": [m.as_openai() for m in prompt.messages],
            settings.model_info.reply_limit_param: min(
                settings.max_reply_tokens if reply_limit is None else reply_limit, settings.max_reply_tokens
            ),
        }
        if settings.temperature is not None:
            params["temperature"] = settings.temperature
        return params

    def check_message(self, settings: Settings, text: str) -> None:
        if not text.strip():
            raise BadRequest("message must not be empty", code="empty_message")
        if len(text) > settings.max_message_chars:
            raise MessageTooLong.chars(len(text), settings.max_message_chars)

    def start_turn(
        self, settings: Settings, session_id: str | None, prompt: Prompt, caller: Caller, route: str = ""
    ) -> Turn:
        """Count how the prompt was fitted and start observing the request (None: a stateless one)."""
        route = route or ("/chat" if session_id else "/v1/chat/completions")
        self.metrics.record_fit(route, prompt.truncated, prompt.dropped)
        self.metrics.provider = self.upstream.provider_name(settings)
        turn = self.observer.turn(
            settings.model, conversation_id=session_id, trimmed=prompt.truncated, dropped=prompt.dropped
        )
        turn.identity = caller.name
        turn.prices = self.guard.prices(settings)
        return turn

    # -- server-side conversations (/chat) ----------------------------------------------

    async def _prepare(
        self,
        settings: Settings,
        session_id: str,
        new: bool,
        text: str,
        caller: Caller,
        key: str | None = None,
    ) -> tuple[Message, Prompt, Sequence[Message]]:
        """Inside the session lock: load history and fit the request (raises before any upstream call)."""
        encoding = self._encoding(settings)
        history: Sequence[Message] = []
        if not new:
            found = await self.stores.get(settings).history(key or session_id)
            if found is None:
                raise SessionNotFound(session_id)
            history = [m.recounted(encoding) for m in found]
            store = self.stores.get(settings)
            history = await self.compactor.compact(
                settings, encoding, history, caller, store, key or session_id
            )
        user = Message.create(encoding, "user", text)
        prompt = fit([self._system_message(settings)], history, user, settings.budget)
        return user, prompt, history

    async def turn(self, session_id: str | None, text: str, caller: Caller = OPEN) -> TurnResult:
        settings = self.holder.require()
        self.check_message(settings, text)
        sid = session_id or new_session_id()
        key = caller.session_key(sid)
        async with self.stores.get(settings).lock(key):
            user, prompt, history = await self._prepare(settings, sid, session_id is None, text, caller, key)
            params = self._params(settings, prompt)
            ticket = await self.guard.admit(caller, settings, prompt.tokens, params)
            turn = self.start_turn(settings, sid, prompt, caller)
            try:
                reply = await ticket.guarded(self.upstream.complete(settings, params))
            except ChatError as exc:
                turn.failed(exc)
                raise
            await ticket.settle(reply.usage, reply.text)
            turn.answered(reply.body)
            result = await self._record(settings, sid, user, reply.text, reply.usage, prompt, history, key)
            turn.served()
            return result

    async def _record(
        self,
        settings: Settings,
        session_id: str,
        user: Message,
        reply: str,
        upstream_usage: dict[str, Any] | None,
        prompt: Prompt,
        history: Sequence[Message],
        key: str | None = None,
    ) -> TurnResult:
        assistant = Message.create(self._encoding(settings), "assistant", reply)
        await self.stores.get(settings).append(key or session_id, [user, assistant])
        usage = {
            k: int(v)
            for k, v in (upstream_usage or {}).items()
            if k.endswith("_tokens") and isinstance(v, int)
        }
        usage["counted_prompt_tokens"] = prompt.tokens
        usage["history_tokens"] = sum(m.tokens for m in history) + user.tokens + assistant.tokens
        usage["dropped_messages"] = prompt.dropped
        return TurnResult(session_id, reply, usage, prompt.truncated)

    async def turn_stream(
        self, session_id: str | None, text: str, caller: Caller = OPEN
    ) -> tuple[Relay, AsyncIterator[dict[str, Any]]]:
        """A turn whose reply streams: the relay (which the caller must close, however the client
        leaves) and its events: ``{"session_id"}``, ``{"deltas": [...]}`` and ``{"keepalive"}``s, then
        ``{"done": TurnResult}`` (the turn is recorded) or ``{"error": ChatError}`` (nothing is).
        The relay settles the caller's reservation with what came, however the stream ended.

        Errors before the upstream's first byte raise, so HTTP can answer with a status.
        """
        settings = self.holder.require()
        self.check_message(settings, text)
        sid = session_id or new_session_id()
        key = caller.session_key(sid)
        resources = contextlib.AsyncExitStack()
        try:
            await resources.enter_async_context(self.stores.get(settings).lock(key))
            user, prompt, history = await self._prepare(settings, sid, session_id is None, text, caller, key)
            params = self._params(settings, prompt)
            params["stream_options"] = {"include_usage": True}
            ticket = await self.guard.admit(caller, settings, prompt.tokens, params)
            turn = self.start_turn(settings, sid, prompt, caller)
            try:
                opened = resources.enter_async_context(self.upstream.stream(settings, params))
                stream = await ticket.guarded(opened)
            except ChatError as exc:
                turn.failed(exc)
                raise
        except BaseException:
            await resources.aclose()
            raise
        relay = Relay(stream, resources, settings.stream_keepalive, turn, ticket)
        return relay, self._chat_events(relay, settings, sid, user, prompt, history, key)

    async def _chat_events(
        self,
        relay: Relay,
        settings: Settings,
        sid: str,
        user: Message,
        prompt: Prompt,
        history: Sequence[Message],
        key: str,
    ) -> AsyncIterator[dict[str, Any]]:
        yield {"session_id": sid}
        parts: list[str] = []
        usage: dict[str, Any] | None = None
        try:
            async for batch in relay.events():
                if batch is None:
                    yield {"keepalive": True}
                    continue
                deltas = []
                for event in batch:
                    if event.text:
                        deltas.append(event.text)
                    usage = event.usage or usage
                if deltas:
                    parts.extend(deltas)
                    yield {"deltas": deltas}
        except ChatError as exc:
            yield {"error": exc}
            return
        result = await self._record(settings, sid, user, "".join(parts), usage, prompt, history, key)
        yield {"done": result}

    # -- OpenAI-compatible, stateless (/v1/chat/completions) ---------------------------

    def completion_params(
        self, settings: Settings, request: CompletionRequest
    ) -> tuple[dict[str, Any], Prompt]:
        """Turn a validated Chat Completions request into this bot's upstream call."""
        encoding = self._encoding(settings)
        pinned = [self._system_message(settings)]
        rest: list[Message] = []
        for i, raw in enumerate(request.messages):
            content = raw.text
            if len(content) > settings.max_message_chars:
                error = MessageTooLong.chars(len(content), settings.max_message_chars)
                error.param = f"messages[{i}].content"
                raise error
            message = Message.create(encoding, raw.role, content)
            # A client's own system/developer messages follow the bot's prompt and are never trimmed.
            (pinned if raw.role in ("system", "developer") else rest).append(message)
        if not rest:
            raise BadRequest(
                "'messages' needs at least one user or assistant message",
                code="invalid_value",
                param="messages",
            )
        prompt = fit(pinned, rest[:-1], rest[-1], settings.budget)
        params = self._params(settings, prompt, request.reply_limit)
        params.update(request.passed_through())
        return params, prompt
