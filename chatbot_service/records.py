"""Stored responses and conversations, in the bot's one session store. Edge: store I/O only.

``/chat`` sessions, conversations and response chains are one stored thing seen through three APIs:
a conversation IS a session (its id is the session id, its items are the session's messages, each
with its id), and a response chain is a session too (``conv_<hex>`` when the first response of a
chain named no conversation). Beside them the store keeps small records, each a session of one
message holding JSON, under keys no client session id can take (they contain ``:``):

- ``response:<id>``: the response object as returned, its input items, the session it extended and
  the id of its output message there (what ``previous_response_id`` continues from);
- ``conversation:<id>``: a conversation's ``created_at`` and ``metadata``.

Everything is keyed under the caller's identity (``Caller.session_key``), bounded in bytes by the
memory store like any session, and expires after the same idle TTL, on every replica alike.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from chatbot_service.conversation import Message
from chatbot_service.guard import Caller
from chatbot_service.sessions import SessionStore

#: The role of a record's one message (never sent to a model: records are not conversations).
RECORD_ROLE = "kubechat.record"


@dataclass(frozen=True)
class StoredResponse:
    response: dict[str, Any]
    input_items: list[dict[str, Any]]
    #: The session this response extended, and its output message there (None: not kept).
    session: str | None
    last_item: str | None


class Records:
    """One caller's responses and conversations in ``store``."""

    def __init__(self, store: SessionStore, caller: Caller) -> None:
        self.store = store
        self.caller = caller

    def session_key(self, session_id: str) -> str:
        return self.caller.session_key(session_id)

    def _response_key(self, response_id: str) -> str:
        return self.caller.session_key(f"response:{response_id}")

    def _meta_key(self, conversation_id: str) -> str:
        return self.caller.session_key(f"conversation:{conversation_id}")

    async def _read(self, key: str) -> dict[str, Any] | None:
        found = await self.store.history(key)
        if not found or found[0].role != RECORD_ROLE:
            return None
        value: dict[str, Any] = json.loads(found[0].content)
        return value

    async def _write(self, key: str, value: dict[str, Any]) -> None:
        content = json.dumps(value, separators=(",", ":"))
        await self.store.put(key, [Message(RECORD_ROLE, content, 0, "", "record")])

    # -- responses ---------------------------------------------------------------------------

    async def response(self, response_id: str) -> StoredResponse | None:
        value = await self._read(self._response_key(response_id))
        if value is None:
            return None
        return StoredResponse(value["response"], value["input"], value.get("session"), value.get("last"))

    async def save_response(self, stored: StoredResponse) -> None:
        await self._write(
            self._response_key(stored.response["id"]),
            {
                "response": stored.response,
                "input": stored.input_items,
                "session": stored.session,
                "last": stored.last_item,
            },
        )

    async def delete_response(self, response_id: str) -> bool:
        return await self.store.delete(self._response_key(response_id))

    # -- conversations -----------------------------------------------------------------------

    async def items(self, conversation_id: str) -> Sequence[Message] | None:
        """The conversation's messages, oldest first (None: no such session)."""
        return await self.store.history(self.session_key(conversation_id))

    async def conversation(self, conversation_id: str) -> dict[str, Any] | None:
        """The conversation object; a ``/chat`` session seen here for the first time is adopted (its
        ``created_at`` is then)."""
        meta = await self._read(self._meta_key(conversation_id))
        if meta is None:
            if await self.items(conversation_id) is None:
                return None
            meta = await self.save_conversation(conversation_id, {})
        return conversation_object(conversation_id, meta)

    async def save_conversation(
        self, conversation_id: str, metadata: dict[str, str], created_at: int | None = None
    ) -> dict[str, Any]:
        meta = {"created_at": int(time.time()) if created_at is None else created_at, "metadata": metadata}
        await self._write(self._meta_key(conversation_id), meta)
        return meta

    async def delete_conversation(self, conversation_id: str) -> bool:
        had_items = await self.store.delete(self.session_key(conversation_id))
        had_meta = await self.store.delete(self._meta_key(conversation_id))
        return had_items or had_meta


def conversation_object(conversation_id: str, meta: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": conversation_id,
        "object": "conversation",
        "created_at": meta["created_at"],
        "metadata": meta["metadata"],
    }
