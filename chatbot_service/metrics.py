"""What one bot exposes at ``/metrics`` (Prometheus text format, prometheus-client).

Two families:

- The OpenTelemetry GenAI semantic conventions, v1.41.0 (``SEMCONV_VERSION``): instrument and
  attribute names turned into Prometheus names the usual way (dots become underscores, the unit ``s``
  becomes a ``_seconds`` suffix, the annotation unit ``{token}`` adds none), with the bucket
  boundaries the conventions advise. kubechat is a client of the model's API
  (``gen_ai.client.*``) and a GenAI server to its own callers (``gen_ai.server.*``: what a caller
  waits for, upstream time included).
- kubechat's own (``kubechat_*``): HTTP requests, upstream errors by kind, trimming, sessions, the
  session store, settings reloads, refusals and usage by identity.

Every label value is bounded: routes are the app's route templates, models and identities are capped
by ``Bounded`` (the rest count as ``other``), and no session id or user text is ever a label. Each app
owns its registry, so two apps in one process (tests, benchmarks) never share counters.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.metrics import MetricWrapperBase

from chatbot_service.prices import NANO_PER_USD, PriceTable

if TYPE_CHECKING:
    from chatbot_service.errors import ChatError

M = TypeVar("M", bound=MetricWrapperBase)

# `_created` series double the exposition for nothing Prometheus needs from a bot.
disable_created_metrics()  # type: ignore[no-untyped-call]

SEMCONV_VERSION = "1.41.0"
CONTENT_TYPE = CONTENT_TYPE_LATEST

# Bucket boundaries as the conventions advise them (ExplicitBucketBoundaries of each instrument).
TOKEN_BUCKETS = tuple(float(4**i) for i in range(14))  # 1, 4, 16, ... 67108864
DURATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92)
TIME_PER_OUTPUT_TOKEN_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)
TIME_TO_FIRST_TOKEN_BUCKETS = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
)  # fmt: skip
# kubechat's own latencies: HTTP requests and session-store calls are mostly sub-millisecond.
FAST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

OTHER = "other"
ANONYMOUS = "anonymous"  # the identity of callers of a bot without access control
REFUSAL_REASONS = ("unauthenticated", "forbidden", "rate_limited", "budget_exhausted", "limits_unavailable")
MAX_MODELS = 20
MAX_IDENTITIES = 100

# The GenAI attributes, as Prometheus labels.
OPERATION = "gen_ai_operation_name"
PROVIDER = "gen_ai_provider_name"
REQUEST_MODEL = "gen_ai_request_model"
RESPONSE_MODEL = "gen_ai_response_model"
TOKEN_TYPE = "gen_ai_token_type"
ERROR_TYPE = "error_type"
_GENAI = (OPERATION, PROVIDER, REQUEST_MODEL, RESPONSE_MODEL)

# Upstream failure kinds (kubechat_upstream_errors_total{kind}), from an error's code.
UPSTREAM_ERROR_KINDS = {
    "upstream_auth_failed": "auth",
    "upstream_rate_limited": "rate_limit",
    "upstream_timeout": "timeout",
    "upstream_unreachable": "unreachable",
}


class Bounded:
    """Keeps at most ``limit`` distinct values of a label; later new values become ``other``.

    Bounds the time series a client or an upstream can create: a model name comes from the upstream's
    answer and an identity from a credential, both outside this process's control.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, value: str) -> str:
        if value in self._seen:
            return value
        with self._lock:
            if len(self._seen) < self.limit:
                self._seen.add(value)
                return value
        return OTHER


def upstream_error_kind(code: str, status: int) -> str:
    """auth, rate_limit, timeout, unreachable, client (the upstream refused the request) or server."""
    kind = UPSTREAM_ERROR_KINDS.get(code)
    if kind:
        return kind
    return "client" if 400 <= status < 500 else "server"


