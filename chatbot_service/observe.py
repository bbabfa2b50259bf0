"""One GenAI request as the operations team sees it: its metrics and, when tracing is on, its spans.

A ``Turn`` is started when the bot is about to call the model's API and told what happened:
``first_token``, ``answered`` (the upstream call ended well), ``failed``, ``served`` (the caller got its
last byte). It records the GenAI instruments of ``metrics`` and two spans: the turn (what the caller
waited for, kind SERVER) and its upstream call (kind CLIENT), both named ``chat <model>`` with the GenAI
attributes. No prompt or reply is ever put on a span.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from chatbot_service.errors import ChatError, UpstreamError
from chatbot_service.metrics import ANONYMOUS
from chatbot_service.prices import DEFAULT_TABLE, PriceTable

if TYPE_CHECKING:
    from opentelemetry.trace import Span, Tracer

    from chatbot_service.recorder import Recorder


class Observer:
    """Starts ``Turn``s; holds the metrics (``NoMetrics`` when they are off) and the tracer (None:
    tracing is off)."""

    def __init__(self, metrics: Recorder, tracer: Tracer | None = None) -> None:
        self.metrics = metrics
        self.tracer = tracer

    def turn(
        self,
        request_model: str,
        *,
        conversation_id: str | None = None,
        trimmed: bool = False,
        dropped: int = 0,
        operation: str = "chat",
    ) -> Turn:
        return Turn(self, request_model, operation, conversation_id, trimmed, dropped)


class Turn:
    """One GenAI request being served, timed from one start."""

    __slots__ = (
        "_call_span",
        "_first",
        "_input",
        "_metrics",
        "_output",
        "_response_model",
        "_start",
        "_turn_span",
        "identity",
        "model",
        "operation",
        "prices",
    )

    def __init__(
        self,
        observer: Observer,
        request_model: str,
        operation: str,
        conversation_id: str | None,
        trimmed: bool,
        dropped: int,
    ) -> None:
        self._metrics = observer.metrics
        self.model = request_model
        self.operation = operation
        self.identity = ANONYMOUS
        self.prices: PriceTable = DEFAULT_TABLE  # the bot's own table (spec.limits.prices) when it has one
        self._start = time.perf_counter()
        self._first: float | None = None
        self._response_model: str | None = None
        self._input: int | None = None
        self._output: int | None = None
        self._turn_span: Span | None = None
        self._call_span: Span | None = None
        if observer.tracer is not None:
            self._start_spans(observer.tracer, conversation_id, trimmed, dropped)

    def _start_spans(self, tracer: Tracer, conversation_id: str | None, trimmed: bool, dropped: int) -> None:
        from opentelemetry import trace

        attributes: dict[str, Any] = {
            "gen_ai.operation.name": self.operation,
            "gen_ai.provider.name": self._metrics.provider,
            "gen_ai.request.model": self.model,
            "kubechat.trimmed": trimmed,
            "kubechat.dropped_messages": dropped,
        }
        if conversation_id:
            attributes["gen_ai.conversation.id"] = conversation_id
        name = f"{self.operation} {self.model}"
        self._turn_span = tracer.start_span(name, kind=trace.SpanKind.SERVER, attributes=attributes)
        context = trace.set_span_in_context(self._turn_span)
        self._call_span = tracer.start_span(name, context, kind=trace.SpanKind.CLIENT, attributes=attributes)

    def first_token(self) -> None:
        if self._first is None:
            self._first = time.perf_counter() - self._start

    def answered(self, body: Mapping[str, Any] | None, usage: Mapping[str, Any] | None = None) -> None:
        """The upstream call ended well; ``body`` is its reply (or last chunk) for the model's name."""
        model = (body or {}).get("model")
        self._response_model = model if isinstance(model, str) else None
        usage = usage if usage is not None else (body or {}).get("usage")
        if isinstance(usage, Mapping):
            prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
            self._input = prompt if isinstance(prompt, int) else None
            self._output = completion if isinstance(completion, int) else None
        self._metrics.record_call(
            request_model=self.model,
            response_model=self._response_model,
            seconds=time.perf_counter() - self._start,
            input_tokens=self._input,
            output_tokens=self._output,
            operation=self.operation,
        )
        tokens_in, tokens_out = self._input or 0, self._output or 0
        self._metrics.record_usage(self.identity, self.model, self.prices, tokens_in, tokens_out)
        self._end_call_span("")

    def failed(self, error: ChatError, *, upstream: bool = True) -> None:
        """The request ended in ``error``; ``upstream``: the model's API call itself failed (an
        ``UpstreamError`` also counts by kind)."""
        if upstream:
            self.upstream_failed(error.code)
            if isinstance(error, UpstreamError):
                self._metrics.record_upstream_error(error.code, error.status)
        self.served(error.code)

    def upstream_failed(self, error_type: str) -> None:
        self._metrics.record_call(
            request_model=self.model,
            response_model=None,
            seconds=time.perf_counter() - self._start,
            input_tokens=None,
            output_tokens=None,
            error_type=error_type,
            operation=self.operation,
        )
        self._end_call_span(error_type)

    def served(self, error_type: str = "") -> None:
        """The caller got its last byte (or an error)."""
        self._metrics.record_served(
            request_model=self.model,
            response_model=self._response_model,
            seconds=time.perf_counter() - self._start,
            first_token_seconds=self._first,
            output_tokens=self._output,
            error_type=error_type,
            operation=self.operation,
        )
        span, self._turn_span = self._turn_span, None
        if span is not None:
            self._end_span(span, error_type)

    def _end_call_span(self, error_type: str) -> None:
        span, self._call_span = self._call_span, None
        if span is not None:
            self._end_span(span, error_type)

    def _end_span(self, span: Span, error_type: str) -> None:
        from opentelemetry.trace import Status, StatusCode

        if self._response_model:
            span.set_attribute("gen_ai.response.model", self._response_model)
        if self._input is not None:
            span.set_attribute("gen_ai.usage.input_tokens", self._input)
        if self._output is not None:
            span.set_attribute("gen_ai.usage.output_tokens", self._output)
        if error_type:
            span.set_attribute("error.type", error_type)
            span.set_status(Status(StatusCode.ERROR, error_type))
        span.end()
