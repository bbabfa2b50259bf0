"""What each identity has used and has left, per window, for ``GET /v1/usage``. Core: reads the
counters through the guard; the arithmetic is ``limits``', the prices ``prices``'."""

from __future__ import annotations

import datetime as dt
import json
import time
from typing import Any

from chatbot_service.counters import CountersDown
from chatbot_service.errors import LimitsUnavailable
from chatbot_service.guard import Caller, Guard
from chatbot_service.policy import WINDOWS
from chatbot_service.prices import usd
from chatbot_service.settings import Settings

MAX_IDENTITIES = 1000


async def usage_report(
    guard: Guard, settings: Settings, caller: Caller, identity: str | None
) -> dict[str, Any]:
    """The caller's own usage, or (for owners, or on an open bot) every identity's."""
    names = guard.check_owner(settings, caller, identity)
    planner = guard.policy(settings).planner
    limits = planner.limits if planner else None
    report: dict[str, Any] = {
        "object": "usage",
        "tracked": planner is not None,
        "counters": "redis (shared by replicas)"
        if settings.session_store == "redis"
        else "memory (this pod)",
        "time_zone": limits.time_zone if limits else "UTC",
        "budget_windows": "rolling" if limits and limits.rolling else "calendar",
        "identities": [],
    }
    if planner is None:
        return report
    counters = guard.counters(settings)
    now = time.time()
    try:
        if names is None:
            names = await counters.identities()
        for name in names[:MAX_IDENTITIES]:
            charges = [c for c in planner.plan(name, 0, 0, now) if c.scope == name and c.window in WINDOWS]
            windows: dict[str, dict[str, Any]] = {}
            for c, used in zip(charges, await counters.used(charges), strict=True):
                window = windows.setdefault(c.window, {})
                if c.buckets == 1:
                    window["resets_at"] = dt.datetime.fromtimestamp(c.resets_at, dt.UTC).isoformat()
                if c.metric == "tokens":
                    window["tokens"] = used
                    if c.limit is not None:
                        window["token_limit"] = c.limit
                        window["tokens_remaining"] = max(c.limit - used, 0)
                else:
                    window["cost_usd"] = usd(used)
                    if c.limit is not None:
                        window["cost_limit_usd"] = usd(c.limit)
                        window["cost_remaining_usd"] = usd(max(c.limit - used, 0))
            report["identities"].append({"identity": name, "windows": windows})
    except CountersDown:
        raise LimitsUnavailable("the usage counters (Redis) are unavailable; try again shortly") from None
    return report


def stream_usage(chunk: bytes) -> dict[str, Any] | None:
    """The ``usage`` object of a Server-Sent Events chunk that carries one."""
    for line in chunk.split(b"\n"):
        if line.startswith(b"data:") and b'"usage"' in line:
            try:
                event = json.loads(line[5:])
            except ValueError:
                continue
            usage = event.get("usage") if isinstance(event, dict) else None
            if isinstance(usage, dict):
                return usage
    return None
