"""Limits as arithmetic on counters: which counters a request charges, whether it fits, when it would.
Pure: no I/O (the clock is an argument; the counters live in ``counters`` or Redis).

Every limit is a counter split in buckets. A calendar window (this day, ISO week or month in the
limits' time zone) is one bucket, reset at the period's end. A rolling window (the last minute, 24 h,
7 or 30 days) is 60 buckets of 1/60 of it: a request fits when what the live buckets hold plus what it
reserves is at most the limit, and the true time until it would fit is when enough of the oldest
buckets have aged out. Identities' token and cost counters exist even without a limit (limit None),
so their usage can be read.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from zoneinfo import ZoneInfo

from chatbot_service.errors import QuotaExceeded, RateLimited
from chatbot_service.policy import WINDOWS, Limits, Quota
from chatbot_service.prices import PriceTable, usd

ROLLING_BUCKETS = 60
ROLLING_SECONDS = {"minute": 60, "day": 86_400, "week": 7 * 86_400, "month": 30 * 86_400}
BOT_SCOPE = "*bot*"  # not a possible identity: identities never contain '*'


# Charge and Outcome are values that nothing changes once made, but not ``frozen``: a request makes
# about ten of each, and a frozen dataclass's ``__init__`` (one ``object.__setattr__`` per field) cost
# eight times a plain one's, a third of the guard's CPU on the memory path.
@dataclass(slots=True)
class Charge:
    """One counter a request adds to: ``amount`` into bucket ``index`` of ``key``."""

    key: str
    scope: str
    metric: str  # requests | tokens | cost
    window: str  # minute | day | week | month
    index: int
    buckets: int  # 1 for a calendar window
    bucket_seconds: float
    resets_at: float  # calendar: the period's end (epoch seconds); rolling: 0
    limit: int | None
    amount: int

    def ttl_seconds(self, now: float) -> int:
        """How long the counter must live: a calendar period to its end (plus an hour, for the usage
        report), a rolling window its length plus a bucket."""
        if self.buckets == 1:
            return math.ceil(self.resets_at - now) + 3600
        return math.ceil(self.bucket_seconds * (self.buckets + 1))


@dataclass(slots=True)
class Outcome:
    charge: Charge
    used: int  # in the window before this request

    @property
    def fits(self) -> bool:
        return self.charge.limit is None or self.used + self.charge.amount <= self.charge.limit


def live(buckets: Mapping[int, int], charge: Charge) -> int:
    """What the window holds now."""
    oldest = charge.index - charge.buckets
    return sum(v for i, v in buckets.items() if i > oldest)


def retry_after(buckets: Mapping[int, int], charge: Charge, now: float) -> float | None:
    """Seconds until the charge would fit; None if it never can (it alone is over the limit)."""
    assert charge.limit is not None
    if charge.amount > charge.limit:
        return None
    if charge.buckets == 1:
        return max(charge.resets_at - now, 0.0)
    need = live(buckets, charge) + charge.amount - charge.limit
    oldest = charge.index - charge.buckets
    freed = 0
    for i in sorted(i for i in buckets if i > oldest):
        freed += buckets[i]
        if freed >= need:
            return max((i + charge.buckets) * charge.bucket_seconds - now, 0.0)
    return 0.0


def resets_in(buckets: Mapping[int, int], charge: Charge, now: float) -> float:
    """Seconds until the window is empty again (OpenAI's ``x-ratelimit-reset-*``)."""
    if charge.buckets == 1:
        return max(charge.resets_at - now, 0.0)
    oldest = charge.index - charge.buckets
    newest = max((i for i, v in buckets.items() if i > oldest and v), default=charge.index)
    return max((newest + charge.buckets) * charge.bucket_seconds - now, 0.0)


def period(window: str, now: float, zone: ZoneInfo) -> tuple[int, float, float]:
    """The calendar period holding ``now`` in ``zone``: (its number, when it starts, when it ends)."""
    today = dt.datetime.fromtimestamp(now, zone).date()
    if window == "day":
        start, end = today, today + dt.timedelta(days=1)
        index = start.toordinal()
    elif window == "week":
        start = today - dt.timedelta(days=today.weekday())
        end = start + dt.timedelta(days=7)
        index = start.toordinal()
    else:
        start = today.replace(day=1)
        end = dt.date(today.year + today.month // 12, today.month % 12 + 1, 1)
        index = today.year * 12 + today.month - 1
    midnight = dt.time()
    begins = dt.datetime.combine(start, midnight, zone).timestamp()
    return index, begins, dt.datetime.combine(end, midnight, zone).timestamp()


class Planner:
    """Turns one request into the charges it makes, for one ``Limits`` (kept per settings object)."""

    def __init__(self, limits: Limits | None, model: str) -> None:
        self.limits = limits or Limits()
        self.model = model
        self.prices: PriceTable = self.limits.price_table
        self.zone = self.limits.zone
        self._periods: dict[str, tuple[int, float, float]] = {}  # the current one of each window

    def cost(self, prompt_tokens: int, completion_tokens: int) -> int:
        return self.prices.cost(self.model, prompt_tokens, completion_tokens)

    def _charge(
        self, scope: str, metric: str, window: str, limit: int | None, amount: int, now: float
    ) -> Charge:
        if window == "minute" or self.limits.rolling:
            size = ROLLING_SECONDS[window] / ROLLING_BUCKETS
            key = f"{scope}:{metric}:{window}~"
            return Charge(
                key, scope, metric, window, int(now // size), ROLLING_BUCKETS, size, 0.0, limit, amount
            )
        current = self._periods.get(window)
        if current is None or not current[1] <= now < current[2]:
            current = self._periods[window] = period(window, now, self.zone)
        key = f"{scope}:{metric}:{window}"
        return Charge(key, scope, metric, window, current[0], 1, 0.0, current[2], limit, amount)

    def _quota(
        self, scope: str, quota: Quota, tokens: int, cost: int, now: float, track: bool
    ) -> list[Charge]:
        charges = []
        if quota.requests_per_minute is not None:
            charges.append(self._charge(scope, "requests", "minute", quota.requests_per_minute, 1, now))
        if quota.tokens_per_minute is not None:
            charges.append(self._charge(scope, "tokens", "minute", quota.tokens_per_minute, tokens, now))
        token_limits, cost_limits = dict(quota.tokens), dict(quota.cost)
        for window in WINDOWS:
            if track or window in token_limits:
                charges.append(self._charge(scope, "tokens", window, token_limits.get(window), tokens, now))
            if track or window in cost_limits:
                charges.append(self._charge(scope, "cost", window, cost_limits.get(window), cost, now))
        return charges

    def plan(self, identity: str, prompt_tokens: int, reply_limit: int, now: float) -> list[Charge]:
        """What the request reserves: its prompt plus the whole reply limit, in tokens and in cost."""
        tokens = prompt_tokens + reply_limit
        cost = self.cost(prompt_tokens, reply_limit)
        quota = self.limits.quota_for(identity)
        charges = self._quota(identity, quota, tokens, cost, now, track=True)
        return charges + self._quota(BOT_SCOPE, self.limits.bot, tokens, cost, now, track=False)

    def settlement(
        self, charges: Sequence[Charge], prompt_tokens: int, completion_tokens: int
    ) -> list[tuple[Charge, int]]:
        """What to add (or give back) once the real usage is known."""
        tokens = prompt_tokens + completion_tokens
        cost = self.cost(prompt_tokens, completion_tokens)
        actual = {"requests": None, "tokens": tokens, "cost": cost}
        out = []
        for c in charges:
            value = actual[c.metric]
            if value is not None and value != c.amount:
                out.append((c, value - c.amount))
        return out


def refusal(
    outcomes: Sequence[Outcome], buckets: Mapping[str, Mapping[int, int]], now: float
) -> RateLimited | QuotaExceeded:
    """The 429 for a request that does not fit: the longest wait among its refused counters."""
    refused = [o for o in outcomes if not o.fits]
    waits = [(retry_after(buckets.get(o.charge.key, {}), o.charge, now), o) for o in refused]
    never = [o for wait, o in waits if wait is None]
    wait, worst = (None, never[0]) if never else max(waits, key=lambda w: w[0] or 0.0)
    c = worst.charge
    who = "this bot" if c.scope == BOT_SCOPE else c.scope
    unit = {"requests": "requests", "tokens": "tokens", "cost": "USD"}[c.metric]
    limit, used, asked = (
        (usd(c.limit or 0), usd(worst.used), usd(c.amount))
        if c.metric == "cost"
        else (
            str(c.limit),
            str(worst.used),
            str(c.amount),
        )
    )
    per = "per minute" if c.window == "minute" else f"per {c.window}"
    detail = f"limit {limit}, used {used}, requested {asked}"
    headers = ratelimit_headers(outcomes, buckets, now)
    if wait is None:
        message = f"The request alone is over {who}'s {unit} {per} ({detail}); make it smaller."
        headers["x-should-retry"] = "false"
    else:
        message = f"{who} reached its {unit} {per} ({detail}); try again in {_go_duration(wait)}."
        headers["Retry-After"] = str(max(math.ceil(wait), 1))
        headers["retry-after-ms"] = str(max(math.ceil(wait * 1000), 1))
        if wait > 60:
            headers["x-should-retry"] = "false"  # the SDKs would otherwise retry within a minute
    if c.window == "minute":
        return RateLimited(message, kind=c.metric, headers=headers)
    return QuotaExceeded(message, headers=headers)


def ratelimit_headers(
    outcomes: Sequence[Outcome], buckets: Mapping[str, Mapping[int, int]], now: float, admitted: bool = False
) -> dict[str, str]:
    """OpenAI's ``x-ratelimit-{limit,remaining,reset}-{requests,tokens}``, from the tightest
    per-minute counter of each kind."""
    headers: dict[str, str] = {}
    for metric in ("requests", "tokens"):
        best: tuple[int, Outcome] | None = None
        for o in outcomes:
            c = o.charge
            if c.metric != metric or c.window != "minute" or c.limit is None:
                continue
            remaining = c.limit - o.used - (c.amount if admitted else 0)
            if best is None or remaining < best[0]:
                best = (remaining, o)
        if best is None:
            continue
        remaining, o = best
        c = o.charge
        held = buckets.get(c.key, {})
        if admitted and c.amount > 0 and max(held, default=c.index) <= c.index:
            # The request was just added to the current bucket, the newest: no need to copy and
            # scan the window's buckets for it (as resets_in would, on every admitted request).
            reset = max((c.index + c.buckets) * c.bucket_seconds - now, 0.0)
        else:
            held = dict(held)
            if admitted:
                held[c.index] = held.get(c.index, 0) + c.amount
            reset = resets_in(held, c, now)
        headers[f"x-ratelimit-limit-{metric}"] = str(c.limit)
        headers[f"x-ratelimit-remaining-{metric}"] = str(max(remaining, 0))
        headers[f"x-ratelimit-reset-{metric}"] = _go_duration(reset)
    return headers


def _go_duration(seconds: float) -> str:
    """As OpenAI writes durations: ``20ms``, ``1.5s``, ``6m0s``, ``2h3m0s``."""
    if seconds < 1:
        return f"{math.ceil(seconds * 1000)}ms"
    whole = math.ceil(seconds * 10) / 10
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    text = f"{secs:g}s"
    if hours or minutes:
        text = f"{int(minutes)}m{int(secs)}s"
    return f"{int(hours)}h{text}" if hours else text
