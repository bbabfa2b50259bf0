"""buildah, driven from Python: one local image store in the cache, no daemon, no registry.

buildah runs Dockerfiles as they are (RUN, COPY, multi-stage), as root, with `--isolation chroot`: this
machine has no user namespaces for rootless builds and no Docker. Its store (vfs: works on any file system,
no overlay mounts) lives in the cache, beside the archives, and holds only the image bases between builds:
every built image is pushed to an OCI archive and removed from the store.

`--network none` is refused with chroot isolation (`cannot set --network other than host with --isolation
chroot`), so builds that must not reach the network run inside `unshare --net`: RUN steps see only a
loopback that is down.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from localcluster.errors import BuildError


class Store:
    """A buildah store (`--root`, `--runroot`) under `folder`, vfs-backed. Callers hold the cache lock."""

    def __init__(self, folder: Path, log: Path) -> None:
        self.folder = folder
        self.log = log  # every command's output is appended here (named in the error if one fails)
        executable = shutil.which("buildah")
        if not executable:
            raise BuildError("buildah is missing (apt-get install buildah; `make demo` installs it)")
        self.base = [
            executable,
            "--root",
            str(folder / "root"),
            "--runroot",
            str(folder / "run"),
            "--storage-driver",
            "vfs",
        ]

    def run(self, args: Sequence[str], what: str, *, network: bool = True) -> str:
        """buildah ARGS; without network, inside a network namespace of its own. Returns stdout."""
        argv = [*([] if network else ["unshare", "--net", "--"]), *self.base, *args]
        self.log.parent.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
        with self.log.open("a") as log:
            log.write(f"$ {' '.join(argv)}\n{done.stdout}{done.stderr}\n")
        if done.returncode != 0:
            lines = [line for line in done.stderr.splitlines() if line.strip()] or ["no output"]
            raise BuildError(f"{what} failed (exit {done.returncode}): {lines[-1]} (log: {self.log})")
        return done.stdout

    def has_image(self, reference: str) -> bool:
        argv = [*self.base, "inspect", "--type", "image", "--format", "{{.FromImageID}}", reference]
        return subprocess.run(argv, capture_output=True, check=False).returncode == 0

    def commit_rootfs(
        self, tarball: Path, reference: str, *, env: Mapping[str, str], cmd: str, timestamp: int
    ) -> None:
        """An image of one layer, the rootfs in `tarball` (what `docker import` does), named `reference`."""
        container = self.run(["from", "--pull=never", "scratch"], "buildah from scratch").strip()
        try:
            self.run(["add", container, str(tarball), "/"], f"buildah add {tarball.name}")
            config = [f"--env={key}={value}" for key, value in env.items()]
            self.run(["config", *config, f"--cmd={cmd}", container], "buildah config")
            commit = ["commit", "--quiet", f"--timestamp={timestamp}", "--rm", container, reference]
            self.run(commit, f"buildah commit {reference}")
        except BuildError:
            self.run(["rm", container], "buildah rm")
            raise

    def build(
        self,
        dockerfile: Path,
        context: Path,
        reference: str,
        *,
        build_args: Mapping[str, str],
        volumes: Sequence[str],
        timestamp: int,
        ignorefile: Path | None = None,
    ) -> None:
        """`buildah bud` of an unchanged Dockerfile, offline, with fixed timestamps."""
        argv = ["bud", "--pull=never", "--isolation=chroot", f"--timestamp={timestamp}", "--layers=false"]
        argv += [f"--build-arg={key}={value}" for key, value in build_args.items()]
        argv += [f"--volume={volume}" for volume in volumes]
        argv += [f"--ignorefile={ignorefile}"] if ignorefile else []
        argv += ["--quiet", "--file", str(dockerfile), "--tag", reference, str(context)]
        self.run(argv, f"buildah bud {dockerfile.name}", network=False)

    def push_archive(self, reference: str, archive: Path) -> None:
        """The image as an OCI archive. Its layers are gzip despite ``--disable-compression``: the oci
        destination keeps them uncompressed only with ``OCIAcceptUncompressedLayers``, which buildah 1.28's
        push evidently leaves unset (docs/local-cluster.md)."""
        destination = f"oci-archive:{archive}:{reference}"
        self.run(["push", "--quiet", "--disable-compression", reference, destination], "buildah push")

    def remove_image(self, reference: str) -> None:
        self.run(["rmi", "--force", reference], f"buildah rmi {reference}")
        self.run(["rmi", "--prune"], "buildah rmi --prune")
