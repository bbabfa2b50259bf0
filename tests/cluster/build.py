"""Build the control-plane binaries from pinned Go modules into a per-version cache outside git.

Versions live in the go.mod files next to this file (one small module per upstream project so their
dependency graphs never have to agree); this module reads them back so there is one place to bump.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
K8S_MODULE = "k8s.io/kubernetes"


@dataclass(frozen=True)
class Component:
    """One binary: which of our Go modules builds it, from which upstream module and package."""

    name: str
    module_dir: Path
    upstream: str
    package: str
    stamp_k8s_version: bool = False
    stamp_helm_version: bool = False

    @property
    def version(self) -> str:
        return module_version(self.module_dir, self.upstream)

    @property
    def binary(self) -> Path:
        return cache_dir() / "bin" / f"{self.name}-{self.version}"


def _k8s(name: str) -> Component:
    return Component(name, HERE, K8S_MODULE, f"{K8S_MODULE}/cmd/{name}", stamp_k8s_version=True)


# Built one at a time (2 cores), in this order.
COMPONENTS: dict[str, Component] = {
    c.name: c
    for c in (
        Component("etcd", HERE / "etcd", "go.etcd.io/etcd/server/v3", "go.etcd.io/etcd/server/v3"),
        _k8s("kube-apiserver"),
        _k8s("kube-controller-manager"),
        _k8s("kube-scheduler"),
        Component("kwok", HERE / "kwok", "sigs.k8s.io/kwok", "sigs.k8s.io/kwok/cmd/kwok"),
        # The real node (`localcluster up --node real`): same module, so the build cache is mostly warm.
        _k8s("kubelet"),
        _k8s("kube-proxy"),
        # Not run by the cluster: tests/integration/test_chart.py lints and renders charts/kubechat with it.
        Component(
            "helm", HERE / "helm", "helm.sh/helm/v3", "helm.sh/helm/v3/cmd/helm", stamp_helm_version=True
        ),
    )
}


#: What `localcluster up` runs; the other rows (helm) are built on demand or by `build` with no names.
CONTROL_PLANE = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")
#: What `localcluster up --node real` runs in addition.
REAL_NODE = ("kubelet", "kube-proxy")


def cache_dir() -> Path:
    """Binaries are large and slow to build, so they live outside the work tree, shared by all checkouts."""
    return Path(os.environ.get("KUBECHAT_CACHE", "~/.cache/kubechat")).expanduser()


def module_version(module_dir: Path, upstream: str) -> str:
    """Read the pinned version of `upstream` from `module_dir/go.mod` (the single source of truth)."""
    text = (module_dir / "go.mod").read_text()
    match = re.search(rf"^\s*(?:require\s+)?{re.escape(upstream)}\s+(v\S+)", text, re.MULTILINE)
    if not match:
        raise RuntimeError(f"{upstream} is not required in {module_dir / 'go.mod'}")
    return match.group(1)


def ldflags(component: Component) -> str:
    flags = ["-s", "-w"]
    if component.stamp_k8s_version:
        # An unstamped build reports v0.0.0-master, which breaks clients that check the server version.
        version = component.version
        major, minor = version.lstrip("v").split(".")[:2]
        prefix = "k8s.io/component-base/version"
        flags += [
            f"-X {prefix}.gitVersion={version}",
            f"-X {prefix}.gitMajor={major}",
            f"-X {prefix}.gitMinor={minor}",
        ]
    if component.stamp_helm_version:
        # As helm's own Makefile does: the version `helm version` prints, and the Kubernetes version that
        # `helm lint`/`helm template` assume (.Capabilities) taken from the client-go it is built with.
        client_go = module_version(component.module_dir, "k8s.io/client-go").lstrip("v").split(".")
        k8s_major, k8s_minor = str(int(client_go[0]) + 1), client_go[1]
        flags.append(f"-X helm.sh/helm/v3/internal/version.version={component.version}")
        for pkg in ("helm.sh/helm/v3/pkg/lint/rules", "helm.sh/helm/v3/pkg/chartutil"):
            flags += [f"-X {pkg}.k8sVersionMajor={k8s_major}", f"-X {pkg}.k8sVersionMinor={k8s_minor}"]
    return " ".join(flags)


@contextmanager
def _build_lock() -> Iterator[None]:
    """Serialise builds across processes (two pytest runs must not both spend minutes building)."""
    lock_path = cache_dir() / "build.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def build_one(component: Component, log: bool = True) -> float:
    """Build one binary into the cache (atomically, via a temporary name); return seconds taken."""
    go = shutil.which("go")
    if go is None:
        raise RuntimeError("the Go toolchain is needed to build the control plane: `go` is not on PATH")
    target = component.binary
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    cmd = [go, "build", "-trimpath", "-ldflags", ldflags(component), "-o", str(tmp), component.package]
    if log:
        print(f"building {component.name} {component.version} -> {target}", file=sys.stderr, flush=True)
    started = time.monotonic()
    try:
        subprocess.run(cmd, cwd=component.module_dir, check=True)
        tmp.rename(target)
    finally:
        tmp.unlink(missing_ok=True)
    elapsed = time.monotonic() - started
    if log:
        print(f"built {component.name} in {elapsed:.1f} s", file=sys.stderr, flush=True)
    return elapsed


def ensure_built(names: Iterable[str] | None = None, force: bool = False) -> dict[str, Path]:
    """Return the binary path of each component, building (one at a time) only those not cached yet."""
    selected = [COMPONENTS[n] for n in (names or COMPONENTS)]
    missing = [c for c in selected if force or not c.binary.exists()]
    if missing:
        with _build_lock():
            for component in missing:
                if force or not component.binary.exists():  # another process may have built it meanwhile
                    build_one(component)
    if "kwok" in (c.name for c in selected):
        ensure_kwok_stages()
    return {c.name: c.binary for c in selected}


# kwok ships no built-in stages: kwokctl feeds it these from its module (node init + lease heartbeat, pod
# ready/complete/delete), so we do the same from the pinned module's source rather than copying them into git.
KWOK_STAGE_FILES = (
    "kustomize/stage/node/fast/node-initialize.yaml",
    "kustomize/stage/node/heartbeat-with-lease/node-heartbeat-with-lease.yaml",
    "kustomize/stage/pod/fast/pod-ready.yaml",
    "kustomize/stage/pod/fast/pod-complete.yaml",
    "kustomize/stage/pod/fast/pod-delete.yaml",
)


def module_source_dir(component: Component) -> Path:
    """Where the Go module cache holds the pinned upstream module's source (downloading it if needed)."""
    result = subprocess.run(
        ["go", "mod", "download", "-json", f"{component.upstream}@{component.version}"],
        cwd=component.module_dir,
        check=True,
        capture_output=True,
        text=True,
    )
    return Path(json.loads(result.stdout)["Dir"])


