"""The one ASGI layer that guards every route before the framework sees the request. Edge.

Six jobs, folded into one layer with one ``send`` wrapper and one pass over the request headers
(five separate middlewares cost a coroutine, a closure and a header scan each, on every request):

- HTTP metrics: every request counted and timed by its route template, refusals and failures too;
- the last guard: an exception nothing turned into an answer is logged once and answered 500;
- same origin: other sites' pages cannot use a bot through a visitor's browser (403);
- CORS, by Starlette's ``CORSMiddleware``, for requests that carry an ``Origin``;
- the body limit, counted in bytes as they arrive (a chunked body too): 413 past it;
- the caller's own headers (OpenAI's ``x-ratelimit-*``) on whatever response the route returns.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from starlette.middleware.cors import CORSMiddleware
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from chatbot_service.errors import BodyTooLarge, ChatError, CrossOriginRefused, InternalError

log = logging.getLogger("kubechat.http")

if TYPE_CHECKING:
    from chatbot_service.metrics import Metrics

METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})
_VARY = b"vary"


class Edge:
    """Metrics, last guard, same origin, CORS, body limit and caller headers, outermost first.

    The order is the one the separate layers had: a refusal or failure is counted; a foreign origin
    is refused before CORS answers (preflights too, in JSON); CORS answers preflights before any body
    is read and puts its headers on every answer, 413 included; the body is read before the route.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        metrics: Metrics | None,
        limit: int,
        allowed: frozenset[str],
        allow_methods: list[str],
        allow_headers: list[str],
        expose_headers: list[str],
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.limit = limit
        self.allowed = allowed
        # The framework's CORS, around the body-limited app. A request without ``Origin`` skips it:
        # Starlette would only add ``Vary: Origin`` to its answer, which ``_vary_origin`` does alike.
        self.cors = CORSMiddleware(
            self._limited,
            allow_origins=sorted(allowed),
            allow_methods=allow_methods,
            allow_headers=allow_headers,
            expose_headers=expose_headers,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500
        started = oversize = False
        origin = host = site = mode = None
        for name, value in scope["headers"]:
            if name == b"content-length":
                oversize = oversize or self._oversize(value)
            elif name == b"origin":
                origin = value
            elif name == b"host":
                host = value
            elif name == b"sec-fetch-site":
                site = value
            elif name == b"sec-fetch-mode":
                mode = value

        async def send_edge(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                status, started = message["status"], True
                headers = message["headers"] = list(message.get("headers", ()))
                if origin is None:
                    _vary_origin(headers)
                caller = scope.get("state", {}).get("kubechat_caller")
                if caller is not None and caller.headers:
                    headers.extend((k.lower().encode(), v.encode()) for k, v in caller.headers.items())
            await send(message)

        try:
            if self._foreign(origin, host, site, mode):
                error = CrossOriginRefused(
                    "cross-origin requests are refused; allow an origin with KUBECHAT_CORS_ORIGINS"
                )
                status = error.status
                await _answer(error, scope, receive, send)  # as before CORS: no CORS headers
            elif origin is not None:
                await self.cors(scope, receive, send_edge)
            else:
                await self._limited(scope, receive, send_edge, oversize)
        except Exception as exc:
            # Logged once with its traceback and not re-raised: the server would log it again.
            log.error(
                "unexpected %s while serving %s %s",
                type(exc).__name__,
                scope["method"],
                scope["path"],
                exc_info=exc,
            )
            if not started:
                await _answer(InternalError("internal error; see the bot's logs"), scope, receive, send)
        finally:
            # The router names the matched route in the scope; its path is the template.
            if self.metrics is not None:  # None: the bot's metrics are off (KUBECHAT_METRICS=off)
                route = getattr(scope.get("route"), "path", None) or "unmatched"
                method = scope["method"] if scope["method"] in METHODS else "other"
                self.metrics.record_http(route, method, status, time.perf_counter() - start)

    def _foreign(
        self, origin: bytes | None, host: bytes | None, site: bytes | None, mode: bytes | None
    ) -> bool:
        """A browser request from another site that ``allowed`` does not name.

        CORS alone does not stop a cross-site page: a "simple" request (a form, ``text/plain``) is
        sent and acted on, only its answer is hidden. So an ``Origin`` that is neither this bot's own
        (its ``Host``) nor allowed, or ``Sec-Fetch-Site: cross-site`` on what is not a navigation (a
        link to the chat page stays fine), is refused before any route runs.
        """
        if not origin:
            return site == b"cross-site" and mode != b"navigate"
        text = origin.decode("latin-1")
        if text == "null":
            return "null" not in self.allowed
        if text.partition("://")[2] == (host or b"").decode("latin-1"):
            return False
        return text not in self.allowed

    def _oversize(self, declared: bytes) -> bool:
        return not declared.isdigit() or int(declared) > self.limit

    async def _limited(
        self, scope: Scope, receive: Receive, send: Send, oversize: bool | None = None
    ) -> None:
        """Read the body up to ``limit`` bytes before the app runs; past it, answer 413 at once and
        close the connection (the rest is never read). The route then reads the body from memory."""
        if oversize is None:  # called by CORS, which does not pass on what the edge found
            oversize = any(self._oversize(v) for n, v in scope["headers"] if n == b"content-length")
        if oversize:
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
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        buffered: Message | None = {"type": "http.request", "body": body, "more_body": False}

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


def _vary_origin(headers: list[tuple[bytes, bytes]]) -> None:
    """Add ``Origin`` to the answer's ``Vary`` exactly as Starlette's CORS does for a request without
    ``Origin``: every ``Vary`` joined into the first one's place, ``Origin`` last."""
    found = [i for i, (name, _) in enumerate(headers) if name == _VARY]
    if not found:
        headers.append((_VARY, b"Origin"))
        return
    joined = b", ".join([*(headers[i][1] for i in found), b"Origin"])
    headers[found[0]] = (_VARY, joined)
    for i in reversed(found[1:]):
        del headers[i]


async def _answer(
    error: ChatError, scope: Scope, receive: Receive, send: Send, headers: dict[str, str] | None = None
) -> None:
    response = JSONResponse(error.body(), status_code=error.status, headers=headers)
    await response(scope, receive, send)
