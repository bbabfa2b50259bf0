"""One bot's turn logic: sessions, budgeting and the upstream call, without HTTP.

``ChatService`` is what both the HTTP routes and the terminal bot drive. A turn holds its
session's lock from reading the history to recording the reply, and records the user message and
the reply together only after the model answered, so a failed turn leaves the session as it was.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import httpx2

from chatbot_service.conversation import Message, Prompt, fit
from chatbot_service.errors import BadRequest, ChatError, MessageTooLong, SessionNotFound, UpstreamError
from chatbot_service.guard import OPEN, Caller, Guard, Ticket
from chatbot_service.holder import SettingsHolder
from chatbot_service.sessions import Stores
from chatbot_service.settings import Settings
from chatbot_service.tokens import Encoding, get_encoding
from chatbot_service.upstream import Upstream, map_transport_error


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
        self, holder: SettingsHolder, stores: Stores, upstream: Upstream, guard: Guard | None = None
    ) -> None:
        self.holder = holder
        self.stores = stores
        self.upstream = upstream
        self.guard = guard or Guard(stores)
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
                reply_limit or settings.max_reply_tokens, settings.max_reply_tokens
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

    # -- server-side conversations (/chat) ----------------------------------------------

    async def _prepare(
        self, settings: Settings, session_id: str, new: bool, text: str, key: str | None = None
    ) -> tuple[Message, Prompt, Sequence[Message]]:
        """Inside the session lock: load history and fit the request (raises before any upstream call)."""
        encoding = self._encoding(settings)
        history: Sequence[Message] = []
        if not new:
            found = await self.stores.get(settings).history(key or session_id)
            if found is None:
                raise SessionNotFound(session_id)
            history = [m.recounted(encoding) for m in found]
        user = Message.create(encoding, "user", text)
        prompt = fit([self._system_message(settings)], history, user, settings.budget)
        return user, prompt, history

    async def turn(self, session_id: str | None, text: str, caller: Caller = OPEN) -> TurnResult:
        settings = self.holder.require()
        self.check_message(settings, text)
        sid = session_id or new_session_id()
        key = caller.session_key(sid)
        async with self.stores.get(settings).lock(key):
            user, prompt, history = await self._prepare(settings, sid, session_id is None, text, key)
            params = self._params(settings, prompt)
            ticket = await self.guard.admit(caller, settings, prompt.tokens, params)
            body = await ticket.guarded(self.upstream.complete(settings, params))
            reply = _reply_text(body)
            await ticket.settle(body.get("usage"), reply)
            return await self._record(settings, sid, user, reply, body.get("usage"), prompt, history, key)

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
    ) -> AsyncIterator[dict[str, Any]]:
        """A turn whose reply streams: yields ``{"delta": ...}`` events, then ``{"done": TurnResult}``.

        Errors before the first delta raise (so HTTP can answer with a status); later ones are
        yielded as ``{"error": ChatError}`` and nothing is recorded.
        """
        settings = self.holder.require()
        self.check_message(settings, text)
        sid = session_id or new_session_id()
        key = caller.session_key(sid)
        lock = self.stores.get(settings).lock(key)
        await lock.__aenter__()
        try:
            user, prompt, history = await self._prepare(settings, sid, session_id is None, text, key)
            params = self._params(settings, prompt)
            params["stream_options"] = {"include_usage": True}
            ticket = await self.guard.admit(caller, settings, prompt.tokens, params)
            stream = self.upstream.stream(settings, params)
            response = await ticket.guarded(stream.__aenter__())
        except BaseException:
            await lock.__aexit__(None, None, None)
            raise
        relay = self._relay(settings, sid, user, prompt, history, lock, stream, response, ticket, key)
        # Step into the relay's try block now: a generator that never started would not run its finally
        # if the client left before the body was sent, and the session would stay locked.
        first = await relay.__anext__()
        return _prepended(first, relay)

    async def _relay(
        self,
        settings: Settings,
        sid: str,
        user: Message,
        prompt: Prompt,
        history: Sequence[Message],
        lock: Any,
        stream: Any,
        response: Any,
        ticket: Ticket,
        key: str,
    ) -> AsyncIterator[dict[str, Any]]:
        parts: list[str] = []
        usage: dict[str, Any] | None = None
        try:
            yield {"session_id": sid}
            try:
                async for chunk in sse_json(response):
                    for choice in chunk.get("choices") or ():
                        delta = (choice.get("delta") or {}).get("content")
                        if delta:
                            parts.append(delta)
                            yield {"delta": delta}
                    usage = chunk.get("usage") or usage
            except ChatError as exc:
                yield {"error": exc}
                return
            result = await self._record(settings, sid, user, "".join(parts), usage, prompt, history, key)
            yield {"done": result}
        finally:
            await ticket.settle(usage, "".join(parts))  # a broken or abandoned stream: what came, counted
            await stream.__aexit__(None, None, None)
            await lock.__aexit__(None, None, None)

    # -- OpenAI-compatible, stateless (/v1/chat/completions) ---------------------------

    def completion_params(self, settings: Settings, request: dict[str, Any]) -> tuple[dict[str, Any], Prompt]:
        """Validate a client's Chat Completions request and turn it into this bot's upstream call."""
        encoding = self._encoding(settings)
        raw_messages = request.get("messages")
        if not isinstance(raw_messages, list) or not raw_messages:
            raise BadRequest("'messages' must be a non-empty list", code="invalid_messages")
        for unsupported in ("tools", "functions", "tool_choice", "function_call"):
            if request.get(unsupported) is not None:
                raise BadRequest(
                    f"'{unsupported}' is not supported by kubechat bots", code="unsupported_parameter"
                )
        pinned = [self._system_message(settings)]
        rest: list[Message] = []
        for i, raw in enumerate(raw_messages):
            role, content = _client_message(i, raw)
            if len(content) > settings.max_message_chars:
                raise MessageTooLong.chars(len(content), settings.max_message_chars)
            message = Message.create(encoding, role, content)
            # A client's own system/developer messages follow the bot's prompt and are never trimmed.
            (pinned if role in ("system", "developer") else rest).append(message)
        if not rest:
            raise BadRequest(
                "'messages' needs at least one user or assistant message", code="invalid_messages"
            )
        prompt = fit(pinned, rest[:-1], rest[-1], settings.budget)
        limit = request.get("max_completion_tokens") or request.get("max_tokens")
        if limit is not None and (not isinstance(limit, int) or limit < 1):
            raise BadRequest("'max_tokens' must be a positive integer", code="invalid_parameter")
        params = self._params(settings, prompt, limit)
        for name in _PASSED_THROUGH:
            if request.get(name) is not None:
                params[name] = request[name]
        return params, prompt


async def _prepended(
    first: dict[str, Any], rest: AsyncIterator[dict[str, Any]]
) -> AsyncIterator[dict[str, Any]]:
    yield first
    async for event in rest:
        yield event


_PASSED_THROUGH = (
    "temperature",
    "top_p",
    "n",
    "stop",
    "seed",
    "presence_penalty",
    "frequency_penalty",
    "user",
    "response_format",
    "logprobs",
    "top_logprobs",
    "logit_bias",
    "stream_options",
)


def _client_message(index: int, raw: object) -> tuple[str, str]:
    if not isinstance(raw, dict):
        raise BadRequest(
            f"messages[{index}] must be an object with 'role' and 'content'", code="invalid_messages"
        )
    role = raw.get("role")
    if role not in ("system", "developer", "user", "assistant"):
        raise BadRequest(
            f"messages[{index}].role must be system, developer, user or assistant (got {str(role)[:40]!r})",
            code="invalid_messages",
        )
    content = raw.get("content")
    if isinstance(content, list):
        texts = []
        for part in content:
            if (
                not isinstance(part, dict)
                or part.get("type") != "text"
                or not isinstance(part.get("text"), str)
            ):
                raise BadRequest(
                    f"messages[{index}].content: only text parts are supported", code="invalid_messages"
                )
            texts.append(part["text"])
        content = "".join(texts)
    if not isinstance(content, str):
        raise BadRequest(f"messages[{index}].content must be a string", code="invalid_messages")
    return str(role), content


def _reply_text(body: dict[str, Any]) -> str:
    try:
        content = body["choices"][0]["message"].get("content")
    except (KeyError, IndexError, TypeError, AttributeError):
        raise UpstreamError(502, "upstream_bad_response", "the model API answered without a reply") from None
    return content or ""


async def sse_json(response: Any) -> AsyncIterator[dict[str, Any]]:
    """The JSON objects of an OpenAI Server-Sent Events body, up to ``[DONE]``; transport
    failures become ``ChatError``s."""
    try:
        async for line in response.aiter_lines():
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                return
            event = json.loads(data)
            if isinstance(event, dict) and "error" in event:
                message = str((event["error"] or {}).get("message", "error"))[:300]
                raise UpstreamError(502, "upstream_error", f"the model API failed mid-reply: {message}")
            yield event
    except httpx2.HTTPError as exc:
        raise map_transport_error(exc) from None
