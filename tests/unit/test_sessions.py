from __future__ import annotations

import asyncio

from chatbot_service.conversation import Message
from chatbot_service.sessions import MemoryStore


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def m(text: str) -> Message:
    return Message("user", text, 1, "test")


def test_least_recently_used_sessions_are_evicted_first() -> None:
    async def scenario() -> None:
        store = MemoryStore(max_sessions=2, idle_ttl=100, max_messages=10)
        await store.append("a", [m("1")])
        await store.append("b", [m("2")])
        assert await store.history("a") is not None  # a is now the most recently used
        await store.append("c", [m("3")])
        assert await store.history("b") is None
        assert await store.history("a") is not None and await store.history("c") is not None
        assert len(store) == 2

    asyncio.run(scenario())


def test_idle_sessions_expire() -> None:
    async def scenario() -> None:
        clock = Clock()
        store = MemoryStore(max_sessions=10, idle_ttl=60, max_messages=10, clock=clock)
        await store.append("a", [m("1")])
        await store.append("b", [m("1")])
        clock.now = 50
        assert await store.history("a") is not None  # touched: stays
        clock.now = 70
        assert await store.history("b") is None
        assert await store.history("a") is not None
        clock.now = 200
        await store.append("c", [m("x")])  # sweeps expired sessions
        assert len(store) == 1

    asyncio.run(scenario())


def test_history_is_bounded_oldest_first() -> None:
    async def scenario() -> None:
        store = MemoryStore(max_sessions=10, idle_ttl=60, max_messages=4)
        for i in range(3):
            await store.append("a", [m(f"q{i}"), m(f"a{i}")])
        history = await store.history("a")
        assert history is not None
        assert [x.content for x in history] == ["q1", "a1", "q2", "a2"]

    asyncio.run(scenario())


def test_turns_on_one_session_are_serialized_and_locks_are_released() -> None:
    async def scenario() -> None:
        store = MemoryStore(max_sessions=10, idle_ttl=60, max_messages=100)
        order: list[str] = []

        async def turn(name: str) -> None:
            async with store.lock("s"):
                order.append(f"{name}-start")
                await asyncio.sleep(0.01)
                order.append(f"{name}-end")

        await asyncio.gather(turn("x"), turn("y"), turn("z"))
        # each turn runs start to end before the next one starts
        assert all(
            order[i].endswith("-start") and order[i + 1] == order[i].replace("start", "end")
            for i in (0, 2, 4)
        )
        assert store._locks == {}

    asyncio.run(scenario())


def test_size_counts_what_python_stores() -> None:
    from chatbot_service.sessions import MESSAGE_OVERHEAD, stored_size

    ascii_size = stored_size(m("a" * 1000))
    emoji_size = stored_size(m("a" * 999 + "\U0001f600"))  # one emoji: 4 bytes a character
    assert ascii_size - MESSAGE_OVERHEAD >= 1000
    assert emoji_size - MESSAGE_OVERHEAD >= 4000


def test_total_bytes_are_bounded_least_recently_used_first() -> None:
    async def scenario() -> None:
        store = MemoryStore(max_sessions=10_000, idle_ttl=100, max_messages=100, max_bytes=200_000)
        for i in range(40):
            await store.append(f"s{i}", [m("\U0001f600" * 2000)])  # ~8 KB each
            assert store.size <= store.max_bytes
            await store.history("s0")  # keep s0 the most recently used
        assert await store.history("s0") is not None
        assert await store.history("s1") is None  # the least recently used went first
        assert await store.history("s39") is not None
        assert 15 < len(store) < 40

    asyncio.run(scenario())


def test_one_session_is_bounded_in_bytes_oldest_messages_first() -> None:
    async def scenario() -> None:
        store = MemoryStore(
            max_sessions=10, idle_ttl=100, max_messages=1000, max_bytes=10**9, max_session_bytes=50_000
        )
        for i in range(30):
            await store.append("a", [m(f"{i:02d}" + "x" * 5000)])
        history = await store.history("a")
        assert history is not None and 5 <= len(history) < 30
        assert history[-1].content.startswith("29") and store.size <= 50_000
        assert [int(x.content[:2]) for x in history] == list(range(30 - len(history), 30))
        assert await store.delete("a") and store.size == 0

    asyncio.run(scenario())


def test_a_message_bigger_than_the_session_bound_is_still_kept_alone() -> None:
    async def scenario() -> None:
        store = MemoryStore(max_sessions=10, idle_ttl=100, max_messages=10, max_session_bytes=1000)
        await store.append("a", [m("small"), m("y" * 5000)])
        history = await store.history("a")
        assert history is not None and [x.content[:1] for x in history] == ["y"]

    asyncio.run(scenario())
