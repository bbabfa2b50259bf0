"""Folding pods' counters into a bot's usage: sums that never drop, restarts, gone pods, windows."""

from __future__ import annotations

from typing import Any

import pytest
from kubechat_operator.render import BOT_LABEL, METRICS_LABEL
from kubechat_operator.usage import (
    Counts,
    PodTarget,
    Reading,
    bot_pods,
    counts_from_samples,
    counts_from_text,
    fold,
    merge_patch,
)

HOUR = 3600.0
T0 = 1_800_000_000.0  # a fixed instant; only differences matter


def read(uid: str, started: float, requests: int, tokens: int = 0, cost_nano: int = 0) -> Reading:
    return Reading(uid, started, Counts(requests, 0, tokens, tokens, cost_nano))


def test_growth_is_counted_once_and_a_gone_pod_keeps_its_share() -> None:
    usage = fold(None, [read("a", 1.0, 5), read("b", 2.0, 3)], ["a", "b"], T0)
    assert usage["total"]["requests"] == 8
    usage = fold(usage, [read("a", 1.0, 7)], ["a"], T0 + 60)  # b is gone: its 3 stay counted
    assert usage["total"]["requests"] == 10
    assert set(usage["pods"]) == {"a"}  # what is kept is bounded by the pods alive


def test_a_restarted_process_counts_from_zero() -> None:
    usage = fold(None, [read("a", 1.0, 5)], ["a"], T0)
    usage = fold(usage, [read("a", 9.0, 2)], ["a"], T0 + 60)  # new start time: 2 more, not -3
    assert usage["total"]["requests"] == 7


def test_a_pod_that_could_not_be_read_is_not_counted_twice() -> None:
    usage = fold(None, [read("a", 1.0, 5)], ["a"], T0)
    usage = fold(usage, [], ["a"], T0 + 60)  # exists, unreadable this time
    usage = fold(usage, [read("a", 1.0, 6)], ["a"], T0 + 120)
    assert usage["total"]["requests"] == 6


def test_windows_forget_what_is_older_than_they_are() -> None:
    usage = fold(None, [read("a", 1.0, 4, tokens=10, cost_nano=2_500_000)], ["a"], T0)
    usage = fold(usage, [read("a", 1.0, 5, tokens=11, cost_nano=2_500_000)], ["a"], T0 + 2 * HOUR)
    assert usage["total"]["requests"] == 5 and usage["total"]["tokens"] == 22
    assert usage["lastHour"]["requests"] == 1 and usage["lastHour"]["tokens"] == 2
    assert usage["last24Hours"]["requests"] == 5
    assert usage["total"]["cost"] == "0.002500"
    usage = fold(usage, [read("a", 1.0, 5, tokens=11, cost_nano=2_500_000)], ["a"], T0 + 30 * HOUR)
    assert usage["last24Hours"]["requests"] == 0 and usage["total"]["requests"] == 5
    assert len(usage["long"]) <= 24 and len(usage["short"]) <= 12


def test_counts_from_the_bots_own_metric_names() -> None:
    samples: list[tuple[str, dict[str, Any], float]] = [
        ("gen_ai_server_request_duration_seconds_count", {"error_type": ""}, 7.0),
        ("gen_ai_server_request_duration_seconds_count", {"error_type": "upstream_timeout"}, 2.0),
        ("kubechat_identity_tokens_total", {"identity": "team-a", "gen_ai_token_type": "input"}, 100.0),
        ("kubechat_identity_tokens_total", {"identity": "team-b", "gen_ai_token_type": "input"}, 50.0),
        ("kubechat_identity_tokens_total", {"identity": "team-a", "gen_ai_token_type": "output"}, 30.0),
        ("kubechat_identity_cost_usd_total", {"identity": "team-a"}, 0.0125),
        ("process_start_time_seconds", {}, 1234.5),
    ]
    started, counts = counts_from_samples(samples)
    assert started == 1234.5
    assert counts == Counts(requests=9, errors=2, input_tokens=150, output_tokens=30, cost_nano=12_500_000)


