"""One real Kubernetes node (containerd, kubelet, kube-proxy) inside a network + mount namespace of our own.

The host is never changed: a holder process owns a new network and mount namespace (private propagation);
every address, route, iptables rule, overlay and bind mount the node needs is made inside it, and the
control plane, the node and the tests run inside it too. Its only addresses are loopback, the node IP on its
own loopback and the pods' bridge; the default route is a blackhole, so nothing can leave. The kubelet's
cgroups live under a root of our own that `stop()` removes after killing, by PID, what still runs there.
Facts behind each step: ../shared/notes/real-node.md.

Standard library only (runs before anything is pip-installed).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from localcluster.errors import NodeError

NODE_NAME = "kubechat-node"
NODE_IP = "10.77.0.1"
POD_SUBNET = "10.88.0.0/16"
BRIDGE = "kc0"
# The kubelet checks these host-global sysctls and writes them unless they already hold its values; inside our
# mount namespace small files with those values are bind-mounted over them, so it writes nothing.
KUBELET_SYSCTLS = {
    "vm/overcommit_memory": "1",
    "vm/panic_on_oom": "0",
    "kernel/panic": "10",
    "kernel/panic_on_oops": "1",
    "kernel/keys/root_maxkeys": "1000000",
    "kernel/keys/root_maxbytes": "25000000",
}
# Host paths with built-in defaults in containerd, the CNI plugins and the kubelet: overlaid, so their writes
# land in our scratch directory while what the host has there (e.g. /var/lib/dpkg) stays readable.
OVERLAID = ("/var/lib", "/opt", "/usr/libexec")
CGROUP_FS = Path("/sys/fs/cgroup")
NODE_PREFIX = "kubechat-node-"  # of the node's cgroup root and scratch dir, followed by the holder's PID
PAUSE_IMAGE = "docker.io/kubechat/pause:1"


@dataclass(frozen=True)
class NodeLayout:
    """Where the node keeps its files (all under `scratch`) and which cgroup root it owns."""

    scratch: Path
    cgroup_root: str

    @classmethod
    def for_holder(cls, holder_pid: int) -> NodeLayout:
        """Both named after the holder, which lives as long as the node: if it is gone, they are stale.
        The scratch dir is short on purpose: containerd's sockets must fit a unix socket path (104 bytes)."""
        name = f"{NODE_PREFIX}{holder_pid}"
        scratch = Path(tempfile.gettempdir()) / name
        scratch.mkdir(mode=0o700)
        return cls(scratch, name)

    @property
    def containerd_socket(self) -> Path:
        return self.scratch / "containerd" / "containerd.sock"

    @property
    def containerd_config(self) -> Path:
        return self.scratch / "containerd" / "config.toml"

    @property
    def cni_conf_dir(self) -> Path:
        return self.scratch / "cni" / "net.d"

    @property
    def kubelet_dir(self) -> Path:
        return self.scratch / "kubelet"

    @property
    def kubelet_config(self) -> Path:
        return self.scratch / "kubelet-config.json"

    @property
    def kube_proxy_config(self) -> Path:
        return self.scratch / "kube-proxy-config.json"

    @property
    def resolv_conf(self) -> Path:
        return self.scratch / "etc" / "resolv.conf"


# ---- the namespace -----------------------------------------------------------------------------------------
HOLDER_ARGV = ["sleep", "infinity"]
#: Run HOLDER_ARGV in new namespaces: `unshare` execs it, so the PID and command line are sleep's own.
HOLDER_WRAPPER = ["unshare", "--net", "--mount", "--propagation", "private", "--"]


def enter_argv(holder_pid: int, argv: Sequence[str]) -> list[str]:
    """`argv` run inside the holder's namespaces (nsenter execs it: the PID stays the program's own), in
    the caller's working directory (entering a mount namespace would otherwise start it in /)."""
    return ["nsenter", "-t", str(holder_pid), "-n", "-m", f"--wd={os.getcwd()}", "--", *argv]


