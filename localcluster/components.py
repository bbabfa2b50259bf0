"""Run control-plane processes: spawn with a log file, wait until healthy, stop by PID.

Every process is addressed by the PID we recorded, never by name, so a developer's other clusters and
unrelated processes are never touched.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from localcluster.errors import ComponentError

_PR_SET_PDEATHSIG = 1


@dataclass
class Process:
    """A spawned component. `popen` is set only in the process that spawned it (then it can reap it)."""

    name: str
    pid: int
    argv: list[str]
    log: Path
    popen: subprocess.Popen[bytes] | None = None


def free_ports(count: int) -> list[int]:
    """Ports the kernel picks on loopback; all sockets are held together so the ports are distinct."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _die_with_parent() -> None:
    """Runs in the child before exec: the kernel kills it when the spawner dies, even by SIGKILL.

    SIGKILL, not SIGTERM: with everyone terminating at once the API server's graceful shutdown waits on the
    vanished etcd for minutes, and the data is throwaway anyway.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def spawn(
    name: str,
    argv: Sequence[str],
    log_dir: Path,
    env: Mapping[str, str] | None = None,
    tie_to_parent: bool = False,
    wrapper: Sequence[str] = (),
) -> Process:
    """Start `argv` in its own session (so a Ctrl-C meant for pytest does not hit it), logging to a file.

    `wrapper` is a prefix that execs `argv` in place (e.g. nsenter): the PID and the recorded argv stay the
    program's own, so `is_running` still recognises it.
    """
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / f"{name}.log"
    with log.open("ab") as out:
        popen = subprocess.Popen(
            [*wrapper, *argv],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            start_new_session=True,
            preexec_fn=_die_with_parent if tie_to_parent else None,
        )
    return Process(name, popen.pid, list(argv), log, popen)


def log_tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as err:
        return f"(no log: {err})"
    return "\n".join(text.splitlines()[-lines:])


def is_running(process: Process) -> bool:
    """True while the process exists, is no zombie and still runs the program we started (PID reuse guard)."""
    if process.popen is not None:
        return process.popen.poll() is None
    try:
        stat = Path(f"/proc/{process.pid}/stat").read_text()
        cmdline = Path(f"/proc/{process.pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    state = stat.rsplit(")", 1)[1].split()[0]
    return state not in ("Z", "X") and cmdline[0].decode(errors="replace") == process.argv[0]


def wait_healthy(process: Process, check: Callable[[], bool], timeout: float, what: str = "healthy") -> float:
    """Poll `check` until it returns True; fail fast if the process exits. Returns seconds waited."""
    started = time.monotonic()
    deadline = started + timeout
    last_error = "no check has completed yet"
    while True:
        if not is_running(process):
            code = process.popen.returncode if process.popen is not None else "unknown"
            raise ComponentError(
                f"{process.name} exited (status {code}) before becoming {what}; "
                f"last lines of {process.log}:\n{log_tail(process.log)}"
            )
        try:
            if check():
                return time.monotonic() - started
            last_error = "check returned False"
        except Exception as err:  # any failure of the probe just means "not yet"
            last_error = f"{type(err).__name__}: {err}"
        if time.monotonic() > deadline:
            raise ComponentError(
                f"{process.name} not {what} after {timeout:.0f} s (last probe: {last_error}); "
                f"last lines of {process.log}:\n{log_tail(process.log)}"
            )
        time.sleep(0.1)


def _signal(process: Process, sig: signal.Signals) -> None:
    if is_running(process):
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, sig)


def _wait_gone(processes: Sequence[Process], timeout: float) -> list[Process]:
    deadline = time.monotonic() + timeout
    remaining = list(processes)
    while remaining and time.monotonic() < deadline:
        remaining = [p for p in remaining if is_running(p)]
        if remaining:
            time.sleep(0.05)
    return remaining


def stop(processes: Sequence[Process], timeout: float = 10.0) -> None:
    """SIGTERM the group together, SIGKILL whatever is left after `timeout`, then reap our own children."""
    for process in processes:
        _signal(process, signal.SIGTERM)
    for process in _wait_gone(processes, timeout):
        _signal(process, signal.SIGKILL)
    _wait_gone(processes, 5.0)
    for process in processes:
        if process.popen is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.popen.wait(timeout=5.0)


def rss_kib(pid: int) -> int | None:
    """Resident memory of a process from /proc (VmRSS), for reporting."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None
