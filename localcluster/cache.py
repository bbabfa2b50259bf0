"""The one cache of the local cluster (binaries, images, encodings) and the one lock that guards it.

Everything here is slow to make and the same for every checkout, so it lives outside the work tree
(`$KUBECHAT_CACHE`, default `~/.cache/kubechat`), shared by all of them and by concurrent runs. One file
lock serialises every build into it: two pytest sessions must not both spend minutes building the same
thing, nor write the same file. The lock is re-entrant within a process, so a build that needs another
(an image needs its wheelhouse) can take it again.
"""

from __future__ import annotations

import fcntl
import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

_guard = threading.RLock()
_depth = 0
_held: IO[str] | None = None


def cache_dir() -> Path:
    """The cache root: `$KUBECHAT_CACHE`, else `~/.cache/kubechat`."""
    return Path(os.environ.get("KUBECHAT_CACHE", "~/.cache/kubechat")).expanduser()


def lock_path() -> Path:
    return cache_dir() / "build.lock"


@contextmanager
def locked() -> Iterator[None]:
    """Hold the cache's build lock (across processes; re-entrant in this one). Says so when it must wait."""
    global _depth, _held
    with _guard:
        if _depth == 0:
            path = lock_path()
            path.parent.mkdir(parents=True, exist_ok=True)
            lock = path.open("w")
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                print(f"waiting for another build to release {path}", file=sys.stderr, flush=True)
                fcntl.flock(lock, fcntl.LOCK_EX)
            _held = lock
        _depth += 1
        try:
            yield
        finally:
            _depth -= 1
            if _depth == 0 and _held is not None:
                fcntl.flock(_held, fcntl.LOCK_UN)
                _held.close()
                _held = None


def partial_path(target: Path) -> Path:
    """Where to write `target` before renaming it into place (unique per process, same directory)."""
    return target.with_name(f".{target.name}.{os.getpid()}.partial")
