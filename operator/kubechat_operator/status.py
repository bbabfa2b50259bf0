"""The bot's status from what its children report. Pure: no I/O.

``Ready`` is true only when every desired pod passes its readiness probe, and the chat service's
``/readyz`` passes only once its settings and key are loaded, so Ready means "answers".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kubechat_operator.render import endpoint, selector_string
from kubechat_operator.spec import Bot, BotSpec

SPLIT_WARNING = (
    "; warning: conversations are kept in each pod's memory, so with several replicas a user's next turn "
    "may land on a pod that never saw the conversation: set spec.sessionStore.type to redis"
)


UNAUTHENTICATED = (
    "no spec.access: anyone who can reach the bot's Service may use it, on this bot's OpenAI key; "
    "set spec.access (apiKeys, serviceAccounts or oidc)"
)


@dataclass(frozen=True)
class Condition:
    type: str
    status: bool
    reason: str
    message: str


def _deployment_condition(deployment: dict[str, Any], kind: str) -> dict[str, Any]:
    for condition in (deployment.get("status") or {}).get("conditions") or ():
        if condition.get("type") == kind:
            return dict(condition)
    return {}


def conditions(
    spec: BotSpec, deployment: dict[str, Any] | None, problem: tuple[str, str] | None
) -> list[Condition]:
    """Ready, Progressing and Degraded, with reasons a person can act on.

    ``problem`` is what stopped the operator itself (reason, message), such as a missing Secret.
    """
    desired = spec.replicas
    dstatus = (deployment or {}).get("status") or {}
    ready = int(dstatus.get("readyReplicas") or 0)
    updated = int(dstatus.get("updatedReplicas") or 0)
    total = int(dstatus.get("replicas") or 0)
    current = deployment is not None and int(dstatus.get("observedGeneration") or 0) >= int(
        deployment["metadata"].get("generation") or 0
    )
    rolling = deployment is not None and (not current or updated < desired or total > desired)
    failure = _deployment_condition(deployment or {}, "ReplicaFailure")
    progress = _deployment_condition(deployment or {}, "Progressing")

    if problem:
        degraded = Condition("Degraded", True, problem[0], problem[1])
    elif failure.get("status") == "True":
        degraded = Condition(
            "Degraded", True, "ReplicaFailure", failure.get("message", "pods cannot be created")
        )
    elif progress.get("reason") == "ProgressDeadlineExceeded":
        degraded = Condition(
            "Degraded", True, "ProgressDeadlineExceeded", progress.get("message", "rollout stalled")
        )
    else:
        degraded = Condition("Degraded", False, "AsExpected", "no problems seen")

    if deployment is None:
        progressing = Condition("Progressing", True, "Creating", "creating the bot's Deployment")
    elif rolling:
        progressing = Condition("Progressing", True, "RollingOut", f"{updated} of {desired} pods updated")
    elif ready < desired:
        progressing = Condition("Progressing", True, "WaitingForPods", f"{ready} of {desired} pods ready")
    else:
        progressing = Condition("Progressing", False, "Complete", "all pods are up to date and ready")

    if problem:
        ready_condition = Condition("Ready", False, problem[0], problem[1])
    elif desired == 0:
        ready_condition = Condition("Ready", True, "ScaledToZero", "scaled to zero replicas: nothing serves")
    elif deployment is not None and ready >= desired and not rolling:
        ready_condition = Condition("Ready", True, "PodsReady", f"{ready} of {desired} pods serve")
    elif ready > 0:
        ready_condition = Condition("Ready", True, "PartiallyReady", f"{ready} of {desired} pods serve")
    else:
        ready_condition = Condition(
            "Ready",
            False,
            "PodsNotReady",
            f"0 of {desired} pods pass their readiness probe (/readyz names what is missing)",
        )
    if spec.splits_conversations:
        ready_condition = Condition(
            ready_condition.type,
            ready_condition.status,
            ready_condition.reason,
            ready_condition.message + SPLIT_WARNING,
        )
    return [ready_condition, progressing, degraded, *access_conditions(spec)]


def access_conditions(spec: BotSpec) -> list[Condition]:
    """Authenticated (who may call) and, with limits, LimitsShared (where they are counted)."""
    access = spec.access or {}
    if access:
        kinds = [k for k in ("apiKeys", "serviceAccounts", "oidc") if k in access]
        found = [Condition("Authenticated", True, "AccessConfigured", "callers need " + ", ".join(kinds))]
    else:
        found = [Condition("Authenticated", False, "Unauthenticated", UNAUTHENTICATED)]
    limits = spec.limits
    if limits:
        if spec.session_store is not None and spec.session_store.type == "redis":
            down = "admits uncounted" if limits.get("redisDown") == "allow" else "refuses requests"
            message = (
                f"limits are counted in Redis, shared by every replica; while Redis is down the bot {down}"
            )
            found.append(Condition("LimitsShared", True, "Redis", message))
        else:
            message = (
                "limits are counted in each pod's memory: every replica allows the full limits "
                "(set spec.sessionStore.type to redis to share them)"
            )
            found.append(Condition("LimitsShared", False, "PerPod", message))
    return found


def build_status(
    bot: Bot,
    deployment: dict[str, Any] | None,
    config_hash: str | None,
    problem: tuple[str, str] | None,
    previous: dict[str, Any],
    now: str,
) -> dict[str, Any]:
    """The whole status object; ``lastTransitionTime`` only moves when a condition's status flips."""
    dstatus = (deployment or {}).get("status") or {}
    old = {c.get("type"): c for c in previous.get("conditions") or ()}
    generation = bot.generation
    rendered = []
    for c in conditions(bot.spec, deployment, problem):
        value = "True" if c.status else "False"
        before = old.get(c.type) or {}
        since = before.get("lastTransitionTime") if before.get("status") == value else now
        rendered.append(
            {
                "type": c.type,
                "status": value,
                "reason": c.reason,
                "message": c.message,
                "lastTransitionTime": since or now,
                "observedGeneration": generation,
            }
        )
    status: dict[str, Any] = {
        "observedGeneration": generation,
        "replicas": int(dstatus.get("replicas") or 0),
        "readyReplicas": int(dstatus.get("readyReplicas") or 0),
        "updatedReplicas": int(dstatus.get("updatedReplicas") or 0),
        "selector": selector_string(bot.name),
        "endpoint": endpoint(bot.name, bot.namespace, bot.spec),
        "conditions": rendered,
    }
    status["configHash"] = config_hash or previous.get("configHash")
    return status


def same_status(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Equal but for timestamps and ``usage`` (the collector's part of the status): no write is needed."""

    def strip(s: dict[str, Any]) -> dict[str, Any]:
        return {
            **{k: v for k, v in s.items() if k != "usage"},
            "conditions": [
                {k: v for k, v in c.items() if k != "lastTransitionTime"} for c in s.get("conditions") or ()
            ],
        }

    return strip(a) == strip(b)
