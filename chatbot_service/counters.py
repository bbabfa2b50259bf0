"""Where limit counters live: the interface, and the in-memory counters of one pod. Edge (state).

``reserve`` checks every charge of a request and adds all of them or none (a request over one limit
takes nothing from the others); ``settle`` corrects a reservation once the real usage is known. The
memory counters need no lock: between two awaits nothing else runs. Redis' counters
(``redis_counters``) do the same in one script, so replicas share them.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from chatbot_service.limits import BOT_SCOPE, Charge, Outcome


@dataclass
class Reservation:
    admitted: bool
    outcomes: list[Outcome]
    #: The buckets of the rolling counters, as they were before this request (for Retry-After and headers).
    buckets: dict[str, dict[int, int]] = field(default_factory=dict)


class CountersDown(Exception):
    """The shared counters cannot be reached; ``where`` says where they are, without credentials."""

    def __init__(self, where: str, reason: str) -> None:
        super().__init__(f"limit counters at {where} unavailable ({reason})")


class Counters(Protocol):
    #: True when every replica sees the same counters.
    shared: bool

    async def reserve(self, charges: Sequence[Charge], now: float, identity: str) -> Reservation:
        """Add every charge if all fit, otherwise none."""

    async def settle(self, adjustments: Sequence[tuple[Charge, int]]) -> None:
        """Add (or give back) amounts in the buckets a reservation went to, if they still exist."""

    async def used(self, charges: Sequence[Charge]) -> list[int]:
        """What each charge's window holds now (for the usage report)."""

    async def identities(self) -> list[str]:
        """Every identity with counters."""


class MemoryCounters:
    """Counters of this process, bounded: past ``max_counters`` the least recently used go first."""

    shared = False

    def __init__(self, max_counters: int = 50_000) -> None:
        self.max_counters = max_counters
        self._counters: OrderedDict[str, dict[int, int]] = OrderedDict()

    def _live(self, charge: Charge) -> int:
        """What the charge's window holds now, its buckets that aged out of it dropped first (so a
        counter never holds more than its window): then the sum is of every bucket, without a test
        per bucket (a rolling minute has 60, summed for every request)."""
        buckets = self._counters.get(charge.key)
        if not buckets:
            return 0
        oldest = charge.index - charge.buckets
        if min(buckets) <= oldest:
            for index in [i for i in buckets if i <= oldest]:
                del buckets[index]
        return sum(buckets.values())

    async def reserve(self, charges: Sequence[Charge], now: float, identity: str) -> Reservation:
        outcomes = [Outcome(c, self._live(c)) for c in charges]
        admitted = all(o.fits for o in outcomes)
        held = {
            c.key: dict(self._counters.get(c.key, {}))
            for c in charges
            if c.buckets > 1 and (c.window == "minute" or not admitted)  # for headers, or the refusal
        }
        if admitted:
            for c in charges:
                buckets = self._counters.get(c.key)
                if buckets is None:
                    buckets = self._counters[c.key] = {}
                else:
                    self._counters.move_to_end(c.key)
                buckets[c.index] = buckets.get(c.index, 0) + c.amount
            while len(self._counters) > self.max_counters:
                self._counters.popitem(last=False)
        return Reservation(admitted, outcomes, held)

    async def settle(self, adjustments: Sequence[tuple[Charge, int]]) -> None:
        for charge, delta in adjustments:
            buckets = self._counters.get(charge.key)
            if buckets is not None and charge.index in buckets:
                buckets[charge.index] = max(buckets[charge.index] + delta, 0)

    async def used(self, charges: Sequence[Charge]) -> list[int]:
        return [self._live(c) for c in charges]

    async def identities(self) -> list[str]:
        scopes = {key.rsplit(":", 2)[0] for key in self._counters}
        return sorted(scopes - {BOT_SCOPE})
