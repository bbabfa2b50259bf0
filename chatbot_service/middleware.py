"""ASGI middleware that guards every route before the framework sees the request. Edge.

The body limit counts bytes as they arrive, so a chunked body (no ``Content-Length``) is held to the
same limit as a declared one; the route then reads the body from memory. ``SameOrigin`` keeps other
sites' pages from using a bot through a visitor's browser.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from chatbot_service.errors import BodyTooLarge, ChatError, CrossOriginRefused, InternalError

log = logging.getLogger("kubechat.http")

if TYPE_CHECKING:
    from chatbot_service.metrics import Metrics


class BodyLimit:
    """Read each request body up to ``limit`` bytes before the app runs; past it, answer 413 at once
    and close the connection (the rest of the body is never read)."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length" and (not value.isdigit() or int(value) > self.limit):
                await self._refuse(scope, receive, send)
                return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client left while sending
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                await self._refuse(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        buffered: Message | None = {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        async def replay() -> Message:
            nonlocal buffered
            if buffered is not None:
                message, buffered = buffered, None
                return message
            return await receive()  # then http.disconnect, for streaming responses

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        error = BodyTooLarge(f"the request body is larger than {self.limit} bytes")
        await _answer(error, scope, receive, send, {"Connection": "close"})


class SameOrigin:
    """Refuse browser requests from other origins unless ``allowed`` names them.

    CORS alone does not stop a cross-site page: a "simple" request (a form, ``text/plain``) is sent and
    acted on, only its answer is hidden. So a request whose ``Origin`` is neither this bot's own (its
    ``Host``) nor allowed, or that a browser marks ``Sec-Fetch-Site: cross-site`` without being a
    navigation (a link to the chat page stays fine), is answered 403 before any route runs.
    """

    def __init__(self, app: ASGIApp, allowed: frozenset[str]) -> None:
        self.app = app
        self.allowed = allowed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = dict(scope["headers"])
            origin = headers.get(b"origin", b"").decode("latin-1")
            host = headers.get(b"host", b"").decode("latin-1")
            site = headers.get(b"sec-fetch-site", b"")
            mode = headers.get(b"sec-fetch-mode", b"")
            foreign = bool(origin) and origin != "null" and origin.partition("://")[2] != host
            if origin == "null" or (site == b"cross-site" and mode != b"navigate" and not origin):
                foreign = True
            if foreign and origin not in self.allowed:
                error = CrossOriginRefused(
                    "cross-origin requests are refused; allow an origin with KUBECHAT_CORS_ORIGINS"
                )
                await _answer(error, scope, receive, send)
                return
        await self.app(scope, receive, send)


class Unexpected:
    """The last guard: an exception no handler turned into an answer is logged once, with its
    traceback, at error level, and answered 500 in OpenAI's shape (without detail) if nothing was
    sent yet. It is not re-raised: the server would log it a second time."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception as exc:
            log.error(
                "unexpected %s while serving %s %s",
                type(exc).__name__,
                scope["method"],
                scope["path"],
                exc_info=exc,
            )
            if not started:
                await _answer(InternalError("internal error; see the bot's logs"), scope, receive, send)


async def _answer(
    error: ChatError, scope: Scope, receive: Receive, send: Send, headers: dict[str, str] | None = None
) -> None:
    response = JSONResponse(error.body(), status_code=error.status, headers=headers)
    await response(scope, receive, send)


class HttpMetrics:
    """Count and time every HTTP request by its route template (bounded: never the raw path)."""

    METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            # The router names the matched route in the scope; its path is the template.
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            method = scope["method"] if scope["method"] in self.METHODS else "other"
            self.metrics.record_http(route, method, status, time.perf_counter() - start)


class CallerHeaders:
    """Add the caller's own headers (OpenAI's ``x-ratelimit-*``) to whatever response the route returns,
    streams and pass-through bodies included."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                caller = scope.get("state", {}).get("kubechat_caller")
                if caller is not None and caller.headers:
                    extra = [(k.lower().encode(), v.encode()) for k, v in caller.headers.items()]
                    message["headers"] = [*message.get("headers", ()), *extra]
            await send(message)

        await self.app(scope, receive, send_with_headers)
