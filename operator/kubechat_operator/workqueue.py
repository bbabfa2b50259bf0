"""A work queue of bot keys with client-go's semantics: the one place triggers meet the reconcile.

- ``add`` marks a key dirty; a key is queued at most once, however often it is added.
- A key is handed to one worker at a time; added again while being processed, it is queued once more
  when that worker calls ``done``, so no change is lost and no two reconciles of one bot overlap.
- ``retry`` re-adds a key after an exponential, per-key backoff; ``forget`` resets it after a success.
- ``add_after`` schedules a key (periodic resync); the earliest schedule of a key wins.
- ``drop`` forgets everything about a key (its bot was deleted), so the maps stay as large as the set
  of bots that exist.

No I/O; threads block in ``get`` on a condition variable.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


class WorkQueue(Generic[K]):
    def __init__(
        self,
        base_delay: float = 0.25,
        max_delay: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.base_delay, self.max_delay, self._clock = base_delay, max_delay, clock
        self._cond = threading.Condition()
        self._queue: deque[K] = deque()
        self._dirty: set[K] = set()
        self._processing: set[K] = set()
        self._waiting: dict[K, float] = {}  # key -> when it is due
        self._heap: list[tuple[float, int, K]] = []  # (due, tie-breaker, key); stale entries skipped
        self._ties = itertools.count()
        self._failures: dict[K, int] = {}
        self._closed = False

    # ---- adding ----------------------------------------------------------------------------------------
    def add(self, key: K) -> None:
        with self._cond:
            self._add(key)

    def _add(self, key: K) -> None:
        if self._closed or key in self._dirty:
            return
        self._dirty.add(key)
        if key not in self._processing:
            self._queue.append(key)
            self._cond.notify()

    def add_after(self, key: K, delay: float) -> None:
        if delay <= 0:
            self.add(key)
            return
        with self._cond:
            due = self._clock() + delay
            if self._closed or self._waiting.get(key, due + 1) <= due:
                return
            self._waiting[key] = due
            heapq.heappush(self._heap, (due, next(self._ties), key))
            self._cond.notify()  # a waiting worker may have to wake earlier now

    def retry(self, key: K) -> float:
        """Add ``key`` again after its backoff (base, 2x base, ... up to the cap); returns the delay."""
        with self._cond:
            failures = self._failures.get(key, 0)
            self._failures[key] = failures + 1
        delay: float = min(self.base_delay * 2.0**failures, self.max_delay)
        self.add_after(key, delay)
        return delay

    def forget(self, key: K) -> None:
        """The key succeeded: its next failure starts the backoff from the beginning."""
        with self._cond:
            self._failures.pop(key, None)

    def drop(self, key: K) -> None:
        """Its bot is gone: no backoff, no schedule. (A copy already queued is handed out once more and
        finds nothing to do.)"""
        with self._cond:
            self._failures.pop(key, None)
            if self._waiting.pop(key, None) is not None and len(self._heap) > 2 * len(self._waiting) + 64:
                self._heap = [e for e in self._heap if self._waiting.get(e[2]) == e[0]]
                heapq.heapify(self._heap)

    # ---- taking ----------------------------------------------------------------------------------------
    def get(self) -> K | None:
        """The next key to reconcile, waiting for one; None once the queue is closed."""
        with self._cond:
            while True:
                self._promote_due()
                if self._queue:
                    key = self._queue.popleft()
                    self._dirty.discard(key)
                    self._processing.add(key)
                    return key
                if self._closed:
                    return None
                timeout = self._heap[0][0] - self._clock() if self._heap else None
                self._cond.wait(timeout)

    def done(self, key: K) -> None:
        with self._cond:
            self._processing.discard(key)
            if key in self._dirty and not self._closed:
                self._queue.append(key)
                self._cond.notify()

    def _promote_due(self) -> None:
        now = self._clock()
        while self._heap and self._heap[0][0] <= now:
            due, _, key = heapq.heappop(self._heap)
            if self._waiting.get(key) == due:
                del self._waiting[key]
                self._add(key)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def sizes(self) -> dict[str, int]:
        """How much the queue holds, for tests and logs: each map should be bounded by the live bots."""
        with self._cond:
            return {
                "queued": len(self._queue),
                "dirty": len(self._dirty),
                "processing": len(self._processing),
                "waiting": len(self._waiting),
                "heap": len(self._heap),
                "failures": len(self._failures),
            }
