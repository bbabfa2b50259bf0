"""The edge layer skips Starlette's CORS for requests without ``Origin`` only because it adds the one
thing Starlette would: ``Vary: Origin``, merged the same way. Checked against Starlette's own middleware."""

from __future__ import annotations

import asyncio

import pytest
from starlette.middleware.cors import CORSMiddleware
from starlette.types import Message, Receive, Scope, Send

from chatbot_service.middleware import _vary_origin

CASES = [
    [],
    [(b"content-type", b"application/json")],
    [(b"vary", b"Accept-Encoding"), (b"content-length", b"2")],
    [(b"vary", b"Accept"), (b"x-a", b"1"), (b"vary", b"Cookie"), (b"x-b", b"2")],
    [(b"Vary", b"Accept")],  # a name not lower-cased is not Starlette's ``vary``: kept beside it
]


def _through_starlette(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": list(headers)})

    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    async def receive() -> Message:
        return {"type": "http.request", "body": b""}

    cors = CORSMiddleware(app, allow_origins=["https://app.example"], allow_methods=["GET", "POST"])
    scope = {"type": "http", "method": "GET", "path": "/", "headers": [(b"host", b"bot")]}
    asyncio.run(cors(scope, receive, send))
    return list(sent[0]["headers"])


@pytest.mark.parametrize("headers", CASES)
def test_vary_origin_matches_starlettes_cors_without_origin(headers: list[tuple[bytes, bytes]]) -> None:
    ours = list(headers)
    _vary_origin(ours)
    assert ours == _through_starlette(headers)
