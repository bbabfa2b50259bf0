"""Responses API objects built from a Chat Completions turn, and their stream of events. Pure: no I/O.

A bot answers the Responses API by calling its upstream's Chat Completions: the reply becomes one
output ``message`` item, the upstream's usage becomes ``input_tokens``/``output_tokens`` (with what the
bot trimmed beside it), and a streamed reply becomes OpenAI's event sequence, every event numbered:
``response.created``, ``response.in_progress``, ``response.output_item.added``,
``response.content_part.added``, ``response.output_text.delta``..., ``response.output_text.done``,
``response.content_part.done``, ``response.output_item.done``, then ``response.completed`` (or
``response.incomplete`` when the reply hit its token limit), or ``error`` + ``response.failed``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from chatbot_service.conversation import Message, Prompt
from chatbot_service.errors import BadRequest, ChatError
from chatbot_service.responses_api import ResponseRequest


def content_part(role: str, text: str) -> dict[str, Any]:
    """A message's text as a content part: ``output_text`` for the assistant, ``input_text`` else."""
    if role == "assistant":
        return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
    return {"type": "input_text", "text": text}


def message_item(message: Message, status: str = "completed") -> dict[str, Any]:
    """A stored message as a Conversations/Responses ``message`` item."""
    return {
        "id": message.id,
        "type": "message",
        "status": status,
        "role": message.role,
        "content": [content_part(message.role, message.content)],
    }


def page(items: Sequence[dict[str, Any]], *, after: str | None, limit: int, order: str) -> dict[str, Any]:
    """One page of a list, as OpenAI pages them: ``data``, ``first_id``, ``last_id``, ``has_more``."""
    ordered = list(items) if order == "asc" else list(reversed(items))
    if after is not None:
        ids = [item["id"] for item in ordered]
        if after not in ids:
            raise BadRequest(f"no item {after[:80]!r} in this list", code="invalid_value", param="after")
        ordered = ordered[ids.index(after) + 1 :]
    data = ordered[:limit]
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": len(ordered) > limit,
    }


@dataclass(frozen=True)
class Draft:
    """What a response is before its reply arrives: its ids, its request, what the bot sent."""

    id: str
    output_id: str
    created_at: int
    model: str
    request: ResponseRequest
    prompt: Prompt
    conversation_id: str | None
    reply_limit: int

    def response(
        self,
        status: str,
        text: str | None = None,
        usage: Mapping[str, Any] | None = None,
        error: ChatError | None = None,
    ) -> dict[str, Any]:
        """The response object in ``status`` (``in_progress`` has no output yet)."""
        request = self.request
        output = [] if text is None else [self.output_item(text, _item_status(status))]
        fmt = request.text.format if request.text and request.text.format else None
        return {
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "background": False,
            "error": None if error is None else {"code": _error_code(error), "message": error.message},
            "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
            "instructions": request.instructions,
            "max_output_tokens": request.max_output_tokens,
            "model": self.model,
            "output": output,
            "parallel_tool_calls": False,
            "previous_response_id": request.previous_response_id,
            "conversation": {"id": self.conversation_id} if self.conversation_id else None,
            "reasoning": {"effort": None, "summary": None},
            "store": request.stored,
            "temperature": request.temperature,
            "text": {"format": fmt.model_dump(by_alias=True, exclude_none=True) if fmt else {"type": "text"}},
            "tool_choice": "none",
            "tools": [],
            "top_p": request.top_p,
            "truncation": request.truncation or "auto",
            "usage": None if usage is None else self.usage(usage),
            "user": request.user,
            "metadata": request.metadata or {},
        }

    def output_item(self, text: str, status: str = "completed") -> dict[str, Any]:
        return {
            "id": self.output_id,
            "type": "message",
            "status": status,
            "role": "assistant",
            "content": [content_part("assistant", text)],
        }

    def usage(self, upstream: Mapping[str, Any]) -> dict[str, Any]:
        """The upstream's Chat Completions usage in the Responses shape, and what the bot trimmed."""
        prompt = _int(upstream.get("prompt_tokens"), self.prompt.tokens)
        completion = _int(upstream.get("completion_tokens"), 0)
        cached = _int((upstream.get("prompt_tokens_details") or {}).get("cached_tokens"), 0)
        reasoning = _int((upstream.get("completion_tokens_details") or {}).get("reasoning_tokens"), 0)
        return {
            "input_tokens": prompt,
            "input_tokens_details": {"cached_tokens": cached},
            "output_tokens": completion,
            "output_tokens_details": {"reasoning_tokens": reasoning},
            "total_tokens": prompt + completion,
            "counted_input_tokens": self.prompt.tokens,
            "dropped_messages": self.prompt.dropped,
            "truncated": self.prompt.truncated,
        }


def _int(value: Any, default: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def _item_status(status: str) -> str:
    return {"completed": "completed", "incomplete": "incomplete"}.get(status, "in_progress")


def _error_code(error: ChatError) -> str:
    return "rate_limit_exceeded" if error.status == 429 else "server_error"


def finished_status(finish_reason: Any) -> str:
    """``length`` (the reply hit its token limit) is an incomplete response; anything else completed."""
    return "incomplete" if finish_reason == "length" else "completed"


class Events:
    """The numbered event sequence of one streamed response, as SSE frames."""

    def __init__(self, draft: Draft) -> None:
        self.draft = draft
        self.sequence = 0
        self._text: list[str] = []

    def _frame(self, kind: str, fields: Mapping[str, Any]) -> bytes:
        data = {"type": kind, **fields, "sequence_number": self.sequence}
        self.sequence += 1
        return f"event: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()

    def _at(self) -> dict[str, Any]:
        return {"item_id": self.draft.output_id, "output_index": 0, "content_index": 0}

    def opening(self) -> bytes:
        draft = self.draft
        in_progress = draft.response("in_progress")
        return b"".join(
            (
                self._frame("response.created", {"response": in_progress}),
                self._frame("response.in_progress", {"response": in_progress}),
                self._frame(
                    "response.output_item.added",
                    {"output_index": 0, "item": {**draft.output_item("", "in_progress"), "content": []}},
                ),
                self._frame(
                    "response.content_part.added", {**self._at(), "part": content_part("assistant", "")}
                ),
            )
        )

    def delta(self, text: str) -> bytes:
        self._text.append(text)
        return self._frame("response.output_text.delta", {**self._at(), "delta": text, "logprobs": []})

    @property
    def text(self) -> str:
        return "".join(self._text)

    def closing(self, response: dict[str, Any]) -> bytes:
        """After the last delta: the text, the part and the item done, then the response's end."""
        text = self.text
        item = response["output"][0]
        end = "response.incomplete" if response["status"] == "incomplete" else "response.completed"
        return b"".join(
            (
                self._frame("response.output_text.done", {**self._at(), "text": text, "logprobs": []}),
                self._frame(
                    "response.content_part.done", {**self._at(), "part": content_part("assistant", text)}
                ),
                self._frame("response.output_item.done", {"output_index": 0, "item": item}),
                self._frame(end, {"response": response}),
            )
        )

    def failed(self, error: ChatError) -> bytes:
        """The upstream failed midway: an ``error`` event, then ``response.failed`` (nothing is stored)."""
        response = self.draft.response("failed", error=error)
        return self._frame(
            "error", {"code": error.code, "message": error.message, "param": error.param}
        ) + self._frame("response.failed", {"response": response})