def run_inside(holder_pid: int, argv: Sequence[str], what: str) -> str:
    result = subprocess.run(enter_argv(holder_pid, argv), capture_output=True, text=True)
    if result.returncode != 0:
        raise NodeError(f"{what} failed: {' '.join(argv)}: {result.stderr.strip() or result.stdout.strip()}")
    return result.stdout


def _setup_script(layout: NodeLayout, service_cidr: str) -> str:
    """Shell run once inside the namespace: its network, then its mounts."""
    s = layout.scratch
    lines = [
        "set -eu",
        "ip link set lo up",
        f"ip addr add {NODE_IP}/32 dev lo",
        # A route for the Service range, else the lookup fails before kube-proxy's OUTPUT DNAT runs; the
        # veth's peer never forwards. This kernel has no `dummy` links.
        "ip link add kc-svc0 type veth peer name kc-svc1",
        "ip link set kc-svc0 up",
        "ip link set kc-svc1 up",
        f"ip route add {service_cidr} dev kc-svc0",
        "ip route add blackhole default",
        # Per network namespace: pods reach the node IP and each other through the bridge.
        "echo 1 > /proc/sys/net/ipv4/ip_forward",
    ]
    for target in OVERLAID:
        name = target.strip("/").replace("/", "-")
        upper, work = s / "overlay" / name / "upper", s / "overlay" / name / "work"
        lines.append(f"mkdir -p {upper} {work}")
        lines.append(
            f"mount -t overlay overlay -o lowerdir={target},upperdir={upper},workdir={work} {target}"
        )
    lines += [
        f"mount --bind {s / 'run'} /run",
        f"mount --bind {s / 'log'} /var/log",
        f"mount --bind {s / 'etc' / 'hosts'} /etc/hosts",
        f"mount --bind {layout.resolv_conf} /etc/resolv.conf",
    ]
    for key in KUBELET_SYSCTLS:
        lines.append(f"mount --bind {s / 'sysctl' / key.replace('/', '.')} /proc/sys/{key}")
    return "\n".join(lines) + "\n"


def write_scratch(layout: NodeLayout) -> None:
    """The files bind-mounted into the namespace: its /run, /var/log, hosts, resolv.conf, sysctl values."""
    s = layout.scratch
    for sub in ("run", "log", "etc", "sysctl", "cni/net.d", "cni/ipam", "containerd", "kubelet"):
        (s / sub).mkdir(parents=True, exist_ok=True)
    (s / "etc" / "hosts").write_text(f"127.0.0.1 localhost\n{NODE_IP} {NODE_NAME}\n")
    # Pods inherit this (the cluster has no DNS service): nothing answers there, and nothing leaves.
    layout.resolv_conf.write_text("nameserver 127.0.0.1\n")
    for key, value in KUBELET_SYSCTLS.items():
        (s / "sysctl" / key.replace("/", ".")).write_text(value + "\n")


# ---- configuration files -----------------------------------------------------------------------------------
def containerd_config(layout: NodeLayout) -> str:
    s = layout.scratch
    return f"""version = 2
root = "{s / "containerd" / "root"}"
state = "{s / "containerd" / "state"}"

[grpc]
  address = "{layout.containerd_socket}"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  # runc cannot set oom_score_adj here: the capability bounding set lacks CAP_SYS_RESOURCE.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        # Inside the node's cgroup root like the pods: what a killed run leaves is found and removed there.
        ShimCgroup = "/{layout.cgroup_root}/shims"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{layout.cni_conf_dir}"
"""


