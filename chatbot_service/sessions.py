"""Where conversations live between turns. Edge: the store interface and the in-memory store.

A store keeps each session's messages with their token counts, and gives a per-session lock so
two turns on one session run one after the other: each turn reads the history, calls the model
and appends both messages while holding it, so no turn is half-recorded or interleaved.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from chatbot_service.conversation import Message, identified
from chatbot_service.settings import Settings

if TYPE_CHECKING:
    from chatbot_service.metrics import Metrics
    from chatbot_service.redis_store import RedisStore

T = TypeVar("T")


class SessionStore(Protocol):
    """What the chat service needs from any store (in this process, or Redis shared by replicas)."""

    async def history(self, session_id: str) -> Sequence[Message] | None:
        """The session's messages, oldest first; None if there is no such session."""

    async def append(self, session_id: str, messages: Sequence[Message]) -> None:
        """Add messages at the end, creating the session if needed; a message without an id gets one."""

    async def put(self, session_id: str, messages: Sequence[Message]) -> None:
        """Replace the session's messages whole (none: forget it), within the same bounds as ``append``:
        an item deleted from a conversation, a chain forked, a record rewritten, history compacted."""

    async def delete(self, session_id: str) -> bool:
        """Forget a session; False if there was none."""

    def lock(self, session_id: str) -> AbstractAsyncContextManager[None]:
        """An async context manager held for a whole turn."""

    async def check(self) -> str | None:
        """None when the store works; otherwise what is wrong (for ``/readyz``, no secrets)."""

    async def aclose(self) -> None:
        """Release connections."""


@dataclass
class _Session:
    messages: list[Message] = field(default_factory=list)
    last_used: float = 0.0
    size: int = 0  # bytes, as ``stored_size`` counts them


#: What a stored message costs besides its text: the Message object and its slot in the list (role
#: and encoding names are shared strings).
MESSAGE_OVERHEAD = sys.getsizeof(Message("user", "", 0, "o200k_base")) + 8
#: What a session costs besides its messages: its record, list, key and slot in the LRU map.
SESSION_OVERHEAD = 512


def stored_size(message: Message) -> int:
    """Bytes a stored message holds, as Python stores it: ``getsizeof`` of the text counts 1, 2 or 4
    bytes a character (one emoji makes the whole string 4 bytes a character), plus the object."""
    named = sys.getsizeof(message.id) if message.id else 0
    return sys.getsizeof(message.content) + MESSAGE_OVERHEAD + named


