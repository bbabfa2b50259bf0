"""Sessions in Redis, shared by every replica of a bot. Edge: network I/O.

Each session is a Redis list of JSON messages (with their token counts) under
``kubechat:<bot>:session:<id>``, trimmed to the newest ``max_messages`` and expiring after
``idle_ttl`` without use. A turn holds a Redis lock on its session (``SET NX PX`` with a token,
released only by its owner), so two turns on one session never interleave even on two replicas; a
replica that dies mid-turn frees the session when the lock's TTL runs out. Redis being down is an
error the client sees (503), never a silent fall-back to memory that would split conversations.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from urllib.parse import urlsplit

import redis.asyncio as redis
from redis.exceptions import LockError, RedisError

from chatbot_service.conversation import Message, identified
from chatbot_service.errors import ChatError, SessionStoreUnavailable


class SessionBusy(ChatError):
    status = 409
    type = "invalid_request_error"
    code = "session_busy"


def describe_url(url: str) -> str:
    """Where Redis is, without credentials: ``redis://host:port/db``."""
    parts = urlsplit(url)
    host = parts.hostname or "localhost"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


class RedisStore:
    def __init__(
        self, url: str, *, namespace: str, idle_ttl: float, max_messages: int, lock_ttl: float
    ) -> None:
        self.where = describe_url(url)
        self.client = redis.Redis.from_url(
            url, socket_timeout=5, socket_connect_timeout=2, health_check_interval=15, retry_on_timeout=False
        )
        self.prefix = f"kubechat:{namespace}:"
        self.idle_ttl_ms = int(idle_ttl * 1000)
        self.max_messages = max_messages
        self.lock_ttl = lock_ttl

    def _key(self, session_id: str) -> str:
        return f"{self.prefix}session:{session_id}"

    def _unavailable(self, exc: RedisError) -> SessionStoreUnavailable:
        return SessionStoreUnavailable(
            f"the session store (Redis at {self.where}) is unavailable ({type(exc).__name__}); "
            "conversations are kept, try again shortly"
        )

    async def history(self, session_id: str) -> Sequence[Message] | None:
        try:
            async with self.client.pipeline(transaction=False) as pipe:
                pipe.lrange(self._key(session_id), 0, -1)
                pipe.pexpire(self._key(session_id), self.idle_ttl_ms)
                raw, _ = await pipe.execute()
        except RedisError as exc:
            raise self._unavailable(exc) from None
        if not raw:
            return None
        return [_decode(item) for item in raw]

    async def append(self, session_id: str, messages: Sequence[Message]) -> None:
        await self._write(session_id, messages, replace=False)

    async def put(self, session_id: str, messages: Sequence[Message]) -> None:
        await self._write(session_id, messages, replace=True)

    async def _write(self, session_id: str, messages: Sequence[Message], *, replace: bool) -> None:
        """One transaction: the session is never seen half-written, by any replica."""
        key = self._key(session_id)
        try:
            async with self.client.pipeline(transaction=True) as pipe:
                if replace:
                    pipe.delete(key)
                if not messages:
                    await pipe.execute()
                    return
                pipe.rpush(key, *[_encode(m) for m in identified(messages)])
                pipe.ltrim(key, -self.max_messages, -1)
                pipe.pexpire(key, self.idle_ttl_ms)
                await pipe.execute()
        except RedisError as exc:
            raise self._unavailable(exc) from None

    async def delete(self, session_id: str) -> bool:
        try:
            return bool(await self.client.delete(self._key(session_id)))
        except RedisError as exc:
            raise self._unavailable(exc) from None

    def lock(self, session_id: str) -> AbstractAsyncContextManager[None]:
        return self._locked(session_id)

    @asynccontextmanager
    async def _locked(self, session_id: str) -> AsyncIterator[None]:
        lock = self.client.lock(
            f"{self.prefix}lock:{session_id}",
            timeout=self.lock_ttl,
            blocking_timeout=self.lock_ttl,
            thread_local=False,
        )
        try:
            acquired = await lock.acquire()
        except RedisError as exc:
            raise self._unavailable(exc) from None
        if not acquired:
            raise SessionBusy("another turn on this session is still running; try again when it has answered")
        try:
            yield
        finally:
            with contextlib.suppress(
                LockError, RedisError
            ):  # expired or Redis gone: it frees itself at its TTL
                await lock.release()

    async def check(self) -> str | None:
        try:
            await self.client.ping()
        except RedisError as exc:
            return f"session store: Redis at {self.where} is unreachable ({type(exc).__name__})"
        return None

    async def aclose(self) -> None:
        await self.client.aclose()


def _encode(message: Message) -> str:
    return json.dumps(
        {
            "r": message.role,
            "c": message.content,
            "t": message.tokens,
            "e": message.encoding,
            "i": message.id,
        },
        separators=(",", ":"),
    )


def _decode(raw: bytes) -> Message:
    item = json.loads(raw)
    return Message(item["r"], item["c"], int(item["t"]), item["e"], item.get("i", ""))
