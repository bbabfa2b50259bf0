"""How long containerd takes to import (and unpack) OCI image archives, side by side, for choosing how the
images are laid out (one uncompressed layer, a shared base layer, compressed layers).

Each round starts a private containerd (its own root, state and socket under /tmp, the CRI plugin off),
imports every archive given in the order given, in a fresh content store each time, and records each
import's wall time; rounds alternate the order so neither archive always goes first. Needs root, containerd
and ctr. Run on a shared machine, so read the ratios, not the seconds:

    python3 -m bench.image_import --rounds 3 A.oci.tar B.oci.tar    (from the repository root)
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
import statistics
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path

from localcluster.node import standalone_containerd


def one_round(archives: list[Path]) -> dict[Path, float]:
    folder = Path(tempfile.mkdtemp(prefix="ctd-bench-", dir="/tmp"))
    proc, ctr = standalone_containerd(folder)
    times = {}
    try:
        for archive in archives:
            started = time.monotonic()
            done = subprocess.run([*ctr, "images", "import", str(archive)], capture_output=True, text=True)
            if done.returncode != 0:
                raise SystemExit(f"ctr images import {archive} failed: {done.stderr.strip()}")
            times[archive] = time.monotonic() - started
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        shutil.rmtree(folder)
    return times


def unpacked_bytes(archive: Path) -> int:
    """What the layers hold once decompressed (the bytes containerd writes), summed over the manifest."""
    total = 0
    with tarfile.open(archive) as outer:
        index = json.loads(_read(outer, "index.json"))
        manifest = json.loads(_read(outer, _blob(index["manifests"][0]["digest"])))
        for layer in manifest["layers"]:
            member = outer.extractfile(_blob(layer["digest"]))
            assert member is not None
            stream = gzip.GzipFile(fileobj=member) if layer["mediaType"].endswith("+gzip") else member
            while chunk := stream.read(1 << 20):
                total += len(chunk)
    return total


def _blob(digest: str) -> str:
    return "blobs/sha256/" + digest.removeprefix("sha256:")


def _read(tar: tarfile.TarFile, name: str) -> bytes:
    member = tar.extractfile(name)
    assert member is not None, name
    return member.read()


def main() -> None:
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=raw)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("archives", nargs="+", type=Path)
    args = parser.parse_args()
    results: dict[Path, list[float]] = {a: [] for a in args.archives}
    for number in range(args.rounds):
        order = args.archives if number % 2 == 0 else args.archives[::-1]
        for archive, seconds in one_round(order).items():
            results[archive].append(seconds)
    anchor = statistics.median(results[args.archives[0]])
    for archive, times in results.items():
        median = statistics.median(times)
        size, unpacked = archive.stat().st_size / 1e6, unpacked_bytes(archive) / 1e6
        print(
            f"{archive.name:32} {size:7.1f} MB ({unpacked:6.1f} MB unpacked)  median {median:6.2f} s  "
            f"({median / anchor:4.2f}x the first)  "
            f"rounds: {', '.join(f'{t:.2f}' for t in times)}"
        )


if __name__ == "__main__":
    main()
