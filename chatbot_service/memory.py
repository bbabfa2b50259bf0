"""What this process may spend on conversations, and giving freed memory back. Edge: reads cgroup and
/proc-style limits, calls libc.

A pod's memory limit reaches the process as ``KUBECHAT_MEMORY_LIMIT`` (bytes; the operator passes it
with the downward API, ``resourceFieldRef: limits.memory``), or is read from the cgroup. The session
store gets what is left after the idle process and the work in flight, with headroom for what Python
adds to every byte it stores (see ``store_budget``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import os
from collections.abc import Mapping
from pathlib import Path

MiB = 1 << 20
#: The process before it stores anything (interpreter, FastAPI, uvicorn, httpx2, one o200k_base
#: tokenizer) as the chatbot image runs it, on jemalloc: measured by bench/service_memory.py, ~90 MiB
#: VmRSS when ready and ~90.5 MiB after its first requests (the test's own bot: 88.9-90.8 and
#: 90.3-91.5); with margin. On glibc's malloc (a dev venv) it is ~100 MiB: 4 MiB more than counted
#: here, which the store's half share absorbs. tests/integration/test_service_memory.py holds a
#: served bot, with the image's allocator, under it.
BASELINE = 96 * MiB
#: Requests in flight: 1 MiB bodies, a prompt of up to the context window, a reply, parsed copies.
IN_FLIGHT = 32 * MiB
#: What the store counts (``sys.getsizeof`` of each string and object) is not all RSS: allocator
#: rounding and fragmentation add to it. Keep the stored bytes to this share of what is left.
STORE_SHARE = 0.5
#: Without a known limit (a laptop, no cgroup limit): what a 256 MiB pod would get.
DEFAULT_LIMIT = 256 * MiB
#: Never less than this, whatever the arithmetic says: a bot must keep a few conversations.
MIN_STORE = 8 * MiB

_CGROUP_FILES = (Path("/sys/fs/cgroup/memory.max"), Path("/sys/fs/cgroup/memory/memory.limit_in_bytes"))


def memory_limit(environ: Mapping[str, str]) -> int | None:
    """The container's memory limit in bytes, if one is known."""
    value = environ.get("KUBECHAT_MEMORY_LIMIT", "").strip()
    if value.isdigit() and int(value) > 0:
        return int(value)
    for path in _CGROUP_FILES:
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 1 << 50:  # cgroup v1 says "no limit" with a huge number
            return int(text)
    return None


def store_budget(limit: int | None) -> int:
    """Bytes the in-memory session store may hold: (limit - baseline - in flight) x share.

    For the default 256 MiB limit: (256 - 96 - 32) x 0.5 = 64 MiB of stored messages.
    """
    usable = (limit or DEFAULT_LIMIT) - BASELINE - IN_FLIGHT
    return max(MIN_STORE, int(usable * STORE_SHARE))


def release_freed() -> None:
    """Collect garbage and hand free heap pages back to the system (glibc's ``malloc_trim``), after
    a load that left large temporaries behind; a no-op where libc has no such call."""
    gc.collect()
    name = ctypes.util.find_library("c")
    if not name or os.name != "posix":
        return
    try:
        trim = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return
    trim(0)