def cni_conflist(layout: NodeLayout) -> dict[str, object]:
    return {
        "cniVersion": "1.0.0",
        "name": "kubechat",
        "plugins": [
            {
                "type": "bridge",
                "bridge": BRIDGE,
                "isGateway": True,
                "hairpinMode": True,  # a pod reaching its own Service
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": POD_SUBNET}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": str(layout.scratch / "cni" / "ipam"),
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }


def kubelet_config(
    layout: NodeLayout, ca_cert: Path, cert: Path, key: Path, healthz_port: int
) -> dict[str, object]:
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "containerRuntimeEndpoint": f"unix://{layout.containerd_socket}",
        # cgroup v1 here: allowed explicitly, with cgroupfs and a cgroup root of our own to remove afterwards.
        "failCgroupV1": False,
        "cgroupDriver": "cgroupfs",
        "cgroupRoot": f"/{layout.cgroup_root}",
        "address": NODE_IP,
        "port": 10250,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": healthz_port,
        "tlsCertFile": str(cert),
        "tlsPrivateKeyFile": str(key),
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True},
            "x509": {"clientCAFile": str(ca_cert)},
        },
        "authorization": {"mode": "Webhook"},
        "resolvConf": str(layout.resolv_conf),
        "failSwapOn": False,
        # A small, busy disk must not evict test pods or garbage-collect the images we imported.
        "evictionHard": {"memory.available": "50Mi", "nodefs.available": "1%", "imagefs.available": "1%"},
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        # How often each pod is re-synced, which is when a changed Secret reaches its volume (default 1m plus
        # the Secret cache's TTL; seconds here so rotation tests are quick).
        "syncFrequency": "3s",
        "nodeStatusUpdateFrequency": "5s",
        "serializeImagePulls": False,
        "protectKernelDefaults": False,
        "registerNode": True,
    }


def kube_proxy_config(kubeconfig: Path, healthz_port: int, metrics_port: int) -> dict[str, object]:
    return {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "mode": "iptables",
        "clientConnection": {"kubeconfig": str(kubeconfig)},
        "clusterCIDR": POD_SUBNET,
        "hostnameOverride": NODE_NAME,
        "bindAddress": NODE_IP,
        "nodePortAddresses": ["primary"],
        "healthzBindAddress": f"127.0.0.1:{healthz_port}",
        "metricsBindAddress": f"127.0.0.1:{metrics_port}",
        # Zeros: leave the (global) conntrack table parameters alone.
        "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
    }


def write_configs(
    layout: NodeLayout,
    ca_cert: Path,
    kubelet_cert: Path,
    kubelet_key: Path,
    proxy_kubeconfig: Path,
    ports: Sequence[int],
) -> None:
    layout.containerd_config.write_text(containerd_config(layout))
    (layout.cni_conf_dir / "10-kubechat.conflist").write_text(json.dumps(cni_conflist(layout), indent=2))
    layout.kubelet_config.write_text(
        json.dumps(kubelet_config(layout, ca_cert, kubelet_cert, kubelet_key, ports[0]), indent=2)
    )
    layout.kube_proxy_config.write_text(
        json.dumps(kube_proxy_config(proxy_kubeconfig, ports[1], ports[2]), indent=2)
    )


def kube_proxy_healthz_port(layout: NodeLayout) -> int:
    config = json.loads(layout.kube_proxy_config.read_text())
    return int(config["healthzBindAddress"].rsplit(":", 1)[1])


def wait_for_namespace(holder_pid: int, timeout: float = 10.0) -> None:
    """Until `unshare` has made the namespaces and exec'd its sleep (its netns is no longer ours)."""
    deadline = time.monotonic() + timeout
    while _netns_id(holder_pid) == _netns_id(os.getpid()) or _netns_id(holder_pid) is None:
        if time.monotonic() > deadline:
            raise NodeError(f"the namespace holder (pid {holder_pid}) did not create its namespaces")
        time.sleep(0.02)


def setup_namespace(holder_pid: int, layout: NodeLayout, service_cidr: str) -> None:
    run_inside(
        holder_pid, ["sh", "-c", _setup_script(layout, service_cidr)], "setting up the node's namespace"
    )


