"""Relaying an upstream event stream to one client: the one relay both streaming routes use. Edge.

The relay owns everything the stream holds (the upstream response, and for ``/chat`` the session lock)
in one exit stack, and ``RelayResponse`` closes it whatever point the client leaves at: before the
first byte, mid-reply, or after the end. A reader task pulls the upstream, so while the model is silent
the client gets SSE keep-alive comments (proxies cut idle connections; reasoning models think for a
minute), and a client that left is noticed at the next write.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from chatbot_service.errors import ChatError
from chatbot_service.guard import Ticket
from chatbot_service.observe import Turn
from chatbot_service.sse import StreamEvent
from chatbot_service.upstream import EventStream

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}

_END = object()


class Relay:
    """``events()`` yields the complete upstream events as they come, or None when it is time for a
    keep-alive; it raises ``ChatError`` when the stream ends badly. ``aclose()`` releases everything.

    Whichever route relays, the relay is where a stream is seen whole: it tells the request's ``turn``
    (metrics, spans) what happened, and settles the caller's ``ticket`` (limits) with what came."""

    def __init__(
        self,
        stream: EventStream,
        resources: contextlib.AsyncExitStack,
        keepalive: float,
        turn: Turn | None = None,
        ticket: Ticket | None = None,
    ) -> None:
        self._stream = stream
        self._resources = resources
        self._keepalive = keepalive
        self._turn = turn
        self._ticket = ticket
        self._ended = False
        self._last: dict[str, Any] | None = None  # the newest chunk: it names the model that answered
        self._usage: dict[str, Any] | None = None
        self._text: list[str] = []
        self._queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=64)
        self._reader: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._last_put = 0.0

    async def _read(self) -> None:
        queue, loop = self._queue, asyncio.get_running_loop()
        try:
            async for events in self._stream.batches():
                self._last_put = loop.time()
                if queue.full():
                    await queue.put(events)  # a slow client: the upstream waits
                else:
                    queue.put_nowait(events)
            item: Any = _END
        except ChatError as exc:
            item = exc
        self._stop_timer()
        await queue.put(item)

    def _tick(self) -> None:
        """The keep-alive timer: one timer for the whole stream, re-armed from the last upstream
        batch, instead of a timeout around every wait (an ``asyncio.timeout`` per batch cost more
        than the rest of the wait). A ``None`` in the queue is a keep-alive's turn."""
        loop = asyncio.get_running_loop()
        idle = loop.time() - self._last_put
        if idle >= self._keepalive:
            if self._queue.empty():
                self._queue.put_nowait(None)
            self._last_put, idle = loop.time(), 0.0
        self._timer = loop.call_later(self._keepalive - idle, self._tick)

    def _stop_timer(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()

    async def events(self) -> AsyncIterator[list[StreamEvent] | None]:
        """Batches of the events that arrived since the last one (a fast upstream's chunks go out in
        one write instead of one each), or None when it is time for a keep-alive."""
        if self._reader is None:
            loop = asyncio.get_running_loop()
            self._last_put = loop.time()
            self._timer = loop.call_later(self._keepalive, self._tick)
            self._reader = loop.create_task(self._read())
        queue = self._queue
        while True:
            item = await queue.get() if queue.empty() else queue.get_nowait()
            if item is None:
                yield None
                continue
            batch: list[StreamEvent] = []
            while True:
                if item is _END:
                    if batch:
                        yield batch
                    self._end(None)
                    return
                if isinstance(item, ChatError):
                    if batch:
                        yield batch
                    self._end(item)
                    raise item
                for event in item:
                    if event.chunk is not None:
                        self._observe(event)
                batch.extend(item)
                item = None
                while item is None and not queue.empty():  # no keep-alive while events flow
                    item = queue.get_nowait()
                if item is None:
                    break
            yield batch

    def _observe(self, event: StreamEvent) -> None:
        if event.text:
            self._text.append(event.text)
            if self._turn is not None:
                self._turn.first_token()
        self._last = event.chunk
        if event.usage is not None:
            self._usage = event.usage

    def _end(self, error: ChatError | None) -> None:
        self._ended = True
        if self._turn is None:
            return
        if error is not None:
            self._turn.failed(error)
            return
        self._turn.answered(self._last, self._usage)
        self._turn.served()

    async def aclose(self) -> None:
        if not self._ended:  # the client left before the end
            self._ended = True
            if self._turn is not None:
                self._turn.upstream_failed("cancelled")
                self._turn.served("cancelled")
        ticket, self._ticket = self._ticket, None
        self._stop_timer()
        try:
            reader, self._reader = self._reader, None
            if reader is not None and not reader.done():
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reader
            await self._resources.aclose()  # the session lock and the upstream first, whatever follows
        finally:
            if ticket is not None:
                await ticket.settle(self._usage, "".join(self._text))


class RelayResponse(StreamingResponse):
    """A streamed response that closes its relay however the response ends."""

    def __init__(self, relay: Relay, content: AsyncGenerator[bytes, None], headers: dict[str, str]) -> None:
        super().__init__(content, media_type="text/event-stream", headers={**SSE_HEADERS, **headers})
        self.relay = relay
        self._content = content

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with contextlib.suppress(Exception):
                await self._content.aclose()
            await self.relay.aclose()
