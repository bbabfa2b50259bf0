"""A local OpenAI-compatible Chat Completions server for tests and benchmarks.

It answers like the real API does on the wire: JSON completions with ``usage``, Server-Sent Events
when ``stream`` is true (with a final usage chunk when ``stream_options.include_usage``), and OpenAI's
error bodies. The reply echoes what it was sent, so tests can see the context the bot forwarded:
``"<n> messages; last: <last user message>"``. Failures are scripted per request: queue a status
(401/429/500 ...), a delay longer than the client's timeout, or a stream that breaks midway.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import tiktoken
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

_ENCODINGS = {"gpt-4": "cl100k_base", "gpt-3.5": "cl100k_base"}


def encoding_for(model: str) -> tiktoken.Encoding:
    for prefix, name in _ENCODINGS.items():
        if model.startswith(prefix) and not model.startswith(("gpt-4o", "gpt-4.1")):
            return tiktoken.get_encoding(name)
    return tiktoken.get_encoding("o200k_base")


def prompt_tokens(model: str, messages: list[dict[str, Any]]) -> int:
    """The OpenAI cookbook's count, written independently of the service's own counter."""
    enc = encoding_for(model)
    total = 3
    for message in messages:
        total += 3
        for key, value in message.items():
            total += len(enc.encode(str(value), disallowed_special=()))
            if key == "name":
                total += 1
    return total


@dataclass
class Fault:
    """What to do instead of answering the next request."""

    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    break_stream_after: int | None = None
    chunk_delay: float = 0.0
    #: Answer with these bytes (and ``content_type``) instead, with ``status`` or 200.
    body: bytes | None = None
    content_type: str = "application/json"
    #: The error body's ``param`` and ``code`` for a scripted ``status``.
    param: str | None = None
    code: str = "scripted"
    #: Stream these raw SSE bytes instead of the reply (a stream that ends badly).
    stream_body: bytes | None = None


@dataclass
class Seen:
    headers: dict[str, str]
    body: dict[str, Any]
    client: str = ""  # the peer's IP address (which pod sent it, on a real node)


class FakeOpenAI:
    def __init__(
        self, *, api_keys: set[str] | None = None, reply: str | None = None, summarizer: str | None = None
    ) -> None:
        self.api_keys = api_keys  # None: any key is accepted
        self.reply = reply
        #: A request whose system message contains this is a summary request: answered with the
        #: words holding a digit of its transcript's user and system lines (deterministic "facts").
        self.summarizer = summarizer
        self.summaries_fail = False  # answer summary requests with a 500
        self.faults: deque[Fault] = deque()
        self.requests: list[Seen] = []
        self.url = ""  # set by whoever serves it: the base URL clients use, ending in /v1
        self.keep_requests = True  # False: a load test that sends more than a test process should keep
        self.fail_always: list[Fault] = []  # once the queue is empty, these in turn, for every request
        self._served = 0
        self.streams_open = 0  # streams being sent now
        self.streams_cut = 0  # streams whose reader left before the reply was sent
        self._lock = threading.Lock()
        self.app = Starlette(routes=[Route("/v1/chat/completions", self.completions, methods=["POST"])])

    def fail_next(self, fault: Fault) -> None:
        self.faults.append(fault)

    @property
    def last(self) -> Seen:
        return self.requests[-1]

    def _error(
        self,
        status: int,
        message: str,
        code: str,
        headers: dict[str, str] | None = None,
        param: str | None = None,
    ) -> Response:
        body = {"error": {"message": message, "type": "invalid_request_error", "param": param, "code": code}}
        return JSONResponse(body, status_code=status, headers=headers)

    def is_summary_request(self, messages: list[dict[str, Any]]) -> bool:
        first = str(messages[0].get("content", "")) if messages else ""
        return (
            self.summarizer is not None and messages[0].get("role") == "system" and self.summarizer in first
        )

    def answer_for(self, messages: list[dict[str, Any]]) -> str:
        if self.is_summary_request(messages):
            role, words = "", []
            for line in str(messages[-1]["content"]).splitlines():
                head = line.split(": ", 1)[0]
                role = head if head in ("user", "assistant", "system") else role
                words += line.split() if role in ("user", "system") else []
            facts = dict.fromkeys(w for w in words if w[:1].isdigit())
            return "facts: " + " ".join(facts)
        if self.reply is not None:
            return self.reply
        last_user = next((m["content"] for m in reversed(messages) if m.get("role") == "user"), "")
        return f"{len(messages)} messages; last: {last_user}"

    async def completions(self, request: Request) -> Response:
        body = await request.json()
        with self._lock:
            peer = request.client.host if request.client else ""
            if self.keep_requests:
                self.requests.append(Seen(dict(request.headers), body, peer))
            fault = self.faults.popleft() if self.faults else None
            if fault is None and self.fail_always:
                self._served += 1
                fault = self.fail_always[self._served % len(self.fail_always)]
        if self.summaries_fail and self.is_summary_request(body.get("messages") or []):
            return self._error(500, "scripted summary failure", "scripted")
        if fault and fault.delay:
            await asyncio.sleep(fault.delay)
        if fault and fault.body is not None:
            return Response(fault.body, status_code=fault.status or 200, media_type=fault.content_type)
        if fault and fault.status:
            return self._error(
                fault.status, f"scripted failure {fault.status}", fault.code, fault.headers, fault.param
            )
        if fault and fault.stream_body is not None:
            raw = fault.stream_body

            async def scripted() -> Any:
                yield raw

            return StreamingResponse(scripted(), media_type="text/event-stream")
        key = request.headers.get("authorization", "").removeprefix("Bearer ")
        if self.api_keys is not None and key not in self.api_keys:
            return self._error(401, f"Incorrect API key provided: {key[:3]}***{key[-2:]}.", "invalid_api_key")
        model = body["model"]
        messages = body["messages"]
        answer = self.answer_for(messages)
        enc = encoding_for(model)
        usage = {
            "prompt_tokens": prompt_tokens(model, messages),
            "completion_tokens": len(enc.encode(answer, disallowed_special=())),
        }
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        created = int(time.time())
        if not body.get("stream"):
            return JSONResponse(
                {
                    "id": "chatcmpl-fake",
                    "object": "chat.completion",
                    "created": created,
                    "model": model,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": answer},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": usage,
                }
            )
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        pieces = [p + " " for p in answer.split(" ")]
        pieces[-1] = pieces[-1][:-1]
        break_after = fault.break_stream_after if fault else None
        chunk_delay = fault.chunk_delay if fault else 0.0

        async def events() -> Any:
            def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
                event = {
                    "id": "chatcmpl-fake",
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": model,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
                }
                return f"data: {json.dumps(event)}\n\n".encode()

            self.streams_open += 1
            finished = False
            try:
                yield chunk({"role": "assistant", "content": ""})
                for i, piece in enumerate(pieces):
                    if break_after is not None and i >= break_after:
                        raise ConnectionResetError("scripted break mid-stream")
                    if chunk_delay:
                        await asyncio.sleep(chunk_delay)
                    yield chunk({"content": piece})
                finished = True
            finally:
                self.streams_open -= 1
                if not finished:
                    self.streams_cut += 1
            yield chunk({}, "stop")
            if include_usage:
                final = {
                    "id": "chatcmpl-fake",
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": model,
                    "choices": [],
                    "usage": usage,
                }
                yield f"data: {json.dumps(final)}\n\n".encode()
            yield b"data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")
