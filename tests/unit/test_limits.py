"""Limits as arithmetic: calendar periods in a time zone, rolling windows and the true Retry-After,
all-or-nothing reservations and settlement, prices."""

from __future__ import annotations

import asyncio
import datetime as dt
import re
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest

from chatbot_service.counters import MemoryCounters
from chatbot_service.errors import QuotaExceeded, RateLimited
from chatbot_service.limits import Planner, period, ratelimit_headers, refusal, retry_after
from chatbot_service.policy import PolicyError, parse_limits
from chatbot_service.prices import PriceTable, parse_usd, usd

PARIS = ZoneInfo("Europe/Paris")


def at(zone: ZoneInfo, year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> float:
    return dt.datetime(year, month, day, hour, minute, tzinfo=zone).timestamp()


def test_calendar_periods_follow_the_time_zone_and_daylight_saving() -> None:
    # 2026-03-29 is 23 hours long in Paris (clocks go forward at 02:00)
    noon = at(PARIS, 2026, 3, 29, 12)
    index, starts, ends = period("day", noon, PARIS)
    assert (starts, ends) == (at(PARIS, 2026, 3, 29, 0), at(PARIS, 2026, 3, 30, 0))
    assert ends - starts == 23 * 3600
    assert period("day", at(PARIS, 2026, 3, 29, 23, 59), PARIS)[0] == index
    assert period("day", at(PARIS, 2026, 3, 30, 0, 0), PARIS)[0] == index + 1
    # the same instant is another day in UTC-10
    assert period("day", at(PARIS, 2026, 3, 29, 8), ZoneInfo("Pacific/Honolulu"))[0] == index - 1
    # ISO weeks start on Monday; months end on the first of the next (December into January)
    assert period("week", noon, PARIS)[1:] == (at(PARIS, 2026, 3, 23, 0), at(PARIS, 2026, 3, 30, 0))
    assert period("week", at(PARIS, 2026, 3, 30, 0), PARIS)[2] == at(PARIS, 2026, 4, 6, 0)
    december = period("month", at(PARIS, 2026, 12, 31, 23), PARIS)
    assert december[1:] == (at(PARIS, 2026, 12, 1, 0), at(PARIS, 2027, 1, 1, 0))
    assert period("month", at(PARIS, 2027, 1, 1, 0), PARIS)[0] == period("month", noon, PARIS)[0] + 10


def run(coro: object) -> object:
    return asyncio.run(coro)  # type: ignore[arg-type]


def test_rolling_minute_retry_after_is_the_true_time_until_it_fits() -> None:
    limits = parse_limits('{"perIdentity": {"tokensPerMinute": 100}}', "gpt-4o-mini")
    planner, counters = Planner(limits, "gpt-4o-mini"), MemoryCounters()

    async def scenario() -> None:
        t0 = 1_800_000_000.0
        for t, tokens in ((t0, 30), (t0 + 10.5, 40), (t0 + 20, 20)):
            charges = planner.plan("a", tokens, 0, t)
            assert (await counters.reserve(charges, t, "a")).admitted
        # 90 held; 30 more needs the first 30 (t0) to age out: at t0 + 60
        now = t0 + 25.2
        charges = planner.plan("a", 30, 0, now)
        refused = await counters.reserve(charges, now, "a")
        assert not refused.admitted
        error = refusal(refused.outcomes, refused.buckets, now)
        assert isinstance(error, RateLimited) and error.type == "tokens"
        assert error.code == "rate_limit_exceeded"
        assert error.headers["retry-after-ms"] == str(round((60 - 25.2) * 1000))
        assert error.headers["Retry-After"] == "35"
        assert error.headers["x-ratelimit-remaining-tokens"] == "10"
        assert not (await counters.reserve(planner.plan("a", 30, 0, t0 + 59.99), t0 + 59.99, "a")).admitted
        assert (await counters.reserve(planner.plan("a", 30, 0, t0 + 60), t0 + 60, "a")).admitted
        # 50 more needs the 40 of t0 + 10.5 gone as well (its bucket is second 10: at t0 + 70)
        bigger = planner.plan("a", 80, 0, now)[0]
        wait = retry_after(refused.buckets[bigger.key], bigger, now)
        assert wait == pytest.approx(70 - 25.2)

    run(scenario())


def test_a_request_over_one_limit_takes_nothing_from_the_others_and_settles_to_actual() -> None:
    limits = parse_limits(
        '{"perIdentity": {"requestsPerMinute": 5, "tokens": {"day": 100}}, "bot": {"tokens": {"day": 150}}}',
        "gpt-4o-mini",
    )
    planner, counters = Planner(limits, "gpt-4o-mini"), MemoryCounters()
    now = at(PARIS, 2026, 6, 1, 12)

    async def scenario() -> None:
        first = planner.plan("a", 40, 50, now)  # reserves 90
        assert (await counters.reserve(first, now, "a")).admitted
        # settle: 40 prompt + 10 reply = 50; the other 40 reserved come back
        await counters.settle(planner.settlement(first, 40, 10))
        assert await counters.used([c for c in first if c.metric == "tokens"]) == [50, 50, 50, 50]
        over = await counters.reserve(planner.plan("b", 60, 50, now), now, "b")  # 110 > b's 100
        assert not over.admitted
        error = refusal(over.outcomes, over.buckets, now)
        assert isinstance(error, QuotaExceeded) and error.code == "insufficient_quota"
        assert "x-should-retry" in error.headers and "Retry-After" not in error.headers  # never fits
        # b's refusal took nothing: the bot's day still holds a's 50 only
        fits = planner.plan("b", 50, 50, now)
        assert (await counters.reserve(fits, now, "b")).admitted  # 100 for b, 150 for the bot
        bot_over = await counters.reserve(planner.plan("c", 1, 0, now), now, "c")
        assert not bot_over.admitted
        err = refusal(bot_over.outcomes, bot_over.buckets, now)
        assert "this bot" in err.message
        assert int(err.headers["Retry-After"]) == pytest.approx(14 * 3600, abs=1)  # noon Paris = 10:00 UTC
        assert await counters.identities() == ["a", "b"]

    run(scenario())


def test_ratelimit_headers_name_the_tightest_counter() -> None:
    limits = parse_limits(
        '{"perIdentity": {"requestsPerMinute": 10}, "bot": {"requestsPerMinute": 3}}', "gpt-4o-mini"
    )
    planner, counters = Planner(limits, "gpt-4o-mini"), MemoryCounters()

    async def scenario() -> dict[str, str]:
        charges = planner.plan("a", 1, 1, 100.0)
        reservation = await counters.reserve(charges, 100.0, "a")
        return ratelimit_headers(reservation.outcomes, reservation.buckets, 100.0, admitted=True)

    headers = run(scenario())
    assert headers == {
        "x-ratelimit-limit-requests": "3",
        "x-ratelimit-remaining-requests": "2",
        "x-ratelimit-reset-requests": "1m0s",
    }


@pytest.mark.parametrize("later", [None, 0, 5])
def test_an_admitted_requests_reset_is_that_of_its_window_with_it_added(later: int | None) -> None:
    """The reset an admitted request is told: when its window, with the request in it, is empty
    again; a bucket newer than the request's own (a clock that stepped back) pushes it later, unless
    empty."""
    limits = parse_limits(
        '{"perIdentity": {"requestsPerMinute": 100, "tokensPerMinute": 10000}}', "gpt-4o-mini"
    )
    planner, counters = Planner(limits, "gpt-4o-mini"), MemoryCounters()
    now = 1000.5

    async def scenario() -> dict[str, str]:
        for at in (now - 50, now - 20):  # older traffic in the window
            assert (await counters.reserve(planner.plan("a", 5, 5, at), at, "a")).admitted
        if later is not None:
            ahead = planner.plan("a", 5, 5, now + 7)
            assert (await counters.reserve(ahead, now + 7, "a")).admitted
            await counters.settle([(c, -c.amount + later) for c in ahead if c.window == "minute"])
        reservation = await counters.reserve(planner.plan("a", 5, 5, now), now, "a")
        assert reservation.admitted
        return ratelimit_headers(reservation.outcomes, reservation.buckets, now, admitted=True)

    headers = run(scenario())
    # 1-second buckets of the rolling minute: empty 60 s after the newest non-empty one (1000 or 1007)
    expected = "1m6s" if later else "59.5s"
    assert headers["x-ratelimit-reset-requests"] == headers["x-ratelimit-reset-tokens"] == expected


def test_prices_and_costs() -> None:
    table = PriceTable()
    assert table.price("gpt-4o-mini-2024-07-18") == table.price("gpt-4o-mini")
    assert table.price("gpt-4o-2024-08-06") != table.price("gpt-4o-mini")
    assert table.cost("gpt-4o-mini", 1_000_000, 1_000_000) == 750_000_000  # 0.15 + 0.60 USD
    assert table.cost("gpt-4o-mini", 1, 0) == 150  # nano-dollars
    assert table.cost("my-azure-deployment", 10, 10) == 0
    custom = PriceTable({"my-azure-deployment": table.price("gpt-4o")})  # type: ignore[dict-item]
    assert custom.cost("my-azure-deployment", 1, 1) == 12_500
    assert usd(parse_usd("2.50")) == "2.500000000" and parse_usd(5) == 5 * 10**9
    assert Decimal(usd(1)) == Decimal("0.000000001")  # exact to the nano-dollar


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        ('{"perIdentity": {"tokensPerMinut": 5}}', "limits.perIdentity: unknown field(s) tokensPerMinut"),
        ('{"perIdentity": {"tokens": {"year": 5}}}', "limits.perIdentity.tokens: unknown field(s) year"),
        ('{"timeZone": "Mars/Olympus"}', "limits.timeZone: unknown time zone"),
        ('{"perIdentity": {"cost": {"day": "lots"}}}', "limits.perIdentity.cost.day: must be a USD amount"),
        ('{"perIdentity": {"requestsPerMinute": -1}}', "must be a whole number >= 0"),
        ('{"redisDown": "maybe"}', "limits.redisDown: must be refuse"),
        ("[1]", "limits: must be an object"),
    ],
)
def test_bad_limits_name_the_field(raw: str, problem: str) -> None:
    with pytest.raises(PolicyError, match=re.escape(problem)):
        parse_limits(raw, "gpt-4o-mini")


def test_cost_budgets_need_a_price_for_the_model() -> None:
    with pytest.raises(PolicyError, match=r"add it under limits\.prices"):
        parse_limits('{"bot": {"cost": {"month": 100}}}', "my-azure-deployment")
    limits = parse_limits(
        '{"bot": {"cost": {"month": 100}}, "prices": {"my-azure-deployment": {"input": 1, "output": 2}}}',
        "my-azure-deployment",
    )
    assert limits is not None and limits.price_table.cost("my-azure-deployment", 10**6, 10**6) == 3 * 10**9
