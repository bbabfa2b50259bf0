"""The real node's ground rules, checked: while it runs, the host's network, firewall and sysctls are exactly
as before; after `stop()` (or after a killed run, at the next start) no process, cgroup, namespace or scratch
file of the node is left.

Each test starts a node of its own with only the pause image (seconds to import), so it can also kill one.
The host is read through PID 1's namespaces, which is right even when pytest itself runs inside a cluster's
namespace (`python3 -m localcluster exec`).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from localcluster import images, node
from localcluster.cluster import LocalCluster
from localcluster.components import is_running
from tests.cluster.polling import eventually
from tests.support.operator import kubectl

pytestmark = pytest.mark.e2e

HOST_SYSCTLS = [f"/proc/sys/{key}" for key in node.KUBELET_SYSCTLS] + [
    "/proc/sys/net/ipv4/ip_forward",
    "/proc/sys/net/netfilter/nf_conntrack_max",
]


def host_view() -> dict[str, str]:
    """Links, addresses, routes, firewall rules and the sysctls a node could touch, as the host sees them."""
    view = {}
    for argv in (["ip", "-o", "link"], ["ip", "-o", "addr"], ["ip", "route"], ["iptables-save"]):
        out = subprocess.run(["nsenter", "-t", "1", "-n", *argv], capture_output=True, text=True).stdout
        view[" ".join(argv)] = "\n".join(line for line in out.splitlines() if not line.startswith("#"))
    for path in HOST_SYSCTLS:
        done = subprocess.run(["nsenter", "-t", "1", "-n", "-m", "cat", path], capture_output=True, text=True)
        view[path] = done.stdout.strip() or done.stderr.strip()
    return view


def cgroup_dirs_named(root: str) -> list[Path]:
    return [p for p in Path("/sys/fs/cgroup").glob(f"*/{root}")]


def processes_mentioning(text: str) -> list[int]:
    """PIDs whose command line holds `text` (containerd's shims name the node's socket path)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if text.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


@dataclass
class SmallNode:
    cluster: LocalCluster
    host_before: dict[str, str]  # host_view() before the node started


@pytest.fixture
def small_node(tmp_path: Path) -> Iterator[SmallNode]:
    before = host_view()
    cluster = LocalCluster(
        tmp_path / "cluster", tie_to_parent=True, data_parent=tmp_path, real_node=True,
        images=[images.build_pause().path], timeout=180,
    )  # fmt: skip
    cluster.start()
    try:
        yield SmallNode(cluster, before)
    finally:
        cluster.stop()


def run_a_pod(cluster: LocalCluster) -> None:
    """A pod whose container really runs (the pause image), so the node has pods and shims to clean up."""
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "sleeper", "namespace": "default"},
        "spec": {
            "containers": [{"name": "c", "image": node.PAUSE_IMAGE, "imagePullPolicy": "Never"}],
            "automountServiceAccountToken": False,
        },
    }
    info = cluster.info()
    kubectl(info, "apply", "-f", "-", stdin=json.dumps(pod))
    kubectl(info, "wait", "--for=condition=Ready", "pod/sleeper", "--timeout=90s")


def test_the_host_is_untouched_while_the_node_runs_and_nothing_is_left_after(small_node: SmallNode) -> None:
    cluster, before = small_node.cluster, small_node.host_before
    assert cluster.holder is not None and cluster.node_layout is not None
    layout, holder = cluster.node_layout, cluster.holder
    run_a_pod(cluster)
    assert host_view() == before
    members = node.cgroup_members(layout.cgroup_root)
    assert len(members) >= 3, members  # pause (sandbox), the container, its shim
    in_namespace = node.namespace_members(holder.pid)
    assert any(p.name == "kubelet" for p in cluster.processes)
    assert {p.pid for p in cluster.processes} <= set(in_namespace)

    cluster.stop()

    assert host_view() == before
    assert not is_running(holder)
    assert [p for p in members + in_namespace if Path(f"/proc/{p}").exists()] == []
    assert processes_mentioning(str(layout.scratch)) == []
    assert cgroup_dirs_named(layout.cgroup_root) == []
    assert not layout.scratch.exists()


def test_what_a_killed_run_left_is_reaped_by_the_next_start(small_node: SmallNode) -> None:
    cluster = small_node.cluster
    assert cluster.holder is not None and cluster.node_layout is not None
    layout = cluster.node_layout
    run_a_pod(cluster)
    pods_and_shims = node.cgroup_members(layout.cgroup_root)
    # What the kernel does to a killed pytest's components (PR_SET_PDEATHSIG): SIGKILL, no clean-up at all.
    for process in [*cluster.processes, cluster.holder]:
        os.kill(process.pid, signal.SIGKILL)
    eventually(lambda: _assert_gone([p.pid for p in cluster.processes]), timeout=10, what="components gone")
    assert all(Path(f"/proc/{p}").exists() for p in pods_and_shims), "pods and shims outlive their node"

    reaped = node.reap_stale_nodes()

    assert layout.cgroup_root in reaped
    assert [p for p in pods_and_shims if Path(f"/proc/{p}").exists()] == []
    assert cgroup_dirs_named(layout.cgroup_root) == []


def _assert_gone(pids: list[int]) -> None:
    assert [p for p in pids if Path(f"/proc/{p}").exists() and _state(p) != "Z"] == []


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "X"