def test_an_idle_bot_s_usage_does_not_change() -> None:
    usage = fold(None, [read("a", 1.0, 5)], ["a"], T0)
    assert fold(usage, [read("a", 1.0, 5)], ["a"], T0 + 600) == usage  # no write for the collector


def test_the_merge_patch_removes_gone_pods() -> None:
    before = fold(None, [read("a", 1.0, 5), read("b", 1.0, 1)], ["a", "b"], T0)
    after = fold(before, [read("a", 1.0, 6)], ["a"], T0 + 60)
    patch = merge_patch(before, after)
    assert patch["pods"] == {"a": [1.0, 6, 0, 0, 0, 0], "b": None}
    assert patch["total"] == after["total"]


def test_counts_from_a_metrics_page_read_only_what_the_status_needs() -> None:
    page = "\n".join(
        [
            "# HELP gen_ai_server_request_duration_seconds Duration.",
            "# TYPE gen_ai_server_request_duration_seconds histogram",
            'gen_ai_server_request_duration_seconds_bucket{error_type="",le="0.01"} 3.0',
            'gen_ai_server_request_duration_seconds_count{error_type="",gen_ai_operation_name="chat"} 3.0',
            'gen_ai_server_request_duration_seconds_count{error_type="timeout"} 1.0',
            'kubechat_identity_tokens_total{gen_ai_token_type="input",identity="anonymous"} 40.0',
            'kubechat_identity_tokens_created{gen_ai_token_type="input",identity="anonymous"} 1.7e9',
            'kubechat_identity_tokens_total{gen_ai_token_type="output",identity="anonymous"} 12.0',
            'kubechat_identity_cost_usd_total{identity="anonymous"} 1.5e-05',
            "process_start_time_seconds 1.7648e+09",
        ]
    )
    started, counts = counts_from_text(page)
    assert started == 1.7648e9
    assert counts == Counts(requests=4, errors=1, input_tokens=40, output_tokens=12, cost_nano=15_000)
    with pytest.raises(ValueError, match="could not convert"):
        counts_from_text('kubechat_identity_cost_usd_total{identity="x" 1')


def _pod(
    uid: str, bot: str | None = "b", ready: bool = True, ip: str | None = "10.1.2.3", **extra: Any
) -> Any:
    labels = {BOT_LABEL: bot} if bot else {}
    return {
        "metadata": {"uid": uid, "namespace": "ns", "labels": labels, **extra.get("meta", {})},
        "spec": {"containers": [{"ports": [{"name": "http", "containerPort": 8080}]}]},
        "status": {
            "phase": extra.get("phase", "Running"),
            "podIP": ip,
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


def test_bot_pods_are_alive_and_read_only_when_ready_with_an_address() -> None:
    pods = [
        _pod("ready"),
        _pod("starting", ready=False),
        _pod("no-ip", ip=None),
        _pod("v6", ip="fd00::5"),
        _pod("done", phase="Succeeded"),
        _pod("deleting", meta={"deletionTimestamp": "2026-01-01T00:00:00Z"}),
        _pod("stray", bot=None),
    ]
    found = bot_pods(pods, BOT_LABEL)
    assert list(found) == [("ns", "b")]
    assert found["ns", "b"] == [
        PodTarget("ready", "http://10.1.2.3:8080/metrics"),
        PodTarget("starting", None),
        PodTarget("no-ip", None),
        PodTarget("v6", "http://[fd00::5]:8080/metrics"),
    ]


def test_pods_of_a_bot_with_metrics_off_are_alive_but_not_read() -> None:
    quiet = _pod("quiet", meta={"labels": {BOT_LABEL: "b", METRICS_LABEL: "off"}})
    found = bot_pods([_pod("ready"), quiet], BOT_LABEL, off_label=METRICS_LABEL)
    assert found["ns", "b"] == [PodTarget("ready", "http://10.1.2.3:8080/metrics"), PodTarget("quiet", None)]
    # Without off_label every ready pod is read, the label notwithstanding.
    assert bot_pods([quiet], BOT_LABEL)["ns", "b"] == [PodTarget("quiet", "http://10.1.2.3:8080/metrics")]
