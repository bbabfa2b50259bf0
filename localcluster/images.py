"""The chat service, operator and pause images as OCI archives: buildah runs the Dockerfiles as they are.

Machines that build and test this project have no Docker daemon and no registry, yet a kubelet node must run
its images. buildah (localcluster/buildah.py) runs `images/<kind>.Dockerfile` unchanged, without network.
What the Dockerfiles take from outside is made first, while the network is there:

- their `FROM ${PYTHON_IMAGE}` (python:3.11-slim-bookworm upstream) is a Debian rootfs made by mmdebstrap
  with Debian's python3 and pip, committed to buildah's store and passed as that build argument;
- pip finds the project's dependencies in a wheelhouse resolved beforehand by the base's own python (its
  markers are the image's, not the host's), bind-mounted, and is told not to use the index;
- the encodings are seeded into the context (`images/tiktoken/`), as docs/install.md tells a Docker user.

Equal inputs give equal digests: every timestamp is fixed (`--timestamp`, SOURCE_DATE_EPOCH for pip's
wheel and useradd) and every .pyc is hash-based, which also keeps them valid on a read-only root. Archives
are cached by a digest of their inputs. They load with `ctr -n k8s.io images import`.

Standard library only, so that it runs with a plain python3 before any venv exists:

    python3 -m localcluster images build chatbot|operator|pause|all [--tag dev] [--out DIR]
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tarfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from email.parser import HeaderParser
from pathlib import Path

from localcluster import cache
from localcluster.buildah import Store
from localcluster.errors import BuildError
from localcluster.imageinputs import (
    CONTEXT,
    ENCODINGS_CONTEXT,
    KINDS,
    REPO,
    TIMESTAMP,
    base_image,
    base_reference,
    base_rootfs,
    cache_dir,
    command,
    digest,
    needs_root,
    scratch,
    seed_encodings,
    tree_digest,
    wheelhouse,
)
from localcluster.progress import step

__all__ = [
    "KINDS",
    "PAUSE_REFERENCE",
    "TIMESTAMP",
    "ImageArchive",
    "build_image",
    "build_pause",
    "installed_distributions",
    "manifest",
    "wheelhouse",
]

IMAGES = REPO / "images"
PAUSE_REFERENCE = "docker.io/kubechat/pause:1"
# The wheelhouse is bind-mounted on the base's empty /mnt (a new mount point would stay in the image as an
# empty file or folder); pip reads these from the builder stage's ARGs.
WHEELHOUSE = "/mnt"
PIP_OFFLINE = {"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": f"{WHEELHOUSE} {WHEELHOUSE}/build-requires"}


@dataclass(frozen=True)
class ImageArchive:
    """An OCI image archive on disk and the name containerd gives it on import."""

    path: Path
    reference: str


def _store() -> Store:
    return Store(cache_dir() / "buildah", cache_dir() / "buildah.log")


# ---- the builds --------------------------------------------------------------------------------------------
def _buildah_version() -> str:
    """Part of every image's key: another buildah may write other bytes for the same Dockerfile."""
    executable = shutil.which("buildah")
    return command([executable, "--version"], "buildah --version") if executable else "no buildah"


def _cached(
    archive: ImageArchive, key: Iterable[str | bytes], build: Callable[[Store, Path], None], force: bool
) -> ImageArchive:
    """Return the archive if it was built from the same inputs; else build it (under the lock)."""
    inputs = digest([*key, _buildah_version()])
    stamp = archive.path.with_name(archive.path.name + ".inputs")
    with cache.locked():
        if not force and archive.path.is_file() and stamp.is_file() and stamp.read_text() == inputs:
            return archive
        needs_root()
        stamp.unlink(missing_ok=True)
        store = _store()
        with scratch() as work, step(f"building the image {archive.reference} (buildah)"):
            build(store, work)
            partial = archive.path.with_name(f".{archive.path.name}.partial")
            partial.unlink(missing_ok=True)
            archive.path.parent.mkdir(parents=True, exist_ok=True)
            try:
                store.push_archive(archive.reference, partial)
            finally:
                store.remove_image(archive.reference)
            partial.rename(archive.path)
        stamp.write_text(inputs)
    return archive


