"""The operator's own Prometheus metrics, served at ``--metrics-address`` (``/metrics``).

Counters and histograms are moved where things happen (a reconcile ends, an API call returns, a usage
round ends); the gauges (bots by condition, the work queue) are read from the controller when scraped,
so they cost nothing between scrapes. Every label is bounded: results, verbs, resources and reasons come
from this code and the API's ``Status.reason``, never from a bot's name.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

#: ``/api/v1/namespaces/ns/configmaps/name`` -> configmaps; ``.../chatbots/name/status`` -> chatbots/status
_RESOURCE = re.compile(r"^/apis?/(?:[^/]+/)?v[^/]+(?:/namespaces/[^/]+)?/([^/]+)(?:/[^/]+(/status)?)?")
RECONCILE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def resource_of(path: str) -> str:
    """The resource an API path names (its plural, with ``/status`` for the subresource)."""
    found = _RESOURCE.match(path)
    if found is None:
        return "other"
    return found.group(1) + (found.group(2) or "")


class OperatorMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.reconciles = Counter(
            "kubechat_operator_reconciles",
            "Reconciles by result: success, waiting (for a Secret), error (retried with backoff), "
            "unexpected (a bug, retried), gone (the namespace is being deleted).",
            ["result"],
            registry=self.registry,
        )
        self.reconcile_duration = Histogram(
            "kubechat_operator_reconcile_duration_seconds",
            "How long one reconcile of one bot took, API calls included.",
            buckets=RECONCILE_BUCKETS,
            registry=self.registry,
        )
        self.api_requests = Counter(
            "kubechat_operator_api_requests",
            "Requests to the Kubernetes API by verb, resource and HTTP status class (2xx, 4xx, 5xx, none).",
            ["verb", "resource", "code"],
            registry=self.registry,
        )
        self.api_errors = Counter(
            "kubechat_operator_api_errors",
            "Failed Kubernetes API requests by verb, resource and the Status reason (Conflict, Invalid, "
            "Forbidden, ...; Unreachable when no answer came).",
            ["verb", "resource", "reason"],
            registry=self.registry,
        )
        self.usage_rounds = Counter(
            "kubechat_operator_usage_rounds",
            "Rounds of the usage collector (status.usage) by result.",
            ["result"],
            registry=self.registry,
        )
        self.usage_scrapes = Counter(
            "kubechat_operator_usage_scrapes",
            "Reads of bots' pods' /metrics by result (ok, failed).",
            ["result"],
            registry=self.registry,
        )
        self.usage_writes = Counter(
            "kubechat_operator_usage_writes",
            "status.usage writes (one per bot whose usage changed in a round).",
            registry=self.registry,
        )

    def api_call(self, verb: str, path: str, code: int | None, reason: str | None) -> None:
        resource = resource_of(path)
        self.api_requests.labels(verb, resource, f"{code // 100}xx" if code else "none").inc()
        if reason is not None:
            self.api_errors.labels(verb, resource, reason or f"HTTP{code}").inc()

    def watch(
        self, statuses: Callable[[], Iterable[Mapping[str, Any]]], queue: Callable[[], Mapping[str, int]]
    ) -> None:
        """Gauges read at scrape time: ``statuses`` gives each bot's last written status, ``queue`` the
        work queue's sizes."""
        self.registry.register(_Gauges(statuses, queue))


class _Gauges(Collector):
    def __init__(
        self, statuses: Callable[[], Iterable[Mapping[str, Any]]], queue: Callable[[], Mapping[str, int]]
    ) -> None:
        self.statuses, self.queue = statuses, queue

    def collect(self) -> Iterable[Metric]:
        bots = GaugeMetricFamily(
            "kubechat_operator_bots",
            "Bots by condition type and status, as the operator last wrote them.",
            labels=["condition", "status"],
        )
        counts: dict[tuple[str, str], int] = {}
        total = 0
        for status in self.statuses():
            total += 1
            for condition in status.get("conditions") or ():
                key = (str(condition.get("type")), str(condition.get("status")))
                counts[key] = counts.get(key, 0) + 1
        for (kind, value), n in sorted(counts.items()):
            bots.add_metric([kind, value], n)
        yield bots
        yield GaugeMetricFamily("kubechat_operator_bots_known", "Bots the operator holds.", value=total)
        sizes = self.queue()
        depth = GaugeMetricFamily(
            "kubechat_operator_queue_depth",
            "Bots in the work queue: queued (waiting for a worker), processing, waiting (backoff or resync).",
            labels=["state"],
        )
        for state in ("queued", "processing", "waiting"):
            depth.add_metric([state], sizes.get(state, 0))
        yield depth
