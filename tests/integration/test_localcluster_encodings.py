"""Where the images' tiktoken encodings come from (localcluster/encodings.py), against a real HTTP mirror
on loopback: the files fetched once and checked against the pinned SHA-256, a wrong file refused, a mirror
that is down or lacks a file a clear one-line error. The real public location is never contacted: every
test names its mirror.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from localcluster import encodings
from localcluster.errors import FetchError

REPO = Path(__file__).resolve().parents[2]
UseMirror = Callable[[str], None]
LOCAL_COPY = Path(os.environ["KUBECHAT_TIKTOKEN_DIR"])  # the one tests/conftest.py names


class Mirror:
    """A static file server on loopback that records the paths asked for."""

    def __init__(self, root: Path) -> None:
        self.root, self.requests = root, list[str]()
        mirror = self

        class Handler(SimpleHTTPRequestHandler):
            def do_GET(self) -> None:
                mirror.requests.append(self.path)
                super().do_GET()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(root)))
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/encodings/"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)


@pytest.fixture
def mirror(tmp_path: Path) -> Iterator[Mirror]:
    served = tmp_path / "mirror"
    (served / "encodings").mkdir(parents=True)
    for name in encodings.PINNED:
        shutil.copyfile(LOCAL_COPY / name, served / "encodings" / name)
    server = Mirror(served)
    server.thread.start()
    try:
        yield server
    finally:
        server.server.shutdown()
        server.server.server_close()


@pytest.fixture
def fetch_from(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Callable[[str], None]:
    """An empty cache, no local copy: the encodings must come from the mirror given."""
    monkeypatch.setenv("KUBECHAT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("KUBECHAT_TIKTOKEN_DIR")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")

    def use(url: str) -> None:
        monkeypatch.setenv("KUBECHAT_TIKTOKEN_MIRROR", url)

    return use


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_fetched_once_from_the_mirror_checked_and_cached(mirror: Mirror, fetch_from: UseMirror) -> None:
    fetch_from(mirror.url)
    folder = encodings.encodings_dir()
    for name in encodings.PINNED:
        assert (folder / name).read_bytes() == (LOCAL_COPY / name).read_bytes()
    assert sorted(mirror.requests) == sorted(f"/encodings/{name}" for name in encodings.PINNED)
    assert encodings.encodings_dir() == folder
    assert len(mirror.requests) == len(encodings.PINNED), "a second use fetched again"
    assert sorted(p.name for p in folder.iterdir()) == sorted(encodings.PINNED), "partial files left"


def test_a_file_whose_hash_differs_is_refused(mirror: Mirror, fetch_from: UseMirror) -> None:
    tampered = mirror.root / "encodings" / "o200k_base.tiktoken"
    tampered.write_bytes(tampered.read_bytes()[:-10] + b"tampered!\n")
    fetch_from(mirror.url)
    with pytest.raises(FetchError, match=r"o200k_base\.tiktoken is not the published .*refused") as raised:
        encodings.encodings_dir()
    assert encodings.PINNED["o200k_base.tiktoken"] in str(raised.value)
    assert not (encodings.cached_dir() / "o200k_base.tiktoken").exists()
    assert [p.name for p in encodings.cached_dir().iterdir()] == ["cl100k_base.tiktoken"]


def test_a_mirror_that_is_down_or_lacks_a_file_is_one_clear_error(
    mirror: Mirror, fetch_from: UseMirror
) -> None:
    fetch_from(f"http://127.0.0.1:{closed_port()}/encodings")
    with pytest.raises(FetchError, match=r"fetching http://127\.0\.0\.1:\d+/encodings/\S+ failed: .*refused"):
        encodings.encodings_dir()
    (mirror.root / "encodings" / "cl100k_base.tiktoken").unlink()
    fetch_from(mirror.url)
    with pytest.raises(FetchError, match=r"cl100k_base\.tiktoken failed: HTTP 404") as raised:
        encodings.encodings_dir()
    assert "KUBECHAT_TIKTOKEN_MIRROR" in str(raised.value)


def test_a_local_copy_is_used_as_is_and_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBECHAT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("KUBECHAT_TIKTOKEN_MIRROR", f"http://127.0.0.1:{closed_port()}/")
    assert encodings.encodings_dir() == LOCAL_COPY
    assert not encodings.cached_dir().exists(), "a local copy must not be fetched or copied"
    wrong = tmp_path / "wrong"
    shutil.copytree(LOCAL_COPY, wrong)
    (wrong / "cl100k_base.tiktoken").write_bytes(b"not an encoding\n")
    monkeypatch.setenv("KUBECHAT_TIKTOKEN_DIR", str(wrong))
    with pytest.raises(FetchError, match=r"cl100k_base\.tiktoken is not the published"):
        encodings.encodings_dir()


def test_the_image_build_fails_in_one_line_when_the_encodings_cannot_be_had(tmp_path: Path) -> None:
    """What a user without a local copy and without a reachable mirror sees: no traceback."""
    env = {
        "PATH": "/usr/bin:/bin",
        "KUBECHAT_CACHE": str(tmp_path / "cache"),
        "KUBECHAT_TIKTOKEN_MIRROR": f"http://127.0.0.1:{closed_port()}/",
        "NO_PROXY": "127.0.0.1",
    }
    done = subprocess.run(
        [sys.executable, "-S", "-m", "localcluster", "images", "build", "chatbot"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    errors = [line for line in done.stderr.splitlines() if not line.startswith("[localcluster]")]
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert len(errors) == 1 and "failed" in errors[0] and "KUBECHAT_TIKTOKEN_DIR" in errors[0], done.stderr
