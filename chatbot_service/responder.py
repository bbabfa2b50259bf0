"""One Responses API turn on top of the bot's sessions, streamed or not, without HTTP. Core.

A turn resolves its context (the chain of ``previous_response_id``, a ``conversation``, or nothing),
holds that session's lock from reading it to recording the turn, fits it into the same budget as
``/chat`` (the bot's system prompt first, then ``instructions``, then history trimmed from its oldest
end), passes the guard (``admit`` before the upstream call, settled after), and records the input
items and the reply only once the model answered: a failed or interrupted response extends nothing
and is not stored. Continuing from a response that is not its session's newest forks the chain into
a new session holding the history up to it, as OpenAI's chains fork.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass, field
from typing import Any

from chatbot_service.conversation import Message, fit, identified, item_id
from chatbot_service.errors import BadRequest, ChatError, MessageTooLong, NotFound
from chatbot_service.guard import Caller, Ticket
from chatbot_service.observe import Turn
from chatbot_service.records import Records, StoredResponse
from chatbot_service.relay import Relay
from chatbot_service.responses import Draft, Events, finished_status, message_item
from chatbot_service.responses_api import ResponseRequest, input_messages
from chatbot_service.service import ChatService
from chatbot_service.settings import Settings
from chatbot_service.sse import KEEPALIVE

ROUTE = "/v1/responses"


@dataclass
class _Plan:
    """Where the turn's messages go: appended to ``session``, or (a fork) the session rewritten as
    ``base`` plus them; ``session`` None: nowhere (``store: false`` without a conversation)."""

    session: str | None
    history: Sequence[Message]
    base: list[Message] | None = None
    inputs: list[Message] = field(default_factory=list)


@dataclass
class Started:
    """A turn admitted and sent upstream; ``finish`` records it once the reply is whole."""

    draft: Draft
    plan: _Plan
    settings: Settings
    records: Records
    ticket: Ticket
    turn: Turn
    params: dict[str, Any]

    @property
    def headers(self) -> dict[str, str]:
        return {
            "X-Kubechat-Prompt-Tokens": str(self.draft.prompt.tokens),
            "X-Kubechat-Truncated": str(self.draft.prompt.truncated).lower(),
        }


class Responder:
    def __init__(self, service: ChatService) -> None:
        self.service = service

    def records(self, settings: Settings, caller: Caller) -> Records:
        return Records(self.service.stores.get(settings), caller)

    async def create(self, request: ResponseRequest, caller: Caller) -> tuple[dict[str, Any], dict[str, str]]:
        """A whole response: the response object and the headers that say how the prompt was fitted."""
        async with contextlib.AsyncExitStack() as resources:
            started = await self._start(request, caller, resources)
            try:
                reply = await started.ticket.guarded(
                    self.service.upstream.complete(started.settings, started.params)
                )
            except ChatError as exc:
                started.turn.failed(exc)
                raise
            await started.ticket.settle(reply.usage, reply.text)
            started.turn.answered(reply.body)
            response = await self._finish(started, reply.text, reply.usage, finished_status(reply.finish))
            started.turn.served()
            return response, started.headers

    async def create_stream(
        self, request: ResponseRequest, caller: Caller
    ) -> tuple[Relay, AsyncGenerator[bytes, None], dict[str, str]]:
        """A streamed response: the relay (the caller closes it, however the client leaves), its
        SSE frames, and the headers. Errors before the upstream's first byte raise."""
        resources = contextlib.AsyncExitStack()
        try:
            started = await self._start(request, caller, resources, stream=True)
            try:
                opened = resources.enter_async_context(
                    self.service.upstream.stream(started.settings, started.params)
                )
                stream = await started.ticket.guarded(opened)
            except ChatError as exc:
                started.turn.failed(exc)
                raise
        except BaseException:
            await resources.aclose()
            raise
        relay = Relay(stream, resources, started.settings.stream_keepalive, started.turn, started.ticket)
        return relay, self._frames(relay, started), started.headers

    async def _frames(self, relay: Relay, started: Started) -> AsyncGenerator[bytes, None]:
        events = Events(started.draft)
        yield events.opening()
        usage: dict[str, Any] | None = None
        finish: Any = None
        try:
            async for batch in relay.events():
                if batch is None:
                    yield KEEPALIVE
                    continue
                frames = []
                for event in batch:
                    if event.chunk is None:
                        continue
                    if event.text:
                        frames.append(events.delta(event.text))
                    usage = event.usage or usage
                    finish = event.finish or finish
                if frames:  # what arrived together goes out in one write
                    yield b"".join(frames)
        except ChatError as exc:
            yield events.failed(exc)
            return
        response = await self._finish(started, events.text, usage, finished_status(finish))
        yield events.closing(response)

    # -- the parts both share ------------------------------------------------------------------

    async def _start(
        self,
        request: ResponseRequest,
        caller: Caller,
        resources: contextlib.AsyncExitStack,
        stream: bool = False,
    ) -> Started:
        service = self.service
        settings = service.holder.require()
        encoding = service._encoding(settings)
        records = self.records(settings, caller)
        raw = input_messages(request.input)
        for i, (_, text) in enumerate(raw):
            if len(text) > settings.max_message_chars:
                error = MessageTooLong.chars(len(text), settings.max_message_chars)
                error.param = "input" if isinstance(request.input, str) else f"input[{i}].content"
                raise error
        inputs = identified([Message.create(encoding, role, text) for role, text in raw])
        plan = await self._plan(request, records, resources)
        plan.inputs = inputs
        history = [m.recounted(encoding) for m in plan.history]
        in_place = plan.session is not None and plan.base is None  # a fork is written whole at the end
        key = records.session_key(plan.session) if in_place and plan.session else None
        plan.history = await service.compactor.compact(
            settings, encoding, history, caller, records.store, key
        )
        if plan.base is not None:
            plan.base = list(plan.history)
        pinned = [service._system_message(settings)]
        if request.instructions:
            pinned.append(Message.create(encoding, "developer", request.instructions))
        pinned += [m for m in inputs if m.role in ("system", "developer")]
        said = [m for m in inputs if m.role not in ("system", "developer")]
        rest = [*plan.history, *said]
        if not rest:
            raise BadRequest(
                "'input' needs at least one user or assistant message", code="invalid_value", param="input"
            )
        prompt = fit(pinned, rest[:-1], rest[-1], settings.budget)
        if request.truncation == "disabled" and prompt.truncated:
            raise BadRequest(
                f"the conversation needs more than this bot's budget of {settings.budget.prompt_tokens} "
                "prompt tokens; send truncation 'auto' to drop its oldest turns",
                code="context_length_exceeded",
                param="input",
            )
        params = service._params(settings, prompt, request.max_output_tokens)
        for name in ("temperature", "top_p", "user"):
            value = getattr(request, name)
            if value is not None:
                params[name] = value
        response_format = request.response_format()
        if response_format is not None:
            params["response_format"] = response_format
        if stream:
            params["stream_options"] = {"include_usage": True}
        ticket = await service.guard.admit(caller, settings, prompt.tokens, params)
        turn = service.start_turn(settings, plan.session, prompt, caller, route=ROUTE)
        draft = Draft(
            id=item_id("resp"),
            output_id=item_id("msg"),
            created_at=int(time.time()),
            model=settings.model,
            request=request,
            prompt=prompt,
            conversation_id=plan.session,
            reply_limit=params[settings.model_info.reply_limit_param],
        )
        return Started(draft, plan, settings, records, ticket, turn, params)

    async def _plan(
        self, request: ResponseRequest, records: Records, resources: contextlib.AsyncExitStack
    ) -> _Plan:
        """The turn's context, its session's lock taken (held until ``resources`` close)."""
        store = records.store
        conversation = request.conversation_id
        if conversation is not None and request.previous_response_id is not None:
            raise BadRequest(
                "'previous_response_id' and 'conversation' cannot be used together",
                code="invalid_value",
                param="conversation",
            )
        if request.previous_response_id is not None:
            previous = await records.response(request.previous_response_id)
            if previous is None:
                raise BadRequest(
                    f"Previous response with id '{request.previous_response_id}' not found.",
                    code="previous_response_not_found",
                    param="previous_response_id",
                )
            key = records.session_key(previous.session or "")
            await resources.enter_async_context(store.lock(key))
            history = list(await store.history(key) or [])
            ids = [m.id for m in history]
            if previous.last_item is None or previous.last_item not in ids:
                raise BadRequest(
                    f"the conversation of response '{request.previous_response_id}' has expired",
                    code="previous_response_not_found",
                    param="previous_response_id",
                )
            end = ids.index(previous.last_item) + 1
            if not request.stored:
                return _Plan(None, history[:end])
            if end == len(history):
                return _Plan(previous.session, history)
            fork = item_id("conv")
            await resources.enter_async_context(store.lock(records.session_key(fork)))
            return _Plan(fork, history[:end], base=history[:end])
        if conversation is not None:
            if await records.conversation(conversation) is None:
                raise NotFound(f"Conversation with id '{conversation}' not found.")
            key = records.session_key(conversation)
            await resources.enter_async_context(store.lock(key))
            history = list(await store.history(key) or [])
            return _Plan(conversation, history)
        if not request.stored:
            return _Plan(None, [])
        session = item_id("conv")
        await resources.enter_async_context(store.lock(records.session_key(session)))
        return _Plan(session, [])

    async def _finish(
        self, started: Started, reply: str, usage: dict[str, Any] | None, status: str
    ) -> dict[str, Any]:
        """Record the answered turn: the session extended, then the response kept (``store``)."""
        draft, plan, records = started.draft, started.plan, started.records
        response = draft.response(status, reply, usage or {})
        encoding = self.service._encoding(started.settings)
        assistant = dataclasses.replace(Message.create(encoding, "assistant", reply), id=draft.output_id)
        if plan.session is not None:
            key = records.session_key(plan.session)
            if plan.base is not None:
                await records.store.put(key, [*plan.base, *plan.inputs, assistant])
            else:
                await records.store.append(key, [*plan.inputs, assistant])
        if draft.request.stored:
            await records.save_response(
                StoredResponse(
                    response,
                    [message_item(m) for m in plan.inputs],
                    plan.session,
                    draft.output_id if plan.session is not None else None,
                )
            )
        return response
