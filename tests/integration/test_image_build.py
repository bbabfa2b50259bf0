"""The images buildah builds from the unchanged Dockerfiles (localcluster/images.py), checked as a kubelet
node would meet them.

Their configs are what the cluster expects, their layers hold what the Dockerfiles install (a venv without
pip, hash-based .pyc, the tiktoken encodings, the uid 10001 account) on one base layer shared by both
images, the same inputs give the same digest, containerd imports the archives, and each entrypoint starts as
uid 10001 on a read-only root with no network. The archives are read here with code of the test's own, so a
wrong digest or descriptor cannot hide behind the builder's own reader.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import tarfile
import tempfile
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from chatbot_service.encodings import ENCODINGS, cache_name
from localcluster import images as builder
from localcluster import node
from tests.cluster.polling import eventually

REPO = Path(__file__).resolve().parents[2]
KINDS = list(builder.KINDS)
TIKTOKEN = Path(os.environ["KUBECHAT_TIKTOKEN_DIR"])  # the local copy the images take (tests/conftest.py)
VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
BASE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
TOOLS = ("buildah", "mmdebstrap", "unshare", "chroot", "go")
WHITEOUT = ".wh."


@dataclass
class Image:
    archive: builder.ImageArchive
    index: dict[str, Any]
    manifest: dict[str, Any]
    config: dict[str, Any]
    layers: list[Path]  # the layer blobs (gzip tars), base first
    rootfs: Path  # the layers applied in order (owners kept, whiteouts honoured)


def blob(folder: Path, digest: str) -> Path:
    """The blob for a digest, after checking that its content has that digest."""
    path = folder / "blobs" / "sha256" / digest.removeprefix("sha256:")
    with path.open("rb") as file:
        assert "sha256:" + hashlib.file_digest(file, "sha256").hexdigest() == digest, path
    return path


def described(folder: Path, descriptor: dict[str, Any]) -> dict[str, Any]:
    path = blob(folder, descriptor["digest"])
    assert path.stat().st_size == descriptor["size"]
    value: dict[str, Any] = json.loads(path.read_bytes())
    return value


def apply_layer(layer: Path, rootfs: Path) -> None:
    """One layer onto the rootfs as a snapshotter would: whiteouts delete, files replace."""
    with tarfile.open(layer) as tar:
        members = []
        for member in tar.getmembers():
            path = Path(member.name)
            target = rootfs / path
            if path.name.startswith(WHITEOUT):
                gone = target.with_name(path.name.removeprefix(WHITEOUT))
                assert path.name != ".wh..wh..opq", "no opaque directories expected"
                if gone.is_dir() and not gone.is_symlink():
                    shutil.rmtree(gone)
                else:
                    gone.unlink(missing_ok=True)
                continue
            if not member.isdir() and (target.is_symlink() or target.is_file()):
                target.unlink()
            members.append(member)
        tar.extractall(rootfs, members=members, numeric_owner=True, filter="fully_trusted")


def unpack(archive: builder.ImageArchive, folder: Path) -> Image:
    with tarfile.open(archive.path) as tar:
        tar.extractall(folder, filter="fully_trusted")
    assert json.loads((folder / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    index = json.loads((folder / "index.json").read_text())
    (entry,) = index["manifests"]
    manifest = described(folder, entry)
    config = described(folder, manifest["config"])
    layers = [blob(folder, layer["digest"]) for layer in manifest["layers"]]
    for path, layer in zip(layers, manifest["layers"], strict=True):
        assert path.stat().st_size == layer["size"]
    rootfs = folder / "rootfs"
    for path in layers:
        apply_layer(path, rootfs)
    return Image(archive, index, manifest, config, layers, rootfs)


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Image]]:
    """Each image built once (from the cache when nothing changed), unpacked into a temp dir."""
    missing = [tool for tool in TOOLS if not shutil.which(tool)]
    assert os.geteuid() == 0, "building images needs root"
    assert not missing, f"building images needs {', '.join(missing)}: make node-deps installs them"
    archives = {kind: builder.build_image(kind) for kind in KINDS} | {"pause": builder.build_pause()}
    folder = tmp_path_factory.mktemp("images")
    try:
        yield {kind: unpack(archive, folder / kind) for kind, archive in archives.items()}
    finally:
        shutil.rmtree(folder)


# ---- the archives ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kind", "entrypoint", "cmd", "port"),
    [
        ("chatbot", "kubechat", ["serve", "--host", "0.0.0.0", "--port", "8080"], "8080/tcp"),
        ("operator", "kubechat-operator", ["--all-namespaces"], "8081/tcp"),
    ],
)
def test_the_config_holds_what_the_cluster_expects(
    images: dict[str, Image], kind: str, entrypoint: str, cmd: list[str], port: str
) -> None:
    config = images[kind].config["config"]
    env = dict(pair.split("=", 1) for pair in config["Env"])
    assert config["Entrypoint"] == [entrypoint] and config["Cmd"] == cmd and config["User"] == "10001:10001"
    assert config["ExposedPorts"] == {port: {}}
    assert env["PATH"] == f"/opt/kubechat/bin:{BASE_PATH}" and env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert env.get("TIKTOKEN_CACHE_DIR") == ("/opt/kubechat/tiktoken" if kind == "chatbot" else None)
    assert config["Labels"]["org.opencontainers.image.title"] == f"kubechat-{kind}"
    assert config["Labels"]["org.opencontainers.image.version"] == VERSION


@pytest.mark.parametrize("kind", [*KINDS, "pause"])
def test_the_archive_is_an_oci_layout_containerd_can_name(images: dict[str, Image], kind: str) -> None:
    image = images[kind]
    (entry,) = image.index["manifests"]
    reference = "docker.io/kubechat/pause:1" if kind == "pause" else f"docker.io/kubechat/{kind}:dev"
    assert image.archive.reference == reference
    assert entry["annotations"]["org.opencontainers.image.ref.name"] == reference
    assert entry["mediaType"] == image.manifest["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert image.manifest["schemaVersion"] == 2
    # gzip layers: buildah's push compresses them (docs/local-cluster.md); diff_ids name the tars inside
    assert {layer["mediaType"] for layer in image.manifest["layers"]} == {
        "application/vnd.oci.image.layer.v1.tar+gzip"
    }
    assert image.config["architecture"] == "amd64" and image.config["os"] == "linux"
    diff_ids = []
    for layer in image.layers:
        with gzip.open(layer) as unpacked:
            diff_ids.append("sha256:" + hashlib.file_digest(unpacked, "sha256").hexdigest())
        with tarfile.open(layer) as tar:
            mtimes = {member.mtime for member in tar}
        assert mtimes == {builder.TIMESTAMP}, "fixed mtimes: equal inputs, equal layers"
    assert image.config["rootfs"] == {"type": "layers", "diff_ids": diff_ids}


def test_both_images_share_one_base_layer(images: dict[str, Image]) -> None:
    """Containerd unpacks the Debian base once for both; each image adds one layer (its final stage)."""
    chatbot, operator = (images[kind].manifest["layers"] for kind in KINDS)
    assert len(chatbot) == len(operator) == 2
    assert chatbot[0] == operator[0] and chatbot[1] != operator[1]


def test_the_same_inputs_build_the_same_image(images: dict[str, Image], tmp_path: Path) -> None:
    """Reproducible: a second build from scratch (not the cache) gives the same manifest digest."""
    again = builder.build_image("operator", out_dir=tmp_path, force=True)
    assert builder.manifest(again.path)[0] == images["operator"].index["manifests"][0]["digest"]


# ---- the layers --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_the_layer_has_the_kubechat_account_and_root_owned_files(images: dict[str, Image], kind: str) -> None:
    etc = images[kind].rootfs / "etc"
    assert (
        "kubechat:x:10001:10001::/nonexistent:/usr/sbin/nologin" in (etc / "passwd").read_text().splitlines()
    )
    assert "kubechat:x:10001:" in (etc / "group").read_text().splitlines()
    venv = images[kind].rootfs / "opt" / "kubechat"
    owners = {(path.lstat().st_uid, path.lstat().st_gid) for path in [venv, *venv.rglob("*")]}
    assert owners == {(0, 0)}, "COPY without --chown: the non-root user cannot change the app"
    assert list((images[kind].rootfs / "dev").iterdir()) == []


def test_the_chatbot_carries_the_encodings_byte_for_byte(images: dict[str, Image]) -> None:
    carried = images["chatbot"].rootfs / "opt" / "kubechat" / "tiktoken"
    assert sorted(path.name for path in carried.iterdir()) == sorted(cache_name(name) for name in ENCODINGS)
    for name in ENCODINGS:
        assert (carried / cache_name(name)).read_bytes() == (TIKTOKEN / f"{name}.tiktoken").read_bytes()
    assert not (images["operator"].rootfs / "opt" / "kubechat" / "tiktoken").exists()


@pytest.mark.parametrize("kind", KINDS)
def test_no_pip_and_no_build_leftovers(images: dict[str, Image], kind: str) -> None:
    rootfs = images[kind].rootfs
    venv = rootfs / "opt" / "kubechat"
    assert not list((venv / "bin").glob("pip*"))
    assert not list(venv.glob("lib/python3*/site-packages/pip*"))
    assert not list(rootfs.rglob("*.whl"))
    for leftover in ("wheels", "wheelhouse", "src", "etc/pip.conf"):
        assert not (rootfs / leftover).exists(), leftover
    assert list((rootfs / "tmp").iterdir()) == [] and list((rootfs / "mnt").iterdir()) == []
    # buildah's RUN leaves the mount points of these two; the runtime mounts its own over them
    assert (rootfs / "etc" / "hosts").stat().st_size == (rootfs / "etc" / "resolv.conf").stat().st_size == 0


@pytest.mark.parametrize("kind", KINDS)
def test_the_code_is_precompiled_with_pycs_valid_on_a_read_only_root(
    images: dict[str, Image], kind: str
) -> None:
    """The layers' mtimes are fixed, so only hash-based .pyc stay valid; stale ones would be recompiled in
    memory at every start (PYTHONDONTWRITEBYTECODE, read-only root)."""
    site = next((images[kind].rootfs / "opt" / "kubechat" / "lib").glob("python3.*/site-packages"))
    stdlib = images[kind].rootfs / "usr" / "lib" / site.parent.name
    for source in [
        site / "chatbot_service" / "cli.py",
        site / "kubechat_operator" / "main.py",
        stdlib / "os.py",
    ]:
        pyc = source.parent / "__pycache__" / f"{source.stem}.cpython-311.pyc"
        header = pyc.read_bytes()[:16]
        assert struct.unpack("<I", header[4:8])[0] & 1, f"{pyc} is timestamp-based"
        assert header[8:16] == importlib.util.source_hash(source.read_bytes()), f"{pyc} is stale"


@pytest.mark.parametrize("kind", KINDS)
def test_the_venv_holds_what_pip_resolved_for_the_wheel(images: dict[str, Image], kind: str) -> None:
    def normalised(name: str) -> str:
        return re.sub(r"[-_.]+", "-", name).lower()

    resolved = {}
    for wheel in builder.wheelhouse(kind).glob("*.whl"):
        name, version = wheel.name.split("-")[:2]
        resolved[normalised(name)] = version
    installed = builder.installed_distributions(images[kind].archive.path)
    assert installed == resolved
    assert installed["kubechat"] == VERSION
    assert OWN[kind] <= set(installed) and not (OTHERS[kind] & set(installed))


OWN = {
    "chatbot": {"fastapi", "uvicorn", "httpx2", "tiktoken", "redis", "pyyaml", "azure-identity"},
    "operator": {"kopf", "kubernetes"},
}
OTHERS = {  # what each image must not carry: the other's own dependencies
    # the kubernetes client too: the chat service's one TokenReview goes over httpx2 (kubeclient.py);
    # openai is the tests' caller, not the bot's client
    "chatbot": {"kopf", "iso8601", "python-json-logger", "kubernetes", "aiohttp", "openai"},
    "operator": {"fastapi", "uvicorn", "tiktoken", "openai", "redis", "azure-identity", "cryptography"},
}
# Every module of each side, imported in the image that holds only that side's extra: a module importing
# what the other side's extra brings fails here, not in production.
EVERY_MODULE = (
    "import importlib, pkgutil, {package} as p; "
    "names = [m.name for m in pkgutil.walk_packages(p.__path__, p.__name__ + '.')]; "
    "[importlib.import_module(name) for name in names]; print(len(names))"
)


@pytest.mark.parametrize(
    ("kind", "package"), [("chatbot", "chatbot_service"), ("operator", "kubechat_operator")]
)
def test_every_module_imports_with_only_its_own_extra(
    images: dict[str, Image], kind: str, package: str
) -> None:
    done = in_image(images[kind], "python", "-c", EVERY_MODULE.format(package=package))
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) > 5


def test_the_chatbot_image_cannot_import_the_kubernetes_client(images: dict[str, Image]) -> None:
    """Not only absent from the distributions pip lists: not importable from anywhere on the image's path."""
    found = "import importlib.util as u; print([n for n in ('kubernetes', 'kopf') if u.find_spec(n)])"
    done = in_image(images["chatbot"], "python", "-c", found)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
    assert in_image(images["operator"], "python", "-c", found).stdout.strip() == "['kubernetes', 'kopf']"


