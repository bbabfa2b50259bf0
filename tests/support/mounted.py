"""Folders laid out as the kubelet mounts a Secret, for services that read their keys from files."""

from __future__ import annotations

from pathlib import Path


def write_keys(folder: Path, keys: dict[str, str]) -> None:
    """As the kubelet lays out a mounted Secret: ``..data`` swapped atomically, files linking into it."""
    folder.mkdir(exist_ok=True)
    generation = folder / f"..2026_{len(list(folder.glob('..2026_*'))):04d}"
    generation.mkdir()
    for name, key in keys.items():
        (generation / name).write_text(key + "\n")
    tmp = folder / "..data_tmp"
    tmp.symlink_to(generation.name)
    tmp.replace(folder / "..data")
    for entry in folder.iterdir():
        if not entry.name.startswith(".") and entry.name not in keys:
            entry.unlink()
    for name in keys:
        link = folder / name
        if not link.is_symlink():
            link.symlink_to(f"..data/{name}")
