"""Headers that belong to the caller of a request (OpenAI's ``x-ratelimit-*``), added to whatever
response the route returns. Edge: a pure ASGI middleware, so routes that return ``Response`` objects
(streams, pass-through bodies) get them too."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send


class CallerHeaders:
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
