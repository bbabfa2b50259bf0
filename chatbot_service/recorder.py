"""What a request records for the metrics, and what stands in when a bot's metrics are off. Pure: no I/O.

``KUBECHAT_METRICS=off`` (``spec.observability.metrics: false``) is read once, when the app is built:
the Prometheus instruments are then never created, ``/metrics`` answers 404, the HTTP middleware and the
session-store timing are not installed, and ``NoMetrics`` takes every record the turn logic makes and
does nothing with it. For bots whose pods nobody scrapes: the operator's ``status.usage`` reads the
pods' ``/metrics``, so such a bot's usage in its status does not grow.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Protocol

from chatbot_service.settings import SettingsError

if TYPE_CHECKING:
    from chatbot_service.errors import ChatError
    from chatbot_service.prices import PriceTable

ENV = "KUBECHAT_METRICS"
_ON, _OFF = ("on", "true", "1", "yes"), ("off", "false", "0", "no")


def metrics_on(env: Mapping[str, str]) -> bool:
    """``KUBECHAT_METRICS``: on (the default) or off; anything else stops the start, naming the value."""
    raw = env.get(ENV, "").strip().lower()
    if not raw or raw in _ON:
        return True
    if raw in _OFF:
        return False
    raise SettingsError([f"{ENV}: must be on or off (got {raw[:40]!r})"])


class Recorder(Protocol):
    """The records the turn logic makes (``observe.Turn``, ``ChatService``, ``Compactor``, the settings
    holder, the error handlers); ``metrics.Metrics`` keeps them, ``NoMetrics`` drops them."""

    provider: str

    def record_call(
        self,
        *,
        request_model: str,
        response_model: str | None,
        seconds: float,
        input_tokens: int | None,
        output_tokens: int | None,
        error_type: str = "",
        operation: str = "chat",
    ) -> None: ...

    def record_served(
        self,
        *,
        request_model: str,
        response_model: str | None,
        seconds: float,
        first_token_seconds: float | None = None,
        output_tokens: int | None = None,
        error_type: str = "",
        operation: str = "chat",
    ) -> None: ...

    def record_upstream_error(self, code: str, status: int) -> None: ...

    def record_fit(self, route: str, truncated: bool, dropped: int) -> None: ...

    def count_refusal(self, error: ChatError) -> None: ...

    def record_usage(
        self, identity: str, model: str, prices: PriceTable, input_tokens: int, output_tokens: int
    ) -> None: ...

    def record_compaction(self, result: str) -> None: ...

    def record_reload(self, ok: bool) -> None: ...


class NoMetrics:
    """A bot with its metrics off: every record is dropped at once (nothing counted, costed or kept)."""

    provider = "openai"  # the spans' gen_ai.provider.name still reads it (``ChatService`` sets it)

    def _drop(self, *_: object, **__: object) -> None:
        return None

    record_call = record_served = record_upstream_error = record_fit = _drop
    count_refusal = record_usage = record_compaction = record_reload = _drop
