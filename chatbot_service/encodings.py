"""Offline tiktoken encodings: lay the BPE files out where tiktoken looks, so nothing is downloaded.

tiktoken caches each encoding in ``$TIKTOKEN_CACHE_DIR`` under the SHA-1 of its download URL and
checks the file's SHA-256 on load. Images and air-gapped clusters carry the files; this puts them
in place (``kubechat seed-encodings --from DIR --to DIR``).
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

ENCODINGS = ("cl100k_base", "o200k_base")
DOWNLOAD_URL = "https://openaipublic.blob.core.windows.net/encodings/{name}.tiktoken"


def cache_name(encoding: str) -> str:
    return hashlib.sha1(DOWNLOAD_URL.format(name=encoding).encode()).hexdigest()


def seed(source: Path, target: Path) -> list[Path]:
    """Copy ``<source>/<name>.tiktoken`` for each encoding into ``target`` under tiktoken's cache name."""
    target.mkdir(parents=True, exist_ok=True)
    written = []
    for name in ENCODINGS:
        origin = source / f"{name}.tiktoken"
        if not origin.is_file():
            raise FileNotFoundError(f"{origin} is missing: the {name} encoding cannot be seeded")
        dest = target / cache_name(name)
        if not dest.exists() or dest.stat().st_size != origin.stat().st_size:
            shutil.copyfile(origin, dest)
        written.append(dest)
    return written