class MemoryStore:
    """Sessions in this process, bounded in bytes (all sessions together, and each one), in count, in
    messages per session and by an idle TTL. Past a bound the least recently used sessions go first,
    and within a session the oldest messages (they were already beyond what a request can carry)."""

    def __init__(
        self,
        *,
        max_sessions: int,
        idle_ttl: float,
        max_messages: int,
        max_bytes: int = 1 << 62,
        max_session_bytes: int = 1 << 62,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_sessions = max_sessions
        self.idle_ttl = idle_ttl
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.max_session_bytes = max_session_bytes
        self._clock = clock
        self._sessions: OrderedDict[str, _Session] = OrderedDict()
        self._locks: dict[str, _RefLock] = {}
        self.size = 0  # bytes held by every session

    def __len__(self) -> int:
        return len(self._sessions)

    def _drop(self, session_id: str) -> bool:
        session = self._sessions.pop(session_id, None)
        if session is None:
            return False
        self.size -= session.size
        return True

    def _live(self, session_id: str) -> _Session | None:
        session = self._sessions.get(session_id)
        if session is None:
            return None
        now = self._clock()
        if now - session.last_used > self.idle_ttl:
            self._drop(session_id)
            return None
        session.last_used = now
        self._sessions.move_to_end(session_id)
        return session

    def _evict(self) -> None:
        now = self._clock()
        while self._sessions:
            oldest_id, oldest = next(iter(self._sessions.items()))
            if (
                len(self._sessions) <= self.max_sessions
                and self.size <= self.max_bytes
                and now - oldest.last_used <= self.idle_ttl
            ):
                break
            self._drop(oldest_id)

    async def history(self, session_id: str) -> Sequence[Message] | None:
        session = self._live(session_id)
        return None if session is None else session.messages

    async def append(self, session_id: str, messages: Sequence[Message]) -> None:
        messages = identified(messages)
        session = self._live(session_id)
        if session is None:
            session = self._sessions[session_id] = _Session(last_used=self._clock(), size=SESSION_OVERHEAD)
            self.size += SESSION_OVERHEAD
        session.messages.extend(messages)
        added = sum(stored_size(m) for m in messages)
        session.size += added
        self.size += added
        limit = min(self.max_session_bytes, self.max_bytes)
        drop = 0
        freed = 0
        kept = len(session.messages)
        while kept - drop > 1 and (kept - drop > self.max_messages or session.size - freed > limit):
            freed += stored_size(session.messages[drop])
            drop += 1
        if drop:
            del session.messages[:drop]
            session.size -= freed
            self.size -= freed
        self._evict()

    async def put(self, session_id: str, messages: Sequence[Message]) -> None:
        self._drop(session_id)
        if messages:
            await self.append(session_id, messages)

    async def delete(self, session_id: str) -> bool:
        return self._drop(session_id)

    async def check(self) -> str | None:
        return None

    async def aclose(self) -> None:
        return None

    def lock(self, session_id: str) -> _RefLock:
        lock = self._locks.get(session_id)
        if lock is None:
            lock = self._locks[session_id] = _RefLock(lambda: self._locks.pop(session_id, None))
        return lock


class _RefLock(AbstractAsyncContextManager[None]):
    """An asyncio lock that removes itself from the registry when nobody holds or waits for it."""

    def __init__(self, on_idle: Callable[[], object]) -> None:
        self._lock = asyncio.Lock()
        self._users = 0
        self._on_idle = on_idle

    async def __aenter__(self) -> None:
        self._users += 1
        try:
            await self._lock.acquire()
        except BaseException:
            self._release_user()
            raise

    async def __aexit__(self, *exc: object) -> None:
        self._lock.release()
        self._release_user()

    def _release_user(self) -> None:
        self._users -= 1
        if self._users == 0:
            self._on_idle()


class TimedStore:
    """A store whose calls are timed and whose failures are counted (``kubechat_session_store_*``)."""

    def __init__(self, store: SessionStore, kind: str, metrics: Metrics) -> None:
        self.store = store
        self._duration = {
            op: metrics.store_duration.labels(kind, op)
            for op in ("history", "append", "put", "delete", "lock")
        }
        self._errors = {op: metrics.store_errors.labels(kind, op) for op in self._duration}

    async def _timed(self, op: str, call: Awaitable[T]) -> T:
        start = time.perf_counter()
        try:
            return await call
        except Exception:
            self._errors[op].inc()
            raise
        finally:
            self._duration[op].observe(time.perf_counter() - start)

    async def history(self, session_id: str) -> Sequence[Message] | None:
        return await self._timed("history", self.store.history(session_id))

    async def append(self, session_id: str, messages: Sequence[Message]) -> None:
        await self._timed("append", self.store.append(session_id, messages))

    async def put(self, session_id: str, messages: Sequence[Message]) -> None:
        await self._timed("put", self.store.put(session_id, messages))

    async def delete(self, session_id: str) -> bool:
        return await self._timed("delete", self.store.delete(session_id))

    def lock(self, session_id: str) -> AbstractAsyncContextManager[None]:
        return _TimedLock(self.store.lock(session_id), self)

    async def check(self) -> str | None:
        return await self.store.check()

    async def aclose(self) -> None:
        await self.store.aclose()


class _TimedLock(AbstractAsyncContextManager[None]):
    """Times how long taking a session's lock took (waiting for another turn on it included)."""

    def __init__(self, lock: AbstractAsyncContextManager[None], store: TimedStore) -> None:
        self._lock = lock
        self._store = store

    async def __aenter__(self) -> None:
        await self._store._timed("lock", self._lock.__aenter__())

    async def __aexit__(self, *exc: Any) -> bool | None:
        return await self._lock.__aexit__(*exc)


class Stores:
    """The store the current settings ask for, made on first use and kept while they ask for the same.

    Settings can arrive late (App Configuration loads in the background), so the store is not chosen
    at start: a bot configured for Redis never serves from memory, not even for a moment. The memory
    store follows changed limits in place, keeping its sessions.
    """

    def __init__(self, memory_budget: int = 1 << 62, metrics: Metrics | None = None) -> None:
        #: Bytes the memory store may hold when the settings do not say (derived from the pod's limit).
        self.memory_budget = memory_budget
        self._key: tuple[object, ...] | None = None
        self._store: SessionStore | None = None
        self._memory: MemoryStore | None = None
        self._timed_memory: SessionStore | None = None
        self._redis: RedisStore | None = None
        self._retired: list[SessionStore] = []
        self._metrics = metrics
        if metrics is not None:
            metrics.count_sessions(lambda: len(self._memory) if self._memory is not None else 0)

    def _timed(self, store: SessionStore, kind: str) -> SessionStore:
        return store if self._metrics is None else TimedStore(store, kind, self._metrics)

    def get(self, settings: Settings) -> SessionStore:
        if settings.session_store == "memory":
            if self._memory is None:
                self._memory = MemoryStore(
                    max_sessions=settings.session_max_count,
                    idle_ttl=settings.session_idle_ttl,
                    max_messages=settings.session_max_messages,
                )
                self._timed_memory = self._timed(self._memory, "memory")
            memory = self._memory
            memory.max_sessions, memory.idle_ttl = settings.session_max_count, settings.session_idle_ttl
            memory.max_messages = settings.session_max_messages
            memory.max_bytes = settings.session_store_bytes or self.memory_budget
            memory.max_session_bytes = settings.session_max_bytes
            assert self._timed_memory is not None
            return self._timed_memory
        key = (
            settings.redis_url,
            settings.bot_name,
            settings.session_idle_ttl,
            settings.session_max_messages,
            settings.lock_ttl,
        )
        if self._store is None or key != self._key:
            from chatbot_service.redis_store import RedisStore

            if self._store is not None:
                self._retired.append(self._store)  # closed at shutdown: turns in flight may still use it
            assert settings.redis_url is not None
            self._redis = RedisStore(
                settings.redis_url.reveal(),
                namespace=settings.bot_name,
                idle_ttl=settings.session_idle_ttl,
                max_messages=settings.session_max_messages,
                lock_ttl=settings.lock_ttl,
            )
            self._store = self._timed(self._redis, "redis")
            self._key = key
        return self._store

    def redis(self, settings: Settings) -> RedisStore:
        """The Redis store itself, for what shares its connection and key prefix (the limit counters)."""
        self.get(settings)
        assert self._redis is not None, "the settings do not ask for Redis"
        return self._redis

    async def aclose(self) -> None:
        for store in [*self._retired, *([self._store] if self._store else [])]:
            await store.aclose()