def build_image(
    kind: str, out_dir: Path | None = None, tag: str = "dev", force: bool = False
) -> ImageArchive:
    """Build (or reuse) `docker.io/kubechat/<kind>:<tag>` from images/<kind>.Dockerfile, as it is."""
    if kind not in KINDS:
        raise BuildError(f"unknown image {kind!r}: one of {', '.join(KINDS)}")
    dockerfile = IMAGES / f"{kind}.Dockerfile"
    ignorefile = dockerfile.with_name(dockerfile.name + ".dockerignore")
    reference = f"docker.io/kubechat/{kind}:{tag}"
    seed_encodings(REPO)  # first: without the encodings nothing else is worth fetching
    wheels = wheelhouse(kind)
    context = tree_digest(REPO, [REPO / name for name in (*CONTEXT, str(ENCODINGS_CONTEXT))])
    build_args = {
        "PYTHON_IMAGE": base_reference(base_rootfs()),
        "SOURCE_DATE_EPOCH": str(TIMESTAMP),
        **PIP_OFFLINE,
    }
    volumes = [f"{wheels}:{WHEELHOUSE}:ro"]
    key: list[str | bytes] = [reference, dockerfile.read_bytes(), ignorefile.read_bytes(), context]
    key += [json.dumps([build_args, volumes], sort_keys=True), str(TIMESTAMP)]

    def build(store: Store, work: Path) -> None:
        base_image(store)
        store.build(
            dockerfile,
            REPO,
            reference,
            build_args=build_args,
            volumes=volumes,
            timestamp=TIMESTAMP,
            ignorefile=ignorefile,
        )

    archive = ImageArchive((out_dir or cache_dir()) / f"{kind}-{tag}.oci.tar", reference)
    return _cached(archive, key, build, force)


def _go() -> str:
    go = shutil.which("go")
    if not go:
        raise BuildError("go is missing from PATH (the pause image is a static Go binary)")
    return go


def _architecture() -> str:
    machine = os.uname().machine
    architectures = {"x86_64": "amd64", "aarch64": "arm64"}
    if machine not in architectures:
        raise BuildError(f"no OCI architecture for {machine}")
    return architectures[machine]


def build_pause(out_dir: Path | None = None, force: bool = False) -> ImageArchive:
    """Build (or reuse) the kubelet's sandbox image: images/pause.Dockerfile around a static Go binary that
    waits and reaps zombies (built here first: a scratch image has no compiler)."""
    dockerfile, sources = IMAGES / "pause.Dockerfile", IMAGES / "pause"
    go_version = command([_go(), "version"], "go version")
    key: list[str | bytes] = [
        PAUSE_REFERENCE,
        dockerfile.read_bytes(),
        tree_digest(sources, [sources]),
        go_version,
    ]

    def build(store: Store, work: Path) -> None:
        context = work / "context"
        context.mkdir()
        env = {**os.environ, "CGO_ENABLED": "0", "GOOS": "linux", "GOARCH": _architecture()}
        env |= {"GOTOOLCHAIN": "local", "GOPROXY": "off", "GOFLAGS": ""}
        go_build = [
            _go(),
            "build",
            "-trimpath",
            "-ldflags=-s -w -buildid=",
            "-o",
            str(context / "pause"),
            ".",
        ]
        command(go_build, "go build (images/pause)", cwd=sources, env=env)
        store.build(dockerfile, context, PAUSE_REFERENCE, build_args={}, volumes=[], timestamp=TIMESTAMP)

    archive = ImageArchive((out_dir or cache_dir()) / "pause-1.oci.tar", PAUSE_REFERENCE)
    return _cached(archive, key, build, force)


# ---- reading an archive ------------------------------------------------------------------------------------
def manifest(archive: Path) -> tuple[str, dict[str, object]]:
    """The archive's (only) manifest: its digest and its content."""
    with tarfile.open(archive) as outer:
        index = json.loads(_member(outer, "index.json"))
        (entry,) = index["manifests"]
        return entry["digest"], json.loads(_member(outer, _blob_name(entry["digest"])))


def installed_distributions(archive: Path) -> dict[str, str]:
    """name (PEP 503) → version of every distribution in the image's venv, read from its layers."""
    found = {}
    _, content = manifest(archive)
    layers = content["layers"]
    assert isinstance(layers, list)
    with tarfile.open(archive) as outer:
        for layer in layers:
            with tarfile.open(fileobj=outer.extractfile(_blob_name(layer["digest"])), mode="r|*") as tar:
                for member in tar:
                    if re.fullmatch(r"(\./)?opt/.+/site-packages/[^/]+\.dist-info/METADATA", member.name):
                        metadata = HeaderParser().parsestr(_member(tar, member).decode())
                        found[re.sub(r"[-_.]+", "-", metadata["Name"]).lower()] = metadata["Version"]
    return found


def _blob_name(digest: str) -> str:
    return "blobs/sha256/" + digest.removeprefix("sha256:")


def _member(tar: tarfile.TarFile, member: str | tarfile.TarInfo) -> bytes:
    file = tar.extractfile(member)
    if file is None:
        raise BuildError(f"{member} is not a file in the archive")
    return file.read()
