"""What the image builds take from outside, made first while the network is there, and the cache they share.

localcluster/images.py builds with buildah, offline; before that, this makes what the Dockerfiles would
download: the `PYTHON_IMAGE` base (a Debian rootfs with Debian's python3 and pip, made by mmdebstrap,
committed to buildah's store), the wheelhouse pip installs from (resolved by the base's own python, so its
markers are the image's, not the host's) and the encodings the chatbot image carries. Each is cached in
`$KUBECHAT_CACHE/images` by a digest of what it is made from. Standard library only.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path

from localcluster import cache, encodings
from localcluster.buildah import Store
from localcluster.errors import BuildError
from localcluster.progress import step

REPO = Path(__file__).resolve().parents[1]
KINDS = ("chatbot", "operator")
EXTRAS = {"chatbot": "service", "operator": "operator"}  # the extra each Dockerfile installs the wheel with
TIMESTAMP = 946684800  # 2000-01-01T00:00:00Z: every file and every "created" in the images
# What the Dockerfiles' builder stage COPYs (a superset of what their .dockerignore lets through): the key
# of an image's cache entry, so that a change to any of it rebuilds the image.
CONTEXT = ("pyproject.toml", "README.md", "chatbot_service", "operator")
ENCODINGS_CONTEXT = Path("images") / "tiktoken"  # seeded here for the chatbot image's COPY

# The stand-in for python:3.11-slim-bookworm: Debian's python3, pip for the builder stage, the accounts
# tools for the final stage's useradd, the CA bundle (httpx2 verifies with the system store), jemalloc (the
# chatbot image's allocator: images/chatbot.Dockerfile installs it where a base lacks it). No docs; the
# stdlib's .pyc hash-based (Debian compiles them by timestamp, and buildah fixes every mtime).
BASE_SUITE = "bookworm"
BASE_PACKAGES = ("python3", "python3-pip", "python-is-python3", "passwd", "ca-certificates", "libjemalloc2")
BASE_EXCLUDES = ("/usr/share/doc/*", "/usr/share/man/*", "/usr/share/locale/*", "/usr/share/info/*")
BASE_HOOKS = (
    'chroot "$1" sh -c "python3 -m compileall -qfj0 --invalidation-mode unchecked-hash /usr/lib/python3*"',
    'rm -rf "$1"/var/cache/apt/* "$1"/var/lib/apt/lists/* "$1"/var/log/* "$1"/etc/resolv.conf',
)
BASE_NAME = "localhost/kubechat/python-base"
BASE_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
PIP_PASS_THROUGH = ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_TRUSTED_HOST", "PIP_DEFAULT_TIMEOUT")
PROXIES = ("http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY")


# ---- caching -----------------------------------------------------------------------------------------------
def cache_dir() -> Path:
    """Images are slow to build and shared by all checkouts: in the cache, beside the binaries."""
    return cache.cache_dir() / "images"


def digest(parts: Iterable[str | bytes]) -> str:
    """SHA-256 of the parts, each length-prefixed (so ("ab", "c") and ("a", "bc") differ)."""
    hasher = hashlib.sha256()
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        hasher.update(len(data).to_bytes(8, "big") + data)
    return hasher.hexdigest()


def _files(*paths: Path) -> list[Path]:
    found = []
    for path in paths:
        found += [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return [path for path in found if "__pycache__" not in path.parts and path.suffix != ".pyc"]


def tree_digest(root: Path, paths: Sequence[Path]) -> str:
    return digest(part for f in _files(*paths) for part in (f.relative_to(root).as_posix(), f.read_bytes()))


@contextlib.contextmanager
def scratch() -> Iterator[Path]:
    """A work folder on the cache's disk (rootfs trees are big), removed afterwards."""
    cache_dir().mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="work-", dir=cache_dir()))
    try:
        yield work
    finally:
        shutil.rmtree(work)


def command(
    argv: Sequence[str], what: str, cwd: Path | None = None, env: Mapping[str, str] | None = None
) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, check=False, cwd=cwd, env=env)
    if done.returncode != 0:
        lines = [line for line in (done.stderr + done.stdout).splitlines() if line.strip()]
        raise BuildError(f"{what} failed (exit {done.returncode}): {lines[-1] if lines else 'no output'}")
    output: str = done.stdout
    return output


def needs_root() -> None:
    if os.geteuid() != 0:
        raise BuildError("building images needs root (mmdebstrap --mode=root, buildah, unshare, chroot)")


# ---- what the builds take from outside, fetched first ------------------------------------------------------
def base_rootfs() -> Path:
    """Debian's python3 and pip as a rootfs tar, made once by mmdebstrap (from Debian's mirror)."""
    argv = [
        "--variant=essential",
        f"--include={','.join(BASE_PACKAGES)}",
        "--mode=root",
        "--format=tar",
        "--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr",  # usr-is-merged, not usrmerge (and its perl)
        "--skip=output/dev",  # no device nodes: an image's /dev is the runtime's
        *(f"--dpkgopt=path-exclude={pattern}" for pattern in BASE_EXCLUDES),
        *(f"--customize-hook={hook}" for hook in BASE_HOOKS),
        BASE_SUITE,
    ]
    target = cache_dir() / f"base-{BASE_SUITE}-{digest(argv)[:12]}.tar"
    if not target.is_file():
        mmdebstrap = shutil.which("mmdebstrap")
        if not mmdebstrap:
            raise BuildError("mmdebstrap is missing (apt-get install mmdebstrap; `make demo` installs it)")
        partial = cache.partial_path(target)
        partial.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "SOURCE_DATE_EPOCH": str(TIMESTAMP)}
        with step(f"making the Debian {BASE_SUITE} base of the images (mmdebstrap, from Debian's mirror)"):
            command([mmdebstrap, *argv, str(partial)], "mmdebstrap", env=env)
        partial.rename(target)
    return target


