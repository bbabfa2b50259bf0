"""The tiktoken encodings the chat service image carries: a local copy when given, else fetched once.

Pods may have no way out to download them, so the image carries them. Where they come from:
- `$KUBECHAT_TIKTOKEN_DIR`, a folder holding `<name>.tiktoken` (e.g. a copy kept beside the repo), or
- `$KUBECHAT_TIKTOKEN_MIRROR` (default: tiktoken's own public location), fetched once into the cache.
Air-gapped users point the mirror at their own server. Either way every file must match the SHA-256
pinned here (the values tiktoken itself checks on load), so a wrong or tampered file never gets in.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import urllib.error
import urllib.request
from pathlib import Path

from localcluster.cache import cache_dir, locked, partial_path
from localcluster.errors import FetchError
from localcluster.progress import step

#: tiktoken's public location (tiktoken_ext/openai_public.py); `$KUBECHAT_TIKTOKEN_MIRROR` overrides it.
DEFAULT_MIRROR = "https://openaipublic.blob.core.windows.net/encodings/"
#: The encodings the chat service uses, with the SHA-256 tiktoken pins for each.
PINNED = {
    "cl100k_base.tiktoken": "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
    "o200k_base.tiktoken": "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
}
LOCAL_VARIABLE, MIRROR_VARIABLE = "KUBECHAT_TIKTOKEN_DIR", "KUBECHAT_TIKTOKEN_MIRROR"
TIMEOUT = 60.0


def sha256(path: Path) -> str:
    with path.open("rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


def cached_dir() -> Path:
    return cache_dir() / "tiktoken"


def encodings_dir() -> Path:
    """A folder holding every pinned encoding, each checked: the local copy if given, else the cache
    (fetching what it lacks from the mirror)."""
    local = os.environ.get(LOCAL_VARIABLE)
    if local:
        folder = Path(local).expanduser()
        for name, expected in PINNED.items():
            path = folder / name
            if not path.is_file():
                raise FetchError(
                    f"{path} is missing (${LOCAL_VARIABLE} names a folder holding {', '.join(PINNED)})"
                )
            if sha256(path) != expected:
                raise FetchError(
                    f"{path} is not the published {name} (its SHA-256 differs from the pinned one)"
                )
        return folder
    folder = cached_dir()
    with locked():
        missing = [name for name, expected in PINNED.items() if not _is_cached(folder / name, expected)]
        if missing:
            mirror = os.environ.get(MIRROR_VARIABLE) or DEFAULT_MIRROR
            folder.mkdir(parents=True, exist_ok=True)
            with step(f"fetching the tiktoken encodings {', '.join(missing)} from {mirror}"):
                for name in missing:
                    fetch(mirror, name, folder / name)
    return folder


def _is_cached(path: Path, expected: str) -> bool:
    return path.is_file() and sha256(path) == expected


def fetch(mirror: str, name: str, target: Path) -> None:
    """Download `mirror/name` to `target` if and only if its SHA-256 is the pinned one."""
    url = mirror.rstrip("/") + "/" + name
    partial = partial_path(target)
    what_to_do = (
        f"set ${MIRROR_VARIABLE} to a reachable copy, or ${LOCAL_VARIABLE} to a folder holding the files"
    )
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT) as response, partial.open("wb") as out:
            shutil.copyfileobj(response, out)
        got = sha256(partial)
        if got != PINNED[name]:
            raise FetchError(
                f"{url} is not the published {name}: its SHA-256 is {got}, the pinned one {PINNED[name]} "
                f"(refused; {what_to_do})"
            )
        partial.rename(target)
    except urllib.error.HTTPError as err:
        raise FetchError(f"fetching {url} failed: HTTP {err.code} {err.reason} ({what_to_do})") from None
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", None) or err
        raise FetchError(f"fetching {url} failed: {reason} ({what_to_do})") from None
    finally:
        partial.unlink(missing_ok=True)