class Metrics:
    """The instruments of one bot, registered in a registry of its own."""

    def __init__(self, provider: str = "openai") -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._children: dict[tuple[MetricWrapperBase, tuple[str, ...]], MetricWrapperBase] = {}
        self.provider = provider
        self.models = Bounded(MAX_MODELS)
        self.identities = Bounded(MAX_IDENTITIES)
        r = self.registry
        # process_resident_memory_bytes (against the pod's limit), CPU seconds, open fds, start time.
        ProcessCollector(registry=r)
        self.token_usage = Histogram(
            "gen_ai_client_token_usage",
            "Number of input and output tokens used (GenAI semantic conventions).",
            [*_GENAI, TOKEN_TYPE],
            buckets=TOKEN_BUCKETS,
            registry=r,
        )
        self.operation_duration = Histogram(
            "gen_ai_client_operation_duration_seconds",
            "Duration of each call to the model's API (GenAI semantic conventions).",
            [*_GENAI, ERROR_TYPE],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.request_duration = Histogram(
            "gen_ai_server_request_duration_seconds",
            "Time to the last byte of each GenAI request this bot served (GenAI semantic conventions).",
            [*_GENAI, ERROR_TYPE],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.time_to_first_token = Histogram(
            "gen_ai_server_time_to_first_token_seconds",
            "Time to the first token of each successful streamed reply (GenAI semantic conventions).",
            list(_GENAI),
            buckets=TIME_TO_FIRST_TOKEN_BUCKETS,
            registry=r,
        )
        self.time_per_output_token = Histogram(
            "gen_ai_server_time_per_output_token_seconds",
            "Time per output token after the first, for successful streamed replies "
            "(GenAI semantic conventions).",
            list(_GENAI),
            buckets=TIME_PER_OUTPUT_TOKEN_BUCKETS,
            registry=r,
        )
        self.http_requests = Counter(
            "kubechat_http_requests",
            "HTTP requests served, by route template, method and status class.",
            ["route", "method", "status_class"],
            registry=r,
        )
        self.http_duration = Histogram(
            "kubechat_http_request_duration_seconds",
            "Time to the last byte of each HTTP request, by route template.",
            ["route"],
            buckets=(*FAST_BUCKETS, 20.0, 40.0, 80.0),
            registry=r,
        )
        self.upstream_errors = Counter(
            "kubechat_upstream_errors",
            "Failed calls to the model API by kind: auth, rate_limit, timeout, unreachable, client, server.",
            ["kind"],
            registry=r,
        )
        self.trimmed = Counter(
            "kubechat_trimmed_requests",
            "Requests whose history was trimmed to fit the model's context window.",
            ["route"],
            registry=r,
        )
        self.dropped_messages = Counter(
            "kubechat_dropped_messages",
            "Messages left out of requests to fit the model's context window.",
            ["route"],
            registry=r,
        )
        self.active_sessions = Gauge(
            "kubechat_active_sessions",
            "Conversations held by this pod's session store (0 for a shared store: see Redis itself).",
            registry=r,
        )
        self.store_errors = Counter(
            "kubechat_session_store_errors",
            "Failed session-store calls, by store and operation.",
            ["store", "operation"],
            registry=r,
        )
        self.store_duration = Histogram(
            "kubechat_session_store_duration_seconds",
            "Duration of session-store calls, by store and operation.",
            ["store", "operation"],
            buckets=FAST_BUCKETS,
            registry=r,
        )
        self.settings_reloads = Counter(
            "kubechat_settings_reloads",
            "Settings reloads, by result (ok or failed).",
            ["result"],
            registry=r,
        )
        self.refusals = Counter(
            "kubechat_refusals",
            "Requests refused before the model was called, by reason.",
            ["reason"],
            registry=r,
        )
        self.identity_tokens = Counter(
            "kubechat_identity_tokens",
            "Tokens used, by caller identity (capped: the rest count as 'other') and token type.",
            ["identity", TOKEN_TYPE],
            registry=r,
        )
        self.identity_cost = Counter(
            "kubechat_identity_cost_usd",
            "Estimated cost in US dollars, by caller identity (capped: the rest count as 'other').",
            ["identity"],
            registry=r,
        )
        self.compactions = Counter(
            "kubechat_compactions",
            "Histories compacted (older turns replaced by a summary from the bot's model), by result; "
            "failed ones, and those the caller's limits refused, were trimmed instead.",
            ["result"],
            registry=r,
        )
        # Series that exist from the start read as 0 instead of "no data" on dashboards and alerts.
        for result in ("ok", "failed"):
            self.settings_reloads.labels(result)
        for result in ("ok", "failed", "refused"):
            self.compactions.labels(result)
        for reason in REFUSAL_REASONS:
            self._child(self.refusals, reason)

    # -- GenAI -----------------------------------------------------------------------------

    def _genai(self, request_model: str, response_model: str | None, operation: str) -> tuple[str, ...]:
        return (
            operation,
            self.provider,
            self.models(request_model),
            self.models(response_model) if response_model else "",
        )

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
    ) -> None:
        """One call to the model's API: its duration and, when known, the tokens it used."""
        labels = self._genai(request_model, response_model, operation)
        self._child(self.operation_duration, *labels, error_type).observe(seconds)
        if input_tokens is not None:
            self._child(self.token_usage, *labels, "input").observe(input_tokens)
        if output_tokens is not None:
            self._child(self.token_usage, *labels, "output").observe(output_tokens)

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
    ) -> None:
        """One GenAI request this bot answered (or failed): time to last byte and, for successful
        streams, time to first token and per output token after it."""
        labels = self._genai(request_model, response_model, operation)
        self._child(self.request_duration, *labels, error_type).observe(seconds)
        if error_type or first_token_seconds is None:
            return
        self._child(self.time_to_first_token, *labels).observe(first_token_seconds)
        if output_tokens and output_tokens > 1:
            per_token = (seconds - first_token_seconds) / (output_tokens - 1)
            self._child(self.time_per_output_token, *labels).observe(max(per_token, 0.0))

    # -- kubechat's own ----------------------------------------------------------------------

    def record_http(self, route: str, method: str, status: int, seconds: float) -> None:
        self._child(self.http_requests, route, method, f"{status // 100}xx").inc()
        self._child(self.http_duration, route).observe(seconds)

    def _child(self, metric: M, *labels: str) -> M:
        """``metric.labels(*labels)``, looked up once: ``labels()`` validates and takes a lock on every
        call, several times per request. Bounded as the label values are (route templates, status
        classes, ``Bounded`` models and identities); no child is ever removed."""
        key = (metric, labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child  # type: ignore[return-value]

    def record_upstream_error(self, code: str, status: int) -> None:
        self._child(self.upstream_errors, upstream_error_kind(code, status)).inc()

    def record_fit(self, route: str, truncated: bool, dropped: int) -> None:
        if truncated:
            self._child(self.trimmed, route).inc()
        if dropped:
            self._child(self.dropped_messages, route).inc(dropped)

    def count_refusal(self, error: ChatError) -> None:
        """An error access control raised names its reason (``ChatError.refusal``)."""
        if error.refusal:
            self._child(self.refusals, error.refusal).inc()

    def record_usage(
        self, identity: str, model: str, prices: PriceTable, input_tokens: int, output_tokens: int
    ) -> None:
        """Tokens and their cost (costed here: with metrics off nothing is costed per request)."""
        who = self.identities(identity)
        self._child(self.identity_tokens, who, "input").inc(input_tokens)
        self._child(self.identity_tokens, who, "output").inc(output_tokens)
        cost = prices.cost(model, input_tokens, output_tokens) / NANO_PER_USD
        self._child(self.identity_cost, who).inc(cost)

    def record_compaction(self, result: str) -> None:
        self._child(self.compactions, result).inc()

    def record_reload(self, ok: bool) -> None:
        self._child(self.settings_reloads, "ok" if ok else "failed").inc()

    def count_sessions(self, count: Callable[[], int]) -> None:
        """Report the store's session count whenever Prometheus scrapes."""
        self.active_sessions.set_function(lambda: float(count()))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
