"""The Responses and Conversations APIs' routes (FastAPI). Edge: HTTP only; the turn is ``responder``'s,
the storing ``records``'.

No ``from __future__ import annotations`` here: the routes are defined inside ``router()`` and their
``Annotated`` dependency is a local that FastAPI must see evaluated.
"""

from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute

from chatbot_service.api_models import SESSION_ID_PATTERN
from chatbot_service.conversation import Message, identified, item_id
from chatbot_service.errors import MessageTooLong, NotFound
from chatbot_service.guard import Caller
from chatbot_service.records import Records, conversation_object
from chatbot_service.relay import RelayResponse
from chatbot_service.responder import Responder
from chatbot_service.responses import message_item, page
from chatbot_service.responses_api import (
    ConversationCreate,
    ConversationUpdate,
    ItemsCreate,
    ResponseRequest,
    input_messages,
)
from chatbot_service.service import ChatService

Id = Annotated[str, Path(pattern=SESSION_ID_PATTERN)]
After = Annotated[str | None, Query(pattern=SESSION_ID_PATTERN)]
Limit = Annotated[int, Query(ge=1, le=100)]
Order = Annotated[Literal["asc", "desc"], Query()]


def router(
    service: ChatService, authorized: Callable[[Request], Awaitable[Caller]], route_class: type[APIRoute]
) -> APIRouter:
    """The routes, each behind ``authorized`` (the same access control as ``/v1/chat/completions``),
    their bodies read by ``route_class`` (app.py's strict JSON)."""
    responder = Responder(service)
    Authorized = Annotated[Caller, Depends(authorized)]
    api = APIRouter(tags=["openai"], route_class=route_class)

    def records(caller: Caller) -> Records:
        return responder.records(service.holder.loaded(), caller)

    def messages(items: list[dict[str, Any]]) -> list[Message]:
        settings = service.holder.require()
        encoding = service._encoding(settings)
        made = []
        for i, (role, text) in enumerate(input_messages(items, "items")):
            if len(text) > settings.max_message_chars:
                error = MessageTooLong.chars(len(text), settings.max_message_chars)
                error.param = f"items[{i}].content"
                raise error
            made.append(Message.create(encoding, role, text))
        return identified(made)

    async def conversation_or_404(store: Records, conversation_id: str) -> dict[str, Any]:
        found = await store.conversation(conversation_id)
        if found is None:
            raise NotFound(f"Conversation with id '{conversation_id}' not found.")
        return found

    @api.post("/v1/responses")
    async def create_response(request: ResponseRequest, caller: Authorized) -> Response:
        """OpenAI's Responses API over the bot's Chat Completions upstream, kept in the bot's sessions:
        ``previous_response_id`` and ``conversation`` continue from any replica."""
        if not request.stream:
            body, headers = await responder.create(request, caller)
            return JSONResponse(body, headers=headers)
        relay, frames, headers = await responder.create_stream(request, caller)
        return RelayResponse(relay, frames, headers)

    @api.get("/v1/responses/{response_id}")
    async def get_response(response_id: Id, caller: Authorized) -> dict[str, Any]:
        stored = await records(caller).response(response_id)
        if stored is None:
            raise NotFound(f"Response with id '{response_id}' not found.")
        return stored.response

    @api.delete("/v1/responses/{response_id}")
    async def delete_response(response_id: Id, caller: Authorized) -> dict[str, Any]:
        if not await records(caller).delete_response(response_id):
            raise NotFound(f"Response with id '{response_id}' not found.")
        return {"id": response_id, "object": "response", "deleted": True}

    @api.get("/v1/responses/{response_id}/input_items")
    async def input_items(
        response_id: Id, caller: Authorized, after: After = None, limit: Limit = 20, order: Order = "desc"
    ) -> dict[str, Any]:
        stored = await records(caller).response(response_id)
        if stored is None:
            raise NotFound(f"Response with id '{response_id}' not found.")
        return page(stored.input_items, after=after, limit=limit, order=order)

    @api.post("/v1/conversations")
    async def create_conversation(request: ConversationCreate, caller: Authorized) -> dict[str, Any]:
        """A conversation (a session: ``/chat`` continues it by its id), with up to 20 first items."""
        store, conversation_id = records(caller), item_id("conv")
        initial = messages(request.items or [])
        key = store.session_key(conversation_id)
        async with store.store.lock(key):
            if initial:
                await store.store.put(key, initial)
            meta = await store.save_conversation(conversation_id, request.metadata or {})
        return conversation_object(conversation_id, meta)

    @api.get("/v1/conversations/{conversation_id}")
    async def get_conversation(conversation_id: Id, caller: Authorized) -> dict[str, Any]:
        return await conversation_or_404(records(caller), conversation_id)

    @api.post("/v1/conversations/{conversation_id}")
    async def update_conversation(
        conversation_id: Id, request: ConversationUpdate, caller: Authorized
    ) -> dict[str, Any]:
        store = records(caller)
        found = await conversation_or_404(store, conversation_id)
        meta = await store.save_conversation(conversation_id, request.metadata, found["created_at"])
        return conversation_object(conversation_id, meta)

    @api.delete("/v1/conversations/{conversation_id}")
    async def delete_conversation(conversation_id: Id, caller: Authorized) -> dict[str, Any]:
        store = records(caller)
        async with store.store.lock(store.session_key(conversation_id)):
            if not await store.delete_conversation(conversation_id):
                raise NotFound(f"Conversation with id '{conversation_id}' not found.")
        return {"id": conversation_id, "object": "conversation.deleted", "deleted": True}

    @api.get("/v1/conversations/{conversation_id}/items")
    async def list_items(
        conversation_id: Id, caller: Authorized, after: After = None, limit: Limit = 20, order: Order = "desc"
    ) -> dict[str, Any]:
        store = records(caller)
        await conversation_or_404(store, conversation_id)
        items = [message_item(m) for m in await store.items(conversation_id) or []]
        return page(items, after=after, limit=limit, order=order)

    @api.post("/v1/conversations/{conversation_id}/items")
    async def add_items(conversation_id: Id, request: ItemsCreate, caller: Authorized) -> dict[str, Any]:
        store = records(caller)
        await conversation_or_404(store, conversation_id)
        added = messages(request.items)
        async with store.store.lock(store.session_key(conversation_id)):
            await store.store.append(store.session_key(conversation_id), added)
        return page([message_item(m) for m in added], after=None, limit=len(added), order="asc")

    @api.get("/v1/conversations/{conversation_id}/items/{item}")
    async def get_item(conversation_id: Id, item: Id, caller: Authorized) -> dict[str, Any]:
        store = records(caller)
        await conversation_or_404(store, conversation_id)
        for message in await store.items(conversation_id) or []:
            if message.id == item:
                return message_item(message)
        raise NotFound(f"Item with id '{item}' not found.")

    @api.delete("/v1/conversations/{conversation_id}/items/{item}")
    async def delete_item(conversation_id: Id, item: Id, caller: Authorized) -> dict[str, Any]:
        store = records(caller)
        found = await conversation_or_404(store, conversation_id)
        key = store.session_key(conversation_id)
        async with store.store.lock(key):
            history = list(await store.items(conversation_id) or [])
            kept = [m for m in history if m.id != item]
            if len(kept) == len(history):
                raise NotFound(f"Item with id '{item}' not found.")
            await store.store.put(key, kept)
        return found

    return api