# ---- command lines -----------------------------------------------------------------------------------------
def containerd_argv(layout: NodeLayout) -> list[str]:
    containerd = shutil.which("containerd")
    if containerd is None:
        raise NodeError(
            "containerd is not installed "
            "(Debian: apt-get install containerd runc containernetworking-plugins iptables)"
        )
    return [containerd, "--config", str(layout.containerd_config), "--log-level", "warn"]


def kubelet_argv(binary: Path, layout: NodeLayout, kubeconfig: Path) -> list[str]:
    return [
        str(binary), "--config", str(layout.kubelet_config), "--kubeconfig", str(kubeconfig),
        "--root-dir", str(layout.kubelet_dir),
        "--hostname-override", NODE_NAME, "--node-ip", NODE_IP,
        "--v", "1",
    ]  # fmt: skip


def kube_proxy_argv(binary: Path, layout: NodeLayout) -> list[str]:
    return [str(binary), "--config", str(layout.kube_proxy_config), "--v", "1"]


def standalone_containerd(folder: Path) -> tuple[subprocess.Popen[bytes], list[str]]:
    """A containerd of its own (root, state and socket under `folder`, no CRI plugin), outside any node:
    for importing images on their own (tests, bench/image_import.py). Returns it and its `ctr` command
    once it answers; the caller terminates it and removes `folder`. Keep `folder` short (socket paths)."""
    socket = folder / "containerd.sock"
    (folder / "config.toml").write_text(
        f'version = 2\nroot = "{folder}/root"\nstate = "{folder}/state"\n'
        'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
        f'[grpc]\n  address = "{socket}"\n'
        f'[plugins."io.containerd.internal.v1.opt"]\n  path = "{folder}/opt"\n'
    )
    with (folder / "containerd.log").open("wb") as log:
        proc = subprocess.Popen(
            ["containerd", "--config", str(folder / "config.toml")], stdout=log, stderr=subprocess.STDOUT
        )
    command = ["ctr", "--address", str(socket), "--namespace", "k8s.io"]
    deadline = time.monotonic() + 30
    while subprocess.run([*command, "version"], capture_output=True).returncode != 0:
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise NodeError(f"containerd did not start; see {folder / 'containerd.log'}")
        time.sleep(0.2)
    return proc, command


def ctr(holder_pid: int, layout: NodeLayout, *args: str) -> str:
    """containerd's own CLI on the Kubernetes namespace (where the kubelet looks for images)."""
    argv = ["ctr", "--address", str(layout.containerd_socket), "--namespace", "k8s.io", *args]
    return run_inside(holder_pid, argv, "ctr")


def import_image(holder_pid: int, layout: NodeLayout, archive: Path) -> None:
    ctr(holder_pid, layout, "images", "import", "--no-unpack=false", str(archive))


# ---- teardown ----------------------------------------------------------------------------------------------
def _netns_id(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/net")
    except OSError:
        return None


def namespace_members(holder_pid: int) -> list[int]:
    """PIDs in the holder's network namespace (containerd's shims among them), never this process."""
    target = _netns_id(holder_pid)
    if target is None:
        return []
    members = []
    for entry in Path("/proc").iterdir():
        pid = int(entry.name) if entry.name.isdigit() else 0
        if pid and pid not in (os.getpid(), holder_pid) and _netns_id(pid) == target:
            members.append(pid)
    return members


def cgroup_dirs(cgroup_root: str) -> list[Path]:
    """Every directory under our cgroup root in every hierarchy, deepest first (the order rmdir needs)."""
    found: list[Path] = []
    for hierarchy in CGROUP_FS.iterdir():
        top = hierarchy / cgroup_root
        if top.is_dir():
            found += [Path(dirpath) for dirpath, _, _ in os.walk(top)]
    return sorted(found, key=lambda p: len(p.parts), reverse=True)


def cgroup_members(cgroup_root: str) -> list[int]:
    pids: set[int] = set()
    for directory in cgroup_dirs(cgroup_root):
        with contextlib.suppress(OSError):
            pids.update(int(line) for line in (directory / "cgroup.procs").read_text().split())
    pids.discard(os.getpid())
    return sorted(pids)


def kill_all(pids: Iterable[int], timeout: float = 5.0) -> None:
    """SIGKILL (these are pods' processes and shims; the node is going away anyway) and wait for them."""
    pids = list(pids)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() for p in pids):
        time.sleep(0.05)


