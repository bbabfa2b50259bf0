"""Limit counters in Redis, shared by every replica of a bot. Edge: network I/O.

Each counter is a hash under ``kubechat:<bot>:limits:<identity>:<metric>:<window>`` whose fields are
bucket numbers. One Lua script checks every charge of a request and adds all of them or none, so two
replicas cannot both take the last tokens of a budget (no read-modify-write from Python). Settling
corrects only buckets that still exist. The same arithmetic as the memory counters (``limits``).

A settlement is not a round trip of its own: it waits (at most ``SETTLE_DELAY``) for this process's next
reservation, whose script applies it first, so a request costs one round trip, not two. Until then the
reservation holds, which can only refuse early; reading usage here applies what waits first.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from redis.exceptions import RedisError

from chatbot_service.counters import CountersDown, Reservation
from chatbot_service.limits import Charge, Outcome
from chatbot_service.redis_store import RedisStore

log = logging.getLogger("kubechat.limits")

SETTLE_DELAY = 0.05  # seconds a settlement waits for the next reservation to carry it
MAX_PENDING = 10_000  # (counter, bucket) corrections kept while Redis cannot be reached

# KEYS: the n counters charged, the identities hash, then the counters settled. ARGV[1]: per charge
# "index,buckets,limit (-1: none),amount,ttl ms", joined by commas (one argument, not five per charge:
# packing some forty arguments was the client's largest cost); ARGV[2]: the identity; ARGV[3]: n;
# ARGV[4]: per settled counter "bucket,delta", applied first (only to buckets that still exist).
# Returns {1, used} when every charge fits (and adds them), else {0, used, buckets}: the rolling counters'
# buckets only for a refusal (its Retry-After); an admitted request's headers need none (the newest bucket
# of a window it was just added to is the current one). Parsing 60 buckets per counter on every request
# was most of the Redis path's CPU.
_RESERVE = """
local n = tonumber(ARGV[3])
local a = {}
for v in string.gmatch(ARGV[4], '[^,]+') do a[#a + 1] = v end
for i = n + 2, #KEYS do
  local j = 2 * (i - n - 1)
  if redis.call('HEXISTS', KEYS[i], a[j - 1]) == 1 then redis.call('HINCRBY', KEYS[i], a[j - 1], a[j]) end
end
a = {}
for v in string.gmatch(ARGV[1], '[^,]+') do a[#a + 1] = v end
local used, held, fits = {}, {}, true
for i = 1, n do
  local b = (i - 1) * 5
  local index, count = tonumber(a[b + 1]), tonumber(a[b + 2])
  local limit, amount = tonumber(a[b + 3]), tonumber(a[b + 4])
  local flat = redis.call('HGETALL', KEYS[i])
  local sum = 0
  for j = 1, #flat, 2 do
    if tonumber(flat[j]) <= index - count then
      redis.call('HDEL', KEYS[i], flat[j])
    else
      sum = sum + tonumber(flat[j + 1])
    end
  end
  used[i] = sum
  held[i] = count > 1 and flat or {}
  if limit >= 0 and sum + amount > limit then fits = false end
end
if not fits then return {0, used, held} end
for i = 1, n do
  local b = (i - 1) * 5
  redis.call('HINCRBY', KEYS[i], a[b + 1], a[b + 4])
  redis.call('PEXPIRE', KEYS[i], a[b + 5])
end
redis.call('HSET', KEYS[n + 1], ARGV[2], 1)
return {1, used}
"""

# ARGV[1]: per key "bucket,delta", joined by commas. Only buckets that still exist are corrected.
_SETTLE = """
local a = {}
for v in string.gmatch(ARGV[1], '[^,]+') do a[#a + 1] = v end
for i = 1, #KEYS do
  if redis.call('HEXISTS', KEYS[i], a[2 * i - 1]) == 1 then
    redis.call('HINCRBY', KEYS[i], a[2 * i - 1], a[2 * i])
  end
end
return 1
"""

_USED = """
local out = {}
for i = 1, #KEYS do
  local index, count = tonumber(ARGV[2 * i - 1]), tonumber(ARGV[2 * i])
  local flat = redis.call('HGETALL', KEYS[i])
  local sum = 0
  for j = 1, #flat, 2 do
    if tonumber(flat[j]) > index - count then sum = sum + tonumber(flat[j + 1]) end
  end
  out[i] = sum
end
return out
"""


class RedisCounters:
    shared = True

    def __init__(self, store: RedisStore) -> None:
        self.store = store
        self.prefix = store.prefix + "limits:"
        client = store.client
        self._reserve = client.register_script(_RESERVE)
        self._settle = client.register_script(_SETTLE)
        self._used = client.register_script(_USED)
        self._pending: dict[tuple[str, int], int] = {}  # (counter key, bucket) -> correction to apply
        self._flusher: asyncio.Task[None] | None = None

    def _down(self, exc: RedisError) -> CountersDown:
        return CountersDown(f"Redis at {self.store.where}", type(exc).__name__)

    def _take(self) -> tuple[list[str], str, dict[tuple[str, int], int]]:
        pending, self._pending = self._pending, {}
        return [k for k, _ in pending], ",".join(f"{b},{d}" for (_, b), d in pending.items()), pending

    def _put_back(self, pending: dict[tuple[str, int], int]) -> None:
        """Corrections not applied (Redis failed): kept for the next try, within a bound."""
        for where, delta in pending.items():
            if len(self._pending) >= MAX_PENDING:
                log.warning("dropping usage corrections: Redis at %s has been unreachable", self.store.where)
                return
            self._pending[where] = self._pending.get(where, 0) + delta

    async def reserve(self, charges: Sequence[Charge], now: float, identity: str) -> Reservation:
        settled, corrections, pending = self._take()
        keys = [self.prefix + c.key for c in charges] + [self.prefix + "identities"] + settled
        packed = ",".join(
            f"{c.index},{c.buckets},{-1 if c.limit is None else c.limit},{c.amount},{c.ttl_seconds(now)}000"
            for c in charges
        )
        try:
            fits, used, *held = await self._reserve(
                keys=keys, args=[packed, identity, len(charges), corrections]
            )
        except RedisError as exc:
            self._put_back(pending)
            raise self._down(exc) from None
        buckets = {}
        for c, flat in zip(charges, held[0], strict=True) if held else ():  # a refusal: its Retry-After
            if c.buckets > 1:
                buckets[c.key] = {int(flat[j]): int(flat[j + 1]) for j in range(0, len(flat), 2)}
        outcomes = [Outcome(c, int(u)) for c, u in zip(charges, used, strict=True)]
        return Reservation(bool(fits), outcomes, buckets)

    async def settle(self, adjustments: Sequence[tuple[Charge, int]]) -> None:
        """Queue the corrections for the next reservation; sent on their own if none comes soon."""
        for c, delta in adjustments:
            where = (self.prefix + c.key, c.index)
            self._pending[where] = self._pending.get(where, 0) + delta
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(self._flush_later())

    async def _flush_later(self) -> None:
        await asyncio.sleep(SETTLE_DELAY)
        try:
            await self.flush()
        except CountersDown as exc:
            log.warning("could not settle usage: %s", exc)

    async def flush(self) -> None:
        """Send the queued corrections now."""
        keys, corrections, pending = self._take()
        if not keys:
            return
        try:
            await self._settle(keys=keys, args=[corrections])
        except RedisError as exc:
            self._put_back(pending)
            raise self._down(exc) from None

    async def used(self, charges: Sequence[Charge]) -> list[int]:
        if not charges:
            return []
        await self.flush()
        args: list[Any] = []
        for c in charges:
            args += [c.index, c.buckets]
        try:
            values = await self._used(keys=[self.prefix + c.key for c in charges], args=args)
        except RedisError as exc:
            raise self._down(exc) from None
        return [int(v) for v in values]

    async def identities(self) -> list[str]:
        try:
            names = await self.store.client.hkeys(self.prefix + "identities")
        except RedisError as exc:
            raise self._down(exc) from None
        return sorted(n.decode() if isinstance(n, bytes) else str(n) for n in names)