def kwok_stages_file() -> Path:
    kwok = COMPONENTS["kwok"]
    return cache_dir() / "share" / f"kwok-{kwok.version}" / "stages.yaml"


def ensure_kwok_stages() -> Path:
    """Assemble kwok's default Stages into one multi-document config file in the cache."""
    target = kwok_stages_file()
    if not target.exists():
        source = module_source_dir(COMPONENTS["kwok"])
        docs = [(source / name).read_text().strip() + "\n" for name in KWOK_STAGE_FILES]
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        tmp.write_text("---\n".join(docs))
        tmp.rename(target)
    return target


def pin_kubernetes(version: str) -> None:
    """Pin k8s.io/kubernetes `version`, with one replace per staging module taken from the release's go.mod.

    k8s.io/kubernetes requires its staging modules at v0.0.0 via `./staging/...` replaces that a consumer
    cannot see, so the consumer must replace each with the matching published v0.X.Y tag.
    """
    info = json.loads(
        subprocess.run(
            ["go", "mod", "download", "-json", f"{K8S_MODULE}@{version}"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    )
    upstream_mod = Path(info["GoMod"]).read_text()
    staging = sorted(set(re.findall(r"^\s*(k8s\.io/\S+)\s+=>\s+\./staging/", upstream_mod, re.MULTILINE)))
    staging_version = "v0." + version.lstrip("v").split(".", 1)[1]
    go_directive = re.search(r"^go (\S+)", upstream_mod, re.MULTILINE)
    lines = [
        "module kubechat.dev/cluster",
        "",
        f"go {go_directive.group(1) if go_directive else '1.26.0'}",
        "",
        f"require {K8S_MODULE} {version}",
        "",
        "replace (",
        *(f"\t{m} => {m} {staging_version}" for m in staging),
        ")",
        "",
    ]
    (HERE / "go.mod").write_text("\n".join(lines))
    (HERE / "go.sum").unlink(missing_ok=True)
    subprocess.run(["go", "mod", "tidy"], cwd=HERE, check=True)
    print(f"pinned {K8S_MODULE} {version} with {len(staging)} staging replaces ({staging_version})")