# ---- the images in use -------------------------------------------------------------------------------------
def in_image(image: Image, *argv: str) -> subprocess.CompletedProcess[str]:
    """argv as the container would run it: uid 10001, the image's Env, a read-only root, no network."""
    readonly = 'mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" && shift && exec "$@"'
    isolate = ["unshare", "--mount", "--net", "--fork", "--propagation", "private"]
    command = [
        "env",
        "-i",
        *image.config["config"]["Env"],
        "chroot",
        "--userspec=10001:10001",
        str(image.rootfs),
    ]
    return subprocess.run(
        [*isolate, "sh", "-c", readonly, "sh", str(image.rootfs), *command, *argv],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("kind", KINDS)
def test_the_entrypoint_starts_as_uid_10001_offline(images: dict[str, Image], kind: str) -> None:
    entrypoint = images[kind].config["config"]["Entrypoint"]
    done = in_image(images[kind], *entrypoint, "--help")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"usage: {entrypoint[0]}")


CHECKS = {  # each prints 2
    "chatbot": (
        "import chatbot_service.app, tiktoken; "
        "print(len(tiktoken.get_encoding('o200k_base').encode('hi there')))"
    ),
    "operator": "import kubechat_operator.main; print(2)",
}


@pytest.mark.parametrize("kind", KINDS)
def test_the_app_imports_counts_tokens_offline_and_trusts_public_cas(
    images: dict[str, Image], kind: str
) -> None:
    cas = "ssl.create_default_context().cert_store_stats()['x509_ca']"
    done = in_image(
        images[kind], "python", "-c", f"import os, ssl; {CHECKS[kind]}; print(os.getuid(), {cas})"
    )
    assert done.returncode == 0, done.stderr
    checked, uid, trusted = done.stdout.split()
    assert checked == "2" and uid == "10001"
    assert int(trusted) > 100, "no CA bundle: httpx2 (truststore) could not verify the upstream's certificate"


