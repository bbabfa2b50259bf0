"""A TCP relay from one network namespace into another, so a process outside a real node's namespace (pytest,
a developer's shell) can reach what only exists inside it: the API server on the namespace's loopback, a
Service's ClusterIP, a pod IP.

It runs as a subprocess of its own (`python3 -m localcluster.relay`): it listens in one namespace and, for
each connection it accepts, opens a new one in the other (so kube-proxy balances relayed connections as it
would any client's) and copies bytes both ways until either side closes. Standard library only.

    python3 -m localcluster.relay --listen 127.0.0.1:0 --connect-netns /proc/PID/ns/net \\
        --connect 10.0.0.1:443 --port-file PORT_FILE
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from localcluster.components import Process, is_running, log_tail, spawn, stop
from localcluster.errors import ComponentError
from localcluster.node import network_of

REPO = Path(__file__).resolve().parents[1]
CONNECT_TIMEOUT = 10.0


@dataclass
class Relay:
    """A running relay: connect to `host:port` (in the caller's namespace) to reach `target`."""

    process: Process
    host: str
    port: int
    target: str

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def stop(self) -> None:
        stop([self.process])


def start(
    target: tuple[str, int],
    log_dir: Path,
    *,
    connect_netns: str | None = None,
    listen: tuple[str, int] = ("127.0.0.1", 0),
    listen_netns: str | None = None,
    tie_to_parent: bool = True,
) -> Relay:
    """Start a relay subprocess listening on `listen` (in `listen_netns`, else the caller's namespace) and
    forwarding to `target` (in `connect_netns`, else the caller's); return once it listens."""
    name = f"relay-{target[0]}-{target[1]}-{os.getpid()}-{time.monotonic_ns()}"
    port_file = log_dir / f"{name}.port"
    argv = [sys.executable, "-m", "localcluster.relay", "--listen", f"{listen[0]}:{listen[1]}"]
    argv += ["--connect", f"{target[0]}:{target[1]}", "--port-file", str(port_file)]
    argv += [*(["--listen-netns", listen_netns] if listen_netns else [])]
    argv += [*(["--connect-netns", connect_netns] if connect_netns else [])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    process = spawn(name, argv, log_dir, env, tie_to_parent)
    deadline = time.monotonic() + 10
    while not port_file.is_file() or not port_file.read_text().endswith("\n"):
        if not is_running(process) or time.monotonic() > deadline:
            stop([process])
            raise ComponentError(
                f"the relay to {target[0]}:{target[1]} did not start:\n{log_tail(process.log)}"
            )
        time.sleep(0.02)
    return Relay(process, listen[0], int(port_file.read_text()), f"{target[0]}:{target[1]}")


def _pump(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)


def _relay(client: socket.socket, netns: str | None, target: tuple[str, int]) -> None:
    try:
        with network_of(netns):  # this thread only, and only to make the socket
            upstream = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        upstream.settimeout(CONNECT_TIMEOUT)
        upstream.connect(target)
        upstream.settimeout(None)
    except OSError as err:
        print(f"cannot connect to {target[0]}:{target[1]}: {err}", file=sys.stderr, flush=True)
        client.close()
        return
    back = threading.Thread(target=_pump, args=(upstream, client), daemon=True)
    back.start()
    _pump(client, upstream)
    back.join()
    client.close()
    upstream.close()


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python3 -m localcluster.relay", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--listen", type=_address, required=True, metavar="HOST:PORT")
    parser.add_argument("--listen-netns", metavar="PATH", help="e.g. /proc/PID/ns/net (default: this one)")
    parser.add_argument("--connect", type=_address, required=True, metavar="HOST:PORT")
    parser.add_argument("--connect-netns", metavar="PATH", help="e.g. /proc/PID/ns/net (default: this one)")
    parser.add_argument("--port-file", type=Path, help="where to write the port it listens on")
    args = parser.parse_args(argv)
    with network_of(args.listen_netns):
        server = socket.create_server(args.listen, backlog=128)
    port = server.getsockname()[1]
    if args.port_file:
        partial = args.port_file.with_name(args.port_file.name + ".partial")
        partial.write_text(f"{port}\n")
        partial.rename(args.port_file)
    print(f"relaying {args.listen[0]}:{port} -> {args.connect[0]}:{args.connect[1]}", flush=True)
    while True:
        client, _ = server.accept()
        threading.Thread(target=_relay, args=(client, args.connect_netns, args.connect), daemon=True).start()


if __name__ == "__main__":
    sys.exit(main())
