"""Build the control-plane binaries (and helm) from pinned Go modules into the cache (cache.py).

Versions live in the go.mod files under go/ (one small module per upstream project so their dependency
graphs never have to agree); this module reads them back so there is one place to bump.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from localcluster.cache import cache_dir, locked, partial_path
from localcluster.errors import BuildError, FetchError
from localcluster.progress import step

GO_MODULES = Path(__file__).resolve().parent / "go"
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
    return Component(
        name, GO_MODULES / "kubernetes", K8S_MODULE, f"{K8S_MODULE}/cmd/{name}", stamp_k8s_version=True
    )


# Built one at a time (2 cores), in this order.
COMPONENTS: dict[str, Component] = {
    c.name: c
    for c in (
        Component("etcd", GO_MODULES / "etcd", "go.etcd.io/etcd/server/v3", "go.etcd.io/etcd/server/v3"),
        _k8s("kube-apiserver"),
        _k8s("kube-controller-manager"),
        _k8s("kube-scheduler"),
        Component("kwok", GO_MODULES / "kwok", "sigs.k8s.io/kwok", "sigs.k8s.io/kwok/cmd/kwok"),
        # The real node (`localcluster up --node real`): same module, so the build cache is mostly warm.
        _k8s("kubelet"),
        _k8s("kube-proxy"),
        # Not run by the cluster: tests/integration/test_chart.py lints and renders charts/kubechat with it.
        Component(
            "helm",
            GO_MODULES / "helm",
            "helm.sh/helm/v3",
            "helm.sh/helm/v3/cmd/helm",
            stamp_helm_version=True,
        ),
    )
}


#: What `localcluster up` runs; the other rows (helm) are built on demand or by `build` with no names.
CONTROL_PLANE = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")
#: What `localcluster up --node real` runs in addition.
REAL_NODE = ("kubelet", "kube-proxy")


def module_version(module_dir: Path, upstream: str) -> str:
    """Read the pinned version of `upstream` from `module_dir/go.mod` (the single source of truth)."""
    text = (module_dir / "go.mod").read_text()
    match = re.search(rf"^\s*(?:require\s+)?{re.escape(upstream)}\s+(v\S+)", text, re.MULTILINE)
    if not match:
        raise BuildError(f"{upstream} is not required in {module_dir / 'go.mod'}")
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


def _go() -> str:
    go = shutil.which("go")
    if go is None:
        raise BuildError("the Go toolchain is needed to build the cluster: `go` is not on PATH (install Go)")
    return go


def _log_file(name: str) -> Path:
    logs = cache_dir() / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    return logs / f"{name}.log"


def _last_line(log: Path) -> str:
    lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


def _go_run(argv: list[str], cwd: Path, log: Path, offline: bool) -> subprocess.CompletedProcess[bytes]:
    """Run a go command with its output in `log`; offline: the module proxy is off (all must be cached)."""
    env = dict(os.environ)
    if offline:
        env["GOPROXY"] = "off"
    with log.open("wb") as out:
        return subprocess.run(argv, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, check=False)


def fetch_modules(components: Iterable[Component]) -> None:
    """Download every Go module the components need (the only step of a build that needs the network),
    once per module directory; afterwards builds run with the module proxy off."""
    go = _go()
    for module_dir in dict.fromkeys(c.module_dir for c in components):
        name = module_dir.name
        log = _log_file(f"go-mod-download-{name}")
        cached = _go_run([go, "mod", "download"], module_dir, log.with_suffix(".cached.log"), offline=True)
        if cached.returncode == 0:
            continue  # all in the module cache already
        with step(f"fetching the Go modules of {name} (localcluster/go/{name})"):
            done = _go_run([go, "mod", "download", "-x"], module_dir, log, offline=False)
        if done.returncode != 0:
            raise FetchError(
                f"fetching the Go modules of {name} failed: {_last_line(log)} (full log: {log}). "
                "The Go module proxy must be reachable (GOPROXY, or a module cache filled beforehand)."
            )


def build_one(component: Component, position: str = "") -> float:
    """Build one binary into the cache (atomically, via a temporary name); return seconds taken.

    Its modules must be fetched already (fetch_modules): the build itself runs with the proxy off, so a
    build that would need the network fails here, saying so, rather than somewhere the network is not.
    """
    go = _go()
    target = component.binary
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_path(target)
    log = _log_file(f"build-{component.name}")
    cmd = [go, "build", "-trimpath", "-ldflags", ldflags(component), "-o", str(tmp), component.package]
    started = time.monotonic()
    try:
        with step(f"building {component.name} {component.version}{position}"):
            done = _go_run(cmd, component.module_dir, log, offline=True)
        if done.returncode != 0:
            hint = ""
            if "GOPROXY=off" in log.read_text(errors="replace"):
                hint = " Its Go modules are not all cached: run `python3 -m localcluster build "
                hint += f"{component.name}` where the module proxy is reachable."
            raise BuildError(f"building {component.name} failed: {_last_line(log)} (full log: {log}).{hint}")
        tmp.rename(target)
    finally:
        tmp.unlink(missing_ok=True)
    return time.monotonic() - started


def ensure_built(names: Iterable[str] | None = None, force: bool = False) -> dict[str, Path]:
    """Return the binary path of each component, building (one at a time) only those not cached yet."""
    selected = [COMPONENTS[n] for n in (names or COMPONENTS)]
    missing = [c for c in selected if force or not c.binary.exists()]
    if missing:
        with locked():
            missing = [c for c in missing if force or not c.binary.exists()]  # another process may have
            if missing:
                fetch_modules(missing)
            for number, component in enumerate(missing, 1):
                build_one(component, f" ({number} of {len(missing)})")
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
    argv = [_go(), "mod", "download", "-json", f"{component.upstream}@{component.version}"]
    result = subprocess.run(argv, cwd=component.module_dir, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        error = (result.stderr.strip() or result.stdout.strip()).splitlines() or ["no output"]
        raise FetchError(
            f"fetching {component.upstream}@{component.version} failed: {error[-1]}. "
            "The Go module proxy must be reachable (GOPROXY, or a module cache filled beforehand)."
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
        tmp = partial_path(target)
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
    (GO_MODULES / "kubernetes" / "go.mod").write_text("\n".join(lines))
    (GO_MODULES / "kubernetes" / "go.sum").unlink(missing_ok=True)
    subprocess.run(["go", "mod", "tidy"], cwd=GO_MODULES / "kubernetes", check=True)
    print(f"pinned {K8S_MODULE} {version} with {len(staging)} staging replaces ({staging_version})")