def test_the_chatbot_allocates_with_jemalloc(images: dict[str, Image]) -> None:
    """The chatbot image's ENV preloads jemalloc (~10 MiB less idle RSS than glibc's malloc, see
    images/chatbot.Dockerfile); were the library missing, ld.so would only warn and fall back to glibc."""
    probe = "import ctypes; print(hasattr(ctypes.CDLL(None), 'mallctl'))"  # a symbol only jemalloc exports
    done = in_image(images["chatbot"], "python", "-c", probe)
    assert done.returncode == 0 and done.stdout.strip() == "True", done.stderr
    assert "LD_PRELOAD" not in dict(pair.split("=", 1) for pair in images["operator"].config["config"]["Env"])


def test_a_second_build_with_nothing_changed_is_a_cache_hit(images: dict[str, Image]) -> None:
    before = images["chatbot"].archive.path.stat().st_mtime_ns
    again = builder.build_image("chatbot")
    assert again == images["chatbot"].archive and again.path.stat().st_mtime_ns == before
    done = subprocess.run(
        [sys.executable, "-S", "-m", "localcluster", "images", "build", "all"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    assert [line.split()[0] for line in done.stdout.splitlines()] == [
        "docker.io/kubechat/chatbot:dev",
        "docker.io/kubechat/operator:dev",
        "docker.io/kubechat/pause:1",
    ]


# ---- the pause image ---------------------------------------------------------------------------------------
def interpreter_requested(binary: bytes) -> bool:
    """Whether an ELF64 binary names a dynamic loader (a PT_INTERP program header): not static."""
    offset, size, count = struct.unpack_from("<Q", binary, 32)[0], *struct.unpack_from("<HH", binary, 54)
    return any(struct.unpack_from("<I", binary, offset + i * size)[0] == 3 for i in range(count))


def test_the_pause_image_is_one_static_binary(images: dict[str, Image]) -> None:
    image = images["pause"]
    assert (
        image.config["config"]["Entrypoint"] == ["/pause"] and image.config["config"]["User"] == "65535:65535"
    )
    assert [path.name for path in image.rootfs.iterdir()] == ["pause"]
    binary = (image.rootfs / "pause").read_bytes()
    assert binary[:4] == b"\x7fELF" and not interpreter_requested(binary)
    assert (image.rootfs / "pause").stat().st_mode & 0o777 == 0o755


def test_pause_reaps_orphans_as_pid_1_and_stops_on_sigterm(images: dict[str, Image]) -> None:
    outer = subprocess.Popen(
        ["unshare", "--pid", "--fork", "--kill-child", str(images["pause"].rootfs / "pause")]
    )
    try:
        children = Path(f"/proc/{outer.pid}/task/{outer.pid}/children")
        pause = int(eventually(lambda: children.read_text().split()[0], timeout=10, what="pause as PID 1"))
        # sh exits at once; its two sleeps are orphaned to PID 1, which must collect them when they end
        subprocess.run(
            ["nsenter", "--target", str(pause), "--pid", "--", "sh", "-c", "sleep 0.2 & sleep 0.3 & exit 0"],
            check=True,
        )
        own = Path(f"/proc/{pause}/task/{pause}/children")
        time.sleep(0.5)
        eventually(lambda: _assert_empty(own.read_text()), timeout=10, what="the orphans reaped")
        os.kill(pause, signal.SIGTERM)
        assert outer.wait(timeout=10) == 0
    finally:
        if outer.poll() is None:
            outer.kill()
            outer.wait()


def _assert_empty(text: str) -> None:
    assert not text.strip(), f"zombies left: {text}"


# ---- containerd --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def containerd() -> Iterator[list[str]]:
    """A private containerd (its own root, state and socket under a temp dir); yields the ctr command."""
    if not shutil.which("containerd") or not shutil.which("ctr"):
        pytest.skip("containerd and ctr are needed")
    folder = Path(tempfile.mkdtemp(prefix="ctd-", dir="/tmp"))  # short: a unix socket path has 108 bytes
    proc, ctr = node.standalone_containerd(folder)
    try:
        yield ctr
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        shutil.rmtree(folder)


def test_containerd_imports_and_unpacks_all_three(images: dict[str, Image], containerd: list[str]) -> None:
    references = [image.archive.reference for image in images.values()]
    for image in images.values():
        done = subprocess.run(
            [*containerd, "images", "import", str(image.archive.path)],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr
    listed = subprocess.run([*containerd, "images", "ls", "-q"], capture_output=True, text=True, check=True)
    assert set(references) <= set(listed.stdout.split())
    ready = subprocess.run([*containerd, "images", "check", "-q"], capture_output=True, text=True, check=True)
    assert set(references) <= set(ready.stdout.split()), "fully present and unpacked"
