"""Deadline-based polling for tests against an eventually consistent API (no fixed sleeps)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def eventually(check: Callable[[], T], timeout: float = 30.0, interval: float = 0.1, what: str = "") -> T:
    """Call `check` until it stops raising AssertionError (or any exception); return its result.

    On timeout the last failure is raised again, prefixed with what was awaited and for how long, so the
    message says what was observed rather than just "timed out".
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            return check()
        except Exception as err:
            if time.monotonic() >= deadline:
                label = f"{what}: " if what else ""
                raise AssertionError(f"{label}not true after {timeout:.0f} s; last observed: {err}") from err
        time.sleep(interval)