def create_cgroups(cgroup_root: str) -> None:
    """The kubelet wants its cgroup root to exist in every v1 hierarchy, and containerd's shims want theirs
    (`ShimCgroup`); a new cpuset needs its parent's cpus and mems before tasks can join it."""
    for hierarchy in CGROUP_FS.iterdir():
        if not (hierarchy / "cgroup.procs").exists():
            continue
        parent = hierarchy
        for directory in (hierarchy / cgroup_root, hierarchy / cgroup_root / "shims"):
            directory.mkdir(exist_ok=True)
            for name in ("cpuset.cpus", "cpuset.mems"):
                if (parent / name).exists():
                    (directory / name).write_text((parent / name).read_text())
            parent = directory


def reap_stale_nodes() -> list[str]:
    """Kill what a node left behind when its run was killed (pods, shims: by PID, from the node's cgroups),
    remove those cgroups and its scratch dir; the namespaces die with their last process. Returns the names
    of the nodes removed."""
    parents = [*(h for h in CGROUP_FS.iterdir() if h.is_dir()), Path(tempfile.gettempdir())]
    stale = set()
    for parent in parents:
        for path in parent.glob(f"{NODE_PREFIX}*"):
            holder = path.name.removeprefix(NODE_PREFIX)
            if holder.isdigit() and not _is_holder(int(holder)):
                stale.add(path.name)
    for name in sorted(stale):
        remove_cgroups(name)
        shutil.rmtree(Path(tempfile.gettempdir()) / name, ignore_errors=True)
    return sorted(stale)


def _is_holder(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:2] == [b"sleep", b"infinity"]
    except OSError:
        return False


def remove_cgroups(cgroup_root: str, timeout: float = 10.0) -> list[Path]:
    """rmdir our cgroups bottom-up (retrying while the kernel finishes tearing down killed tasks)."""
    deadline = time.monotonic() + timeout
    while True:
        kill_all(cgroup_members(cgroup_root))
        for directory in cgroup_dirs(cgroup_root):
            with contextlib.suppress(OSError):
                directory.rmdir()
        left = cgroup_dirs(cgroup_root)
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.1)


# ---- this process's network namespace ----------------------------------------------------------------------
_CLONE_NEWNET = 0x40000000


@contextlib.contextmanager
def network_of(target: str | None) -> Iterator[None]:
    """The calling thread in the network namespace `target` (a path such as /proc/PID/ns/net) for the block,
    then back where it was; None: stay. For creating sockets there: a socket stays in the namespace it was
    made in, whichever thread uses it afterwards."""
    if target is None:
        yield
        return
    previous = switch_network(target)
    try:
        yield
    finally:
        switch_network(previous)
        os.close(previous)


def switch_network(target: str | int) -> int:
    """Move the calling thread into a network namespace (a path such as /proc/PID/ns/net, or an open fd);
    return an fd of the one it left, to switch back. Threads and processes started afterwards inherit it."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    previous = os.open(f"/proc/self/task/{threading.get_native_id()}/ns/net", os.O_RDONLY)
    fd = target if isinstance(target, int) else os.open(target, os.O_RDONLY)
    try:
        if libc.setns(fd, _CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise NodeError(f"cannot enter network namespace {target}: {os.strerror(err)}")
    finally:
        if not isinstance(target, int):
            os.close(fd)
    return previous
