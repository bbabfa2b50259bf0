"""A bot's usage for its status, summed over its pods, including pods that have gone. Pure: no I/O.

Each pod's ``/metrics`` holds counters since the process started. The operator reads them every interval
and folds the growth since its last reading into the bot's totals: a restarted process (a new start time)
starts again from zero, a pod that went away has already been counted up to its last reading, so the sums
never drop. What a pod is known to have counted so far is kept in the status itself (``status.usage.pods``),
so an operator restart neither loses nor double-counts anything.

Windows are buckets: 5-minute ones for the last hour, hourly ones for the last 24 hours. A reading's growth
goes to the bucket of the time it was read, so a window is exact to one interval.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

FIELDS = ("requests", "errors", "inputTokens", "outputTokens", "costNanoUSD")
NANO = 10**9
SHORT_BUCKET = 300  # seconds: the last hour in 12 buckets
LONG_BUCKET = 3600  # seconds: the last 24 hours in 24 buckets


@dataclass(frozen=True)
class Counts:
    requests: int = 0
    errors: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_nano: int = 0

    def as_list(self) -> list[int]:
        return [self.requests, self.errors, self.input_tokens, self.output_tokens, self.cost_nano]

    @classmethod
    def of(cls, values: Iterable[int]) -> Counts:
        return cls(*(int(v) for v in values))

    def __add__(self, other: Counts) -> Counts:
        return Counts.of(a + b for a, b in zip(self.as_list(), other.as_list(), strict=True))

    def grew_from(self, before: Counts) -> Counts | None:
        """The growth since ``before``, or None if any counter went down (the process restarted)."""
        growth = [a - b for a, b in zip(self.as_list(), before.as_list(), strict=True)]
        return None if any(g < 0 for g in growth) else Counts.of(growth)


@dataclass(frozen=True)
class Reading:
    """One pod's counters as its ``/metrics`` said, with the process's start time."""

    pod_uid: str
    started: float
    counts: Counts


def counts_from_samples(samples: Iterable[tuple[str, Mapping[str, str], float]]) -> tuple[float, Counts]:
    """(process start time, counts) from the samples of a bot's ``/metrics`` (name, labels, value)."""
    requests = errors = tokens_in = tokens_out = 0.0
    cost = 0.0
    started = 0.0
    for name, labels, value in samples:
        if name == "gen_ai_server_request_duration_seconds_count":
            requests += value
            if labels.get("error_type"):
                errors += value
        elif name == "kubechat_identity_tokens_total":
            if labels.get("gen_ai_token_type") == "input":
                tokens_in += value
            elif labels.get("gen_ai_token_type") == "output":
                tokens_out += value
        elif name == "kubechat_identity_cost_usd_total":
            cost += value
        elif name == "process_start_time_seconds":
            started = value
    return started, Counts(int(requests), int(errors), int(tokens_in), int(tokens_out), round(cost * NANO))


_WANTED = (
    "gen_ai_server_request_duration_seconds_count",
    "kubechat_identity_tokens_total",
    "kubechat_identity_cost_usd_total",
    "process_start_time_seconds",
)


def counts_from_text(text: str) -> tuple[float, Counts]:
    """``counts_from_samples`` of a ``/metrics`` page in the Prometheus text format. Only the few series
    the status needs are parsed (a page is mostly histogram buckets); a malformed page raises ValueError."""
    from prometheus_client.parser import text_string_to_metric_families

    lines = "".join(line + "\n" for line in text.splitlines() if line.startswith(_WANTED))
    samples = (
        (sample.name, sample.labels, float(sample.value))
        for family in text_string_to_metric_families(lines)
        for sample in family.samples
    )
    return counts_from_samples(samples)


def _buckets(raw: Any) -> dict[int, Counts]:
    return {int(entry[0]): Counts.of(entry[1:]) for entry in raw or () if len(entry) == 1 + len(FIELDS)}


def _window(buckets: Mapping[int, Counts]) -> Counts:
    total = Counts()
    for counts in buckets.values():
        total += counts
    return total


def summary(counts: Counts) -> dict[str, Any]:
    """What ``kubectl get -o wide`` and ``describe`` show: tokens, and cost as USD text."""
    return {
        "requests": counts.requests,
        "errors": counts.errors,
        "inputTokens": counts.input_tokens,
        "outputTokens": counts.output_tokens,
        "tokens": counts.input_tokens + counts.output_tokens,
        "cost": f"{counts.cost_nano / NANO:.6f}",  # micro-dollars: a small bot costs fractions of a cent
    }


