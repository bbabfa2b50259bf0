from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import SHARED


def test_seeded_encodings_load_offline(tmp_path: Path) -> None:
    """A fresh process with only the seeded folder counts tokens (no network is reachable here)."""
    target = tmp_path / "cache"
    seeded = subprocess.run(
        [
            sys.executable,
            "-m",
            "chatbot_service.cli",
            "seed-encodings",
            "--from",
            str(SHARED / "tiktoken"),
            "--to",
            str(target),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert len(seeded.stdout.splitlines()) == 2
    code = "import tiktoken; print(len(tiktoken.get_encoding('o200k_base').encode('hello world')))"
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={"TIKTOKEN_CACHE_DIR": str(target)},
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "2"


def test_a_missing_source_is_a_clear_cli_error(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "chatbot_service.cli",
            "seed-encodings",
            "--from",
            str(tmp_path),
            "--to",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 1 and "cl100k_base encoding cannot be seeded" in done.stderr
    assert "Traceback" not in done.stderr
