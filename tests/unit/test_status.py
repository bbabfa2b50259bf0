from __future__ import annotations

from typing import Any

from kubechat_operator.spec import Bot, parse
from kubechat_operator.status import build_status, same_status

BOT = Bot("b", "ns", "u", 3, parse({"replicas": 2}))


def deployment(
    ready: int,
    updated: int = 2,
    replicas: int = 2,
    observed: int = 1,
    generation: int = 1,
    conditions: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    return {
        "metadata": {"generation": generation},
        "status": {
            "readyReplicas": ready,
            "updatedReplicas": updated,
            "replicas": replicas,
            "observedGeneration": observed,
            "conditions": conditions or [],
        },
    }


def by_type(status: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}


def test_ready_only_when_every_desired_pod_serves() -> None:
    status = build_status(BOT, deployment(2), "h", None, {}, "t0")
    assert by_type(status) == {
        "Ready": ("True", "PodsReady"),
        "Progressing": ("False", "Complete"),
        "Degraded": ("False", "AsExpected"),
        "Authenticated": ("False", "Unauthenticated"),
    }
    assert status["observedGeneration"] == 3 and status["readyReplicas"] == 2 and status["configHash"] == "h"
    assert by_type(build_status(BOT, deployment(0), "h", None, {}, "t0"))["Ready"] == (
        "False",
        "PodsNotReady",
    )
    assert by_type(build_status(BOT, deployment(1), "h", None, {}, "t0"))["Ready"] == (
        "True",
        "PartiallyReady",
    )


def test_a_rollout_is_progressing() -> None:
    rolling = build_status(BOT, deployment(2, updated=1, replicas=3), "h", None, {}, "t0")
    assert by_type(rolling)["Progressing"] == ("True", "RollingOut")
    stale = build_status(BOT, deployment(2, observed=1, generation=2), "h", None, {}, "t0")
    assert by_type(stale)["Progressing"] == ("True", "RollingOut")


def test_problems_degrade_and_name_the_cause() -> None:
    status = build_status(BOT, deployment(2), "h", ("SecretNotFound", "Secret 'k' is missing"), {}, "t0")
    assert by_type(status)["Degraded"] == ("True", "SecretNotFound")
    assert by_type(status)["Ready"] == ("False", "SecretNotFound")
    stalled = deployment(
        0,
        conditions=[
            {
                "type": "Progressing",
                "status": "False",
                "reason": "ProgressDeadlineExceeded",
                "message": "slow",
            }
        ],
    )
    assert by_type(build_status(BOT, stalled, "h", None, {}, "t0"))["Degraded"] == (
        "True",
        "ProgressDeadlineExceeded",
    )


def test_transition_times_move_only_on_a_flip() -> None:
    first = build_status(BOT, deployment(0), "h", None, {}, "t0")
    same = build_status(BOT, deployment(0), "h", None, first, "t1")
    flipped = build_status(BOT, deployment(2), "h", None, first, "t2")
    ready = {c["type"]: c for c in same["conditions"]}["Ready"]
    assert ready["lastTransitionTime"] == "t0"
    assert {c["type"]: c for c in flipped["conditions"]}["Ready"]["lastTransitionTime"] == "t2"
    assert same_status(first, same) and not same_status(first, flipped)


def test_scaled_to_zero_is_ready_and_says_so() -> None:
    zero = Bot("b", "ns", "u", 3, parse({"replicas": 0}))
    assert by_type(build_status(zero, deployment(0, 0, 0), "h", None, {}, "t"))["Ready"] == (
        "True",
        "ScaledToZero",
    )


def test_several_replicas_with_memory_sessions_are_warned_about() -> None:
    ready = {c["type"]: c for c in build_status(BOT, deployment(2), "h", None, {}, "t")["conditions"]}[
        "Ready"
    ]
    assert ready["status"] == "True" and "sessionStore.type to redis" in ready["message"]
    redis = Bot("b", "ns", "u", 3, parse({"replicas": 2, "sessionStore": {"type": "redis"}}))
    ready = {c["type"]: c for c in build_status(redis, deployment(2), "h", None, {}, "t")["conditions"]}[
        "Ready"
    ]
    assert "warning" not in ready["message"]


def test_access_and_where_limits_are_counted_are_conditions() -> None:
    def conditions(**spec: Any) -> dict[str, tuple[str, str]]:
        bot = Bot("b", "ns", "u", 3, parse({"replicas": 2, **spec}))
        return by_type(build_status(bot, deployment(2), "h", None, {}, "t0"))

    assert conditions()["Authenticated"] == ("False", "Unauthenticated")
    assert conditions(access={"apiKeys": {"secretRef": {"name": "k"}}})["Authenticated"] == (
        "True",
        "AccessConfigured",
    )
    assert "LimitsShared" not in conditions()
    assert conditions(limits={"bot": {"requestsPerMinute": 5}})["LimitsShared"] == ("False", "PerPod")
    shared = conditions(limits={"redisDown": "allow"}, sessionStore={"type": "redis"})
    assert shared["LimitsShared"] == ("True", "Redis")