def base_reference(rootfs: Path) -> str:
    """The name the base made as `rootfs` has in buildah's store (its Dockerfiles' PYTHON_IMAGE)."""
    return f"{BASE_NAME}:{rootfs.stem.rpartition('-')[2]}"


def base_image(store: Store) -> str:
    """The base committed to buildah's store under a name that says what it is and what it was made from."""
    rootfs = base_rootfs()
    reference = base_reference(rootfs)
    if not store.has_image(reference):
        with step(f"committing {rootfs.name} to buildah's store as {reference}"):
            store.commit_rootfs(rootfs, reference, env=BASE_ENV, cmd="python3", timestamp=TIMESTAMP)
        listed = store.run(["images", "--format", "{{.Name}}:{{.Tag}}"], "buildah images").split()
        for old in (name for name in listed if name.startswith(f"{BASE_NAME}:") and name != reference):
            store.remove_image(old)  # a base made from other inputs: nothing builds on it any more
    return reference


def _pip_env(root: Path) -> dict[str, str]:
    """The host's index, proxy and CA settings for pip in the chroot (not its PIP_FIND_LINKS)."""
    env = {"PIP_NO_CACHE_DIR": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_ROOT_USER_ACTION": "ignore"}
    env |= {name: os.environ[name] for name in (*PIP_PASS_THROUGH, *PROXIES) if name in os.environ}
    cert = os.environ.get("PIP_CERT", "")
    if cert and Path(cert).is_file():
        shutil.copyfile(cert, root / "tmp" / "pip-ca.pem")
        env["PIP_CERT"] = "/tmp/pip-ca.pem"
    return env


def _chroot_pip(root: Path, args: Sequence[str], env: Mapping[str, str]) -> None:
    """python3 -m pip ARGS in the rootfs, with the host's network (a private mount namespace)."""
    environ = [f"{key}={value}" for key, value in {**BASE_ENV, "HOME": "/root", **env}.items()]
    isolate = ["unshare", "--mount", "--propagation", "private"]
    argv = [*isolate, "env", "-i", *environ, "chroot", str(root), "python3", "-m", "pip", *args]
    command(argv, f"pip {' '.join(args[:1])} in the image base")


def _build_requires() -> list[str]:
    requires: list[str] = tomllib.loads((REPO / "pyproject.toml").read_text())["build-system"]["requires"]
    return requires


def wheelhouse(kind: str) -> Path:
    """The project's wheel with the dependencies of the image's extra (top level) and its build backend
    (build-requires/), resolved by the base's python from the package index; cached by base, context and
    extra. Bind-mounted into the build."""
    if kind not in KINDS:
        raise BuildError(f"unknown image {kind!r}: one of {', '.join(KINDS)}")
    with cache.locked():
        base = base_rootfs()
        context = tree_digest(REPO, [REPO / name for name in CONTEXT])
        key = [base.name, context, EXTRAS[kind], *_build_requires()]
        target = cache_dir() / f"wheels-{kind}-{digest(key)[:16]}"
        if target.is_dir():
            return target
        needs_root()
        with scratch() as work, step("fetching the images' Python wheels (pip, from the package index)"):
            root = work / "root"
            root.mkdir()
            command(["tar", "--numeric-owner", "-xpf", str(base), "-C", str(root)], "unpacking the base")
            shutil.copyfile("/etc/resolv.conf", root / "etc" / "resolv.conf")
            for name in CONTEXT:
                origin, dest = REPO / name, root / "src" / name
                if origin.is_dir():
                    shutil.copytree(origin, dest, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
                else:
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(origin, dest)
            env = _pip_env(root)
            wheel = ["wheel", "--wheel-dir", "/wheels"]
            _chroot_pip(root, [*wheel, "--no-deps", "/src"], env | {"SOURCE_DATE_EPOCH": str(TIMESTAMP)})
            (project,) = (root / "wheels").glob("kubechat-*.whl")
            _chroot_pip(root, [*wheel, f"/wheels/{project.name}[{EXTRAS[kind]}]"], env)
            download = ["download", "--only-binary=:all:", "--dest", "/wheels/build-requires"]
            _chroot_pip(root, [*download, *_build_requires()], env)
            (root / "wheels").rename(target)
    return target


def seed_encodings(context: Path) -> None:
    """`kubechat seed-encodings` into the context, from the checked local copy or cache (encodings.py)."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from chatbot_service.encodings import seed  # standard library only, like this module

    seed(encodings.encodings_dir(), context / ENCODINGS_CONTEXT)
