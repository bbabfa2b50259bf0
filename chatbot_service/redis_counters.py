"""Limit counters in Redis, shared by every replica of a bot. Edge: network I/O.

Each counter is a hash under ``kubechat:<bot>:limits:<identity>:<metric>:<window>`` whose fields are
bucket numbers. One Lua script checks every charge of a request and adds all of them or none, so two
replicas cannot both take the last tokens of a budget (no read-modify-write from Python). Settling
corrects only buckets that still exist. The same arithmetic as the memory counters (``limits``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from redis.exceptions import RedisError

from chatbot_service.counters import CountersDown, Reservation
from chatbot_service.limits import Charge, Outcome
from chatbot_service.redis_store import RedisStore

# ARGV: now-independent, per charge: index, buckets, limit (-1: none), amount, ttl ms; then the identity.
_RESERVE = """
local n = #KEYS - 1
local used, held, fits = {}, {}, true
for i = 1, n do
  local b = (i - 1) * 5
  local index, count = tonumber(ARGV[b + 1]), tonumber(ARGV[b + 2])
  local limit, amount = tonumber(ARGV[b + 3]), tonumber(ARGV[b + 4])
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
if fits then
  for i = 1, n do
    local b = (i - 1) * 5
    redis.call('HINCRBY', KEYS[i], ARGV[b + 1], ARGV[b + 4])
    redis.call('PEXPIRE', KEYS[i], ARGV[b + 5])
  end
  redis.call('HSET', KEYS[n + 1], ARGV[n * 5 + 1], 1)
end
return {fits and 1 or 0, used, held}
"""

_SETTLE = """
for i = 1, #KEYS do
  if redis.call('HEXISTS', KEYS[i], ARGV[2 * i - 1]) == 1 then
    redis.call('HINCRBY', KEYS[i], ARGV[2 * i - 1], ARGV[2 * i])
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

    def _down(self, exc: RedisError) -> CountersDown:
        return CountersDown(f"Redis at {self.store.where}", type(exc).__name__)

    async def reserve(self, charges: Sequence[Charge], now: float, identity: str) -> Reservation:
        keys = [self.prefix + c.key for c in charges] + [self.prefix + "identities"]
        args: list[Any] = []
        for c in charges:
            args += [
                c.index,
                c.buckets,
                -1 if c.limit is None else c.limit,
                c.amount,
                c.ttl_seconds(now) * 1000,
            ]
        args.append(identity)
        try:
            fits, used, held = await self._reserve(keys=keys, args=args)
        except RedisError as exc:
            raise self._down(exc) from None
        buckets = {}
        for c, flat in zip(charges, held, strict=True):
            if c.buckets > 1:
                buckets[c.key] = {int(flat[j]): int(flat[j + 1]) for j in range(0, len(flat), 2)}
        outcomes = [Outcome(c, int(u)) for c, u in zip(charges, used, strict=True)]
        return Reservation(bool(fits), outcomes, buckets)

    async def settle(self, adjustments: Sequence[tuple[Charge, int]]) -> None:
        keys = [self.prefix + c.key for c, _ in adjustments]
        args: list[Any] = []
        for c, delta in adjustments:
            args += [c.index, delta]
        try:
            await self._settle(keys=keys, args=args)
        except RedisError as exc:
            raise self._down(exc) from None

    async def used(self, charges: Sequence[Charge]) -> list[int]:
        if not charges:
            return []
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
