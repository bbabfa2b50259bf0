"""Progress a person can follow: what is being made, how far along, and how long it took.

Long steps (a Go build, an image) print one line when they start, a heartbeat while they run (so a quiet
terminal never looks hung) and one line with the time taken; the tools' own chatter (`go: downloading ...`,
pip's output) goes to a log file named in the error if the step fails.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

HEARTBEAT = 30.0  # seconds between "still ..." lines


def say(message: str) -> None:
    print(f"[localcluster] {message}", file=sys.stderr, flush=True)


@contextmanager
def step(what: str, heartbeat: float = HEARTBEAT) -> Iterator[None]:
    """`what ...`, `... still <what> (N s)` every `heartbeat` seconds, then `<what>: done in N s`."""
    started = time.monotonic()
    say(f"{what} ...")
    done = threading.Event()

    def beat() -> None:
        while not done.wait(heartbeat):
            say(f"... still {what} ({time.monotonic() - started:.0f} s)")

    thread = threading.Thread(target=beat, name="progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
    say(f"{what}: done in {time.monotonic() - started:.1f} s")
