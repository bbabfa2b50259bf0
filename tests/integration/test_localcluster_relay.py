"""The relay subprocess (localcluster/relay.py) that lets a process outside a real node's namespace reach
addresses inside it, checked on loopback: bytes both ways, half-close, one upstream connection per client
connection, and a target that is down closes the client's connection instead of hanging it. The e2e tests
use it across namespaces (the API server, ClusterIPs, pod IPs).
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from localcluster import relay


class EchoServer:
    """Echoes each connection's bytes back once the client half-closes; counts connections."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.sock.getsockname()[1])
        self.connections = 0
        self.thread = threading.Thread(target=self.serve, daemon=True)

    def serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            with conn:
                data = b""
                while chunk := conn.recv(65536):
                    data += chunk
                conn.sendall(data[::-1])


@pytest.fixture
def echo() -> Iterator[EchoServer]:
    server = EchoServer()
    server.thread.start()
    yield server
    server.sock.close()


def exchange(address: str, payload: bytes) -> bytes:
    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        conn.sendall(payload)
        conn.shutdown(socket.SHUT_WR)
        received = b""
        while chunk := conn.recv(65536):
            received += chunk
        return received


def test_bytes_go_both_ways_one_upstream_connection_per_client(echo: EchoServer, tmp_path: Path) -> None:
    forward = relay.start(("127.0.0.1", echo.port), tmp_path)
    try:
        assert forward.port != echo.port
        payload = bytes(range(256)) * 4096  # 1 MiB: more than one read and one write on each side
        assert exchange(forward.address, payload) == payload[::-1]
        assert exchange(forward.address, b"second") == b"dnoces"
        assert echo.connections == 2
    finally:
        forward.stop()
    with pytest.raises(ConnectionRefusedError):
        exchange(forward.address, b"after stop")


def test_a_target_that_is_down_closes_the_client_connection(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = int(probe.getsockname()[1])
    forward = relay.start(("127.0.0.1", closed), tmp_path)
    try:
        assert exchange(forward.address, b"") == b""  # closed, not left hanging
        assert "cannot connect to 127.0.0.1" in forward.process.log.read_text()
    finally:
        forward.stop()
