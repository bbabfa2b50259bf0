"""ASGI middleware that guards every route before the framework sees the request. Edge.

The body limit counts bytes as they arrive, so a chunked body (no ``Content-Length``) is held to the
same limit as a declared one; the route then reads the body from memory.
"""

from __future__ import annotations

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from chatbot_service.errors import BodyTooLarge


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
        response = JSONResponse(error.body(), status_code=error.status, headers={"Connection": "close"})
        await response(scope, receive, send)
