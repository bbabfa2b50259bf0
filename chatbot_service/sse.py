"""Reading an OpenAI Chat Completions event stream as it arrives, and telling a complete one from one
that ended badly. Pure: no I/O.

A stream is complete when every choice it started has a ``finish_reason`` and ``[DONE]`` came. Anything
else (a cut, a malformed ``data:`` line, an error event, JSON where events were expected) raises an
``UpstreamError``, so a caller relays one well-formed error instead of storing half a reply. The parser
takes the body's bytes as they come and hands back whole events with their frames, so a relay forwards
the upstream's own bytes, an event at a time, never a fragment.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from chatbot_service.errors import UpstreamError

KEEPALIVE = b": keep-alive\n\n"


@dataclass(frozen=True, slots=True)
class StreamEvent:
    """One complete event: its SSE frame (to forward as is), the chunk it holds (None: ``[DONE]``), the
    text it adds to the first choice, the usage block it carries (the last chunk, when asked for) and the
    finish reason it gives, if any."""

    frame: bytes
    chunk: dict[str, Any] | None
    text: str = ""
    usage: dict[str, Any] | None = None
    finish: str | None = None


def _malformed(what: str) -> UpstreamError:
    return UpstreamError(502, "upstream_bad_response", f"the model API sent a malformed stream: {what}")


class CompletionStream:
    """Feed it the body as it arrives; it returns the events each piece completes."""

    def __init__(self) -> None:
        self._pending = b""
        self._started: set[int] = set()
        self._finished: set[int] = set()
        self.done = False

    def feed(self, data: bytes) -> list[StreamEvent]:
        buffer = self._pending + data if self._pending else data
        if b"\r" in buffer:  # CRLF or CR line ends: rare, so normalised here rather than per line
            held = buffer.endswith(b"\r")  # its \n may be in the next piece
            buffer = buffer[:-1] if held else buffer
            buffer = buffer.replace(b"\r\n", b"\n").replace(b"\r", b"\n") + (b"\r" if held else b"")
        frames = buffer.split(b"\n\n")
        self._pending = frames.pop()
        events = []
        for frame in frames:
            event = self._frame(frame)
            if event is not None:
                events.append(event)
        return events

    def finish(self) -> list[StreamEvent]:
        """At the end of the body: the last event if it lacked its blank line; raise unless the reply is
        whole."""
        rest, self._pending = self._pending.rstrip(b"\r\n"), b""
        events = [] if not rest.strip() else [e for e in (self._frame(rest),) if e is not None]
        if not self.done or not self._started or self._started - self._finished:
            raise UpstreamError(
                502,
                "upstream_incomplete",
                "the model API's stream ended before the reply was complete (no finish reason or no [DONE])",
            )
        return events

    def _frame(self, frame: bytes) -> StreamEvent | None:
        if frame.startswith(b"data: ") and b"\n" not in frame:  # what OpenAI sends
            return self._event(frame[6:], frame + b"\n\n")
        data = []
        for line in frame.strip(b"\n").split(b"\n"):
            if line.startswith(b":"):
                continue  # a comment (the upstream's own keep-alive)
            field, _, value = line.partition(b":")
            if field == b"data":
                data.append(value[1:] if value.startswith(b" ") else value)
            # event:, id:, retry: carry nothing a completion needs
        if not data:
            return None
        return self._event(b"\n".join(data), b"".join(b"data: " + d + b"\n" for d in data) + b"\n")

    def _event(self, data: bytes, frame: bytes) -> StreamEvent:
        if self.done:
            raise _malformed("an event after [DONE]")
        if data.strip() == b"[DONE]":
            self.done = True
            return StreamEvent(frame, None)
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
        finish = None
        for choice in choices:
            if not isinstance(choice, dict) or not isinstance(choice.get("delta", {}), dict):
                raise _malformed("a choice that is not an object with a delta")
            index = choice.get("index", 0)
            self._started.add(index)
            if choice.get("finish_reason"):
                self._finished.add(index)
                finish = str(choice["finish_reason"])
        usage = chunk.get("usage")
        return StreamEvent(
            frame, chunk, delta_text(chunk), usage if isinstance(usage, dict) else None, finish
        )


def delta_text(chunk: dict[str, Any]) -> str:
    """The text the first choice of a chunk adds."""
    for choice in chunk.get("choices") or ():
        if choice.get("index", 0) == 0:
            content = (choice.get("delta") or {}).get("content")
            return content if isinstance(content, str) else ""
    return ""