def fold(
    previous: Mapping[str, Any] | None, readings: Iterable[Reading], alive: Iterable[str], now: float
) -> dict[str, Any]:
    """The new ``status.usage`` from the previous one, this interval's readings, and the UIDs of the pods
    that still exist (a pod that exists but could not be read keeps what it had counted, so reading it
    next time counts only its growth)."""
    previous = previous or {}
    total = Counts.of(previous.get("totalCounts") or [0] * len(FIELDS))
    pods_before = {uid: entry for uid, entry in (previous.get("pods") or {}).items()}
    short = _buckets(previous.get("short"))
    long = _buckets(previous.get("long"))
    pods: dict[str, list[float | int]] = {uid: list(pods_before[uid]) for uid in alive if uid in pods_before}
    for reading in readings:
        before = pods_before.get(reading.pod_uid)
        growth: Counts | None = reading.counts
        if before is not None and float(before[0]) == reading.started:
            growth = reading.counts.grew_from(Counts.of(before[1:]))
            if growth is None:  # counters went down without a new start time: count from zero again
                growth = reading.counts
        assert growth is not None
        pods[reading.pod_uid] = [reading.started, *reading.counts.as_list()]
        if growth == Counts():  # nothing new: no bucket, so an idle bot's usage does not change
            continue
        total += growth
        slot_short, slot_long = int(now // SHORT_BUCKET) * SHORT_BUCKET, int(now // LONG_BUCKET) * LONG_BUCKET
        short[slot_short] = short.get(slot_short, Counts()) + growth
        long[slot_long] = long.get(slot_long, Counts()) + growth
    short = {t: c for t, c in short.items() if t > now - LONG_BUCKET}
    long = {t: c for t, c in long.items() if t > now - 24 * LONG_BUCKET}
    return {
        "total": summary(total),
        "lastHour": summary(_window(short)),
        "last24Hours": summary(_window(long)),
        # What the operator needs to go on: kept compact, bounded by pods alive and by the windows.
        "totalCounts": total.as_list(),
        "pods": pods,
        "short": [[t, *c.as_list()] for t, c in sorted(short.items())],
        "long": [[t, *c.as_list()] for t, c in sorted(long.items())],
    }


def merge_patch(previous: Mapping[str, Any] | None, usage: Mapping[str, Any]) -> dict[str, Any]:
    """``usage`` as a JSON merge patch over ``previous``: maps merge, so a gone pod's entry is removed by
    naming it with null (lists and scalars are replaced whole)."""
    gone = set((previous or {}).get("pods") or {}) - set(usage.get("pods") or {})
    return {**usage, "pods": {**(usage.get("pods") or {}), **dict.fromkeys(sorted(gone))}}


@dataclass(frozen=True)
class PodTarget:
    """A bot's pod as the operator sees it in a pod list: alive (counted as existing) and, when ready with
    an address, readable at ``url``."""

    uid: str
    url: str | None


def bot_pods(
    pods: Iterable[Mapping[str, Any]], bot_label: str, path: str = "/metrics", *, off_label: str = ""
) -> dict[tuple[str, str], list[PodTarget]]:
    """The pods of a pod list grouped by bot (namespace, ``bot_label``'s value). A pod that has
    terminated or is being deleted is not alive; one that is not Ready, has no IP or no port named
    ``http``, or whose ``off_label`` says ``off`` (its metrics are off: nothing to read), is alive but
    not read."""
    found: dict[tuple[str, str], list[PodTarget]] = {}
    for pod in pods:
        meta, spec, status = pod.get("metadata") or {}, pod.get("spec") or {}, pod.get("status") or {}
        bot = (meta.get("labels") or {}).get(bot_label)
        if not bot or not meta.get("uid") or meta.get("deletionTimestamp"):
            continue
        if status.get("phase") in ("Succeeded", "Failed"):
            continue
        ready = any(
            c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or ()
        )
        port = next(
            (
                p.get("containerPort")
                for c in spec.get("containers") or ()
                for p in c.get("ports") or ()
                if p.get("name") == "http"
            ),
            None,
        )
        ip = status.get("podIP")
        url = None
        if ready and ip and port and not (off_label and (meta.get("labels") or {}).get(off_label) == "off"):
            host = f"[{ip}]" if ":" in ip else ip
            url = f"http://{host}:{int(port)}{path}"
        found.setdefault((str(meta.get("namespace")), str(bot)), []).append(PodTarget(str(meta["uid"]), url))
    return found
