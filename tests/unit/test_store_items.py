"""What the Conversations and Responses APIs add to the memory store: every stored message gets an id,
and ``put`` rewrites a session whole within the same byte bounds as ``append``."""

from __future__ import annotations

import asyncio

from chatbot_service.conversation import Message
from chatbot_service.sessions import SESSION_OVERHEAD, MemoryStore, stored_size


def m(text: str, id: str = "") -> Message:
    return Message("user", text, 1, "test", id)


def test_stored_messages_get_ids_and_keep_given_ones() -> None:
    async def scenario() -> None:
        store = MemoryStore(max_sessions=10, idle_ttl=100, max_messages=10)
        await store.append("a", [m("1"), m("2", "msg_given")])
        stored = await store.history("a")
        assert stored is not None
        assert stored[0].id.startswith("msg_") and stored[1].id == "msg_given"
        assert store.size == SESSION_OVERHEAD + sum(stored_size(x) for x in stored)

    asyncio.run(scenario())


def test_put_replaces_a_session_and_keeps_the_byte_count_true() -> None:
    async def scenario() -> None:
        store = MemoryStore(max_sessions=10, idle_ttl=100, max_messages=10, max_session_bytes=1 << 20)
        await store.append("a", [m("x" * 1000) for _ in range(5)])
        await store.append("b", [m("b")])
        kept = [m("short", "msg_1")]
        await store.put("a", kept)
        assert await store.history("a") == kept
        others = await store.history("b")
        assert others is not None
        expected = 2 * SESSION_OVERHEAD + stored_size(kept[0]) + stored_size(others[0])
        assert store.size == expected
        await store.put("a", [])
        assert await store.history("a") is None and len(store) == 1

    asyncio.run(scenario())


def test_put_is_bounded_like_append() -> None:
    async def scenario() -> None:
        store = MemoryStore(max_sessions=10, idle_ttl=100, max_messages=3)
        await store.put("a", [m(str(i)) for i in range(5)])
        stored = await store.history("a")
        assert stored is not None and [x.content for x in stored] == ["2", "3", "4"]

    asyncio.run(scenario())
