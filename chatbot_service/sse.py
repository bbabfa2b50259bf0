"""Reading an OpenAI Chat Completions event stream as it arrives, and telling a complete one from one
that ended badly. Pure: no I/O.

A stream is complete when every choice it started has a ``finish_reason`` and ``[DONE]`` came. Anything
else (a cut, a malformed ``data:`` line, an error event, JSON where events were expected) raises an
``UpstreamError``, so a caller relays one well-formed error instead of storing half a reply.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from chatbot_service.errors import UpstreamError

KEEPALIVE = b": keep-alive\n\n"
DONE = b"data: [DONE]\n\n"


@dataclass(frozen=True, slots=True)
class StreamEvent:
    """One complete event: its ``data`` as sent, and the chunk it holds (None for ``[DONE]``)."""

    data: str
    chunk: dict[str, Any] | None

    def encoded(self) -> bytes:
        """The event as an SSE frame again, byte for byte what the upstream meant."""
        if "\n" not in self.data:
            return b"data: " + self.data.encode() + b"\n\n"
        return "".join(f"data: {line}\n" for line in self.data.split("\n")).encode() + b"\n"


def _malformed(what: str) -> UpstreamError:
    return UpstreamError(502, "upstream_bad_response", f"the model API sent a malformed stream: {what}")


class CompletionStream:
    """Feed it lines (without their line breaks); it returns each event once a blank line ends it."""

    def __init__(self) -> None:
        self._data: list[str] = []
        self._started: set[int] = set()
        self._finished: set[int] = set()
        self.done = False

    def feed(self, line: str) -> StreamEvent | None:
        if not line:
            if not self._data:
                return None
            data, self._data = "\n".join(self._data), []
            return self._event(data)
        if line.startswith(":"):
            return None  # a comment (the upstream's own keep-alive)
        field, _, value = line.partition(":")
        if field == "data":
            self._data.append(value[1:] if value.startswith(" ") else value)
        return None  # event:, id:, retry: carry nothing a completion needs

    def _event(self, data: str) -> StreamEvent:
        if self.done:
            raise _malformed("an event after [DONE]")
        if data.strip() == "[DONE]":
            self.done = True
            return StreamEvent(data, None)
        try:
            chunk = json.loads(data)
        except ValueError:
            raise _malformed("a data line that is not JSON") from None
        if not isinstance(chunk, dict):
            raise _malformed("an event that is not a JSON object")
        if "error" in chunk:
            error = chunk["error"] if isinstance(chunk["error"], dict) else {}
            message = str(error.get("message", "error"))[:300]
            raise UpstreamError(502, "upstream_error", f"the model API failed mid-reply: {message}")
        choices = chunk.get("choices", [])
        if not isinstance(choices, list):
            raise _malformed("'choices' is not a list")
        for choice in choices:
            if not isinstance(choice, dict) or not isinstance(choice.get("delta", {}), dict):
                raise _malformed("a choice that is not an object with a delta")
            index = choice.get("index", 0)
            self._started.add(index)
            if choice.get("finish_reason"):
                self._finished.add(index)
        return StreamEvent(data, chunk)

    def check_complete(self) -> None:
        """At the end of the upstream's body: raise unless the reply is whole."""
        if not self.done or not self._started or self._started - self._finished:
            raise UpstreamError(
                502,
                "upstream_incomplete",
                "the model API's stream ended before the reply was complete (no finish reason or no [DONE])",
            )


def delta_text(chunk: dict[str, Any]) -> str:
    """The text the first choice of a chunk adds."""
    for choice in chunk.get("choices") or ():
        if choice.get("index", 0) == 0:
            content = (choice.get("delta") or {}).get("content")
            return content if isinstance(content, str) else ""
    return ""
