"""The `localcluster` command: build, start, inspect and stop the local cluster, and run the demo.

Standard library only, so it runs before anything is pip-installed:
    python3 -m localcluster build | up [--node real] | down | status | env | exec CMD... | shell
    python3 -m localcluster images build all | demo up | demo down
Every failure is one line on stderr (what failed, what to do) and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from localcluster import build, images, node
from localcluster.cluster import DEFAULT_DIR, LocalCluster, cluster_dir
from localcluster.components import is_running, rss_kib
from localcluster.errors import LocalClusterError

COMMAND = "python3 -m localcluster"


def cmd_build(args: argparse.Namespace) -> int:
    started = time.monotonic()
    names = args.components or list(build.COMPONENTS)
    for name in names:
        component = build.COMPONENTS[name]
        state = "cached" if component.binary.exists() and not args.force else "to build"
        print(f"{name:24} {component.version:10} {state:9} {component.binary}")
    build.ensure_built(names, force=args.force)
    print(f"binaries ready in {time.monotonic() - started:.1f} s")
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    workdir = cluster_dir()
    running = LocalCluster.from_state(workdir)
    if running is not None:
        if running.is_complete():
            print(f"already running at {running.server}; kubeconfig: {running.kubeconfig}")
            return 0
        print("cleaning up a previous cluster that is no longer complete", file=sys.stderr)
        running.stop()
    cluster = LocalCluster(workdir, nodes=args.nodes, timeout=args.timeout, real_node=args.node == "real")
    try:
        info = cluster.start()
    except (RuntimeError, OSError, subprocess.CalledProcessError) as err:  # ComponentError is a RuntimeError
        print(f"cluster-up failed: {err}", file=sys.stderr)
        return 1
    print(f"API server: {info.server}\nkubeconfig: {info.kubeconfig}\nlogs:       {cluster.log_dir}")
    if info.holder_pid is None:
        print(f"export KUBECONFIG={info.kubeconfig}")
    else:
        print("The cluster lives in a network namespace of its own; reach it from inside:")
        print(f"  {COMMAND} exec -- kubectl get nodes     # one command")
        print(f"  {COMMAND} shell                         # a shell (KUBECONFIG set)")
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    cluster = LocalCluster.from_state(cluster_dir())
    if cluster is None:
        print("no local cluster state: nothing to stop")
        return 0
    names = ", ".join(f"{p.name}={p.pid}" for p in cluster.processes)
    cluster.stop()
    print(f"stopped {names}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    cluster = LocalCluster.from_state(cluster_dir())
    if cluster is None:
        print("not running")
        return 1
    healthy = True
    total = 0
    print(f"API server: {cluster.server}\nkubeconfig: {cluster.kubeconfig}")
    for p in cluster.processes:
        alive = is_running(p)
        healthy &= alive
        rss = rss_kib(p.pid) if alive else None
        total += rss or 0
        memory = f"{rss / 1024:.0f} MiB RSS" if rss else ""
        print(f"{p.name:24} pid {p.pid:<8} {'running' if alive else 'STOPPED':8} {memory}")
    if cluster.holder is not None:
        healthy &= is_running(cluster.holder)
        tracked = {p.pid for p in cluster.processes}
        others = [pid for pid in node.namespace_members(cluster.holder.pid) if pid not in tracked]
        if cluster.node_layout is not None:
            pods = node.cgroup_members(cluster.node_layout.cgroup_root)
            others += [pid for pid in pods if pid not in others]
        rest = sum(rss_kib(pid) or 0 for pid in others)
        total += rest
        print(f"{'pods, shims, the rest':24} {len(others)} processes        {rest / 1024:.0f} MiB RSS")
        print(f"namespace holder pid {cluster.holder.pid}; enter it with: {COMMAND} shell")
    print(f"{'total':24} {'':23} {total / 1024:.0f} MiB RSS")
    return 0 if healthy else 1


def cmd_exec(args: argparse.Namespace) -> int:
    """Run a command where the cluster is: inside a real node's namespaces, with KUBECONFIG set."""
    cluster = LocalCluster.from_state(cluster_dir())
    if cluster is None:
        print("no local cluster is running (start one with `up`)", file=sys.stderr)
        return 1
    command = args.command_line or [os.environ.get("SHELL", "/bin/sh")]
    if command[0] == "--":
        command = command[1:]
    reuse = "KUBECHAT_REAL_KUBECONFIG" if cluster.real_node else "KUBECHAT_KUBECONFIG"  # for pytest
    env = dict(os.environ, KUBECONFIG=str(cluster.kubeconfig), **{reuse: str(cluster.kubeconfig)})
    argv = node.enter_argv(cluster.holder.pid, command) if cluster.holder else command
    try:
        return subprocess.run(argv, env=env).returncode
    except FileNotFoundError as err:
        print(f"cannot run {command[0]}: {err.strerror}", file=sys.stderr)
        return 127


def cmd_env(args: argparse.Namespace) -> int:
    print(f"export KUBECONFIG={cluster_dir() / 'kubeconfig'}")
    return 0


def cmd_pin_k8s(args: argparse.Namespace) -> int:
    build.pin_kubernetes(args.version)
    return 0


def cmd_images(args: argparse.Namespace) -> int:
    kinds = [*images.KINDS, "pause"] if args.image == "all" else [args.image]
    for kind in kinds:
        started = time.monotonic()
        archive = (
            images.build_pause(args.out, args.force)
            if kind == "pause"
            else images.build_image(kind, args.out, args.tag, args.force)
        )
        print(f"{archive.reference}  {archive.path}  {time.monotonic() - started:.1f}s", flush=True)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from localcluster import demo

    demo.Demo().up() if args.demo_command == "up" else demo.Demo().down()
    return 0


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog=COMMAND, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = top.add_subparsers(dest="command", required=True)
    p_build = sub.add_parser("build", help="build missing binaries into the cache")
    p_build.add_argument("components", nargs="*", metavar="COMPONENT", help=", ".join(build.COMPONENTS))
    p_build.add_argument("--force", action="store_true", help="rebuild even if cached")
    p_build.set_defaults(func=cmd_build)
    p_up = sub.add_parser("up", help=f"start a cluster in {DEFAULT_DIR} (or $KUBECHAT_CLUSTER_DIR)")
    p_up.add_argument("--nodes", type=int, default=2, help="number of fake kwok nodes")
    p_up.add_argument(
        "--node",
        choices=("kwok", "real"),
        default=os.environ.get("NODE") or "kwok",
        help="kwok: fake nodes (fast, pods never run); real: one kubelet node running pods for real, with "
        "the whole cluster in a network namespace of its own (default: $NODE or kwok)",
    )
    p_up.add_argument(
        "--timeout", type=float, default=120.0, help="seconds each component may take to be healthy"
    )
    p_up.set_defaults(func=cmd_up)
    sub.add_parser("down", help="stop the cluster by PID and delete its data").set_defaults(func=cmd_down)
    sub.add_parser("status", help="show PIDs, liveness and memory").set_defaults(func=cmd_status)
    sub.add_parser("env", help="print the KUBECONFIG export line").set_defaults(func=cmd_env)
    p_exec = sub.add_parser("exec", help="run a command inside the cluster's namespace, KUBECONFIG set")
    p_exec.add_argument("command_line", nargs=argparse.REMAINDER, metavar="-- COMMAND ...")
    p_exec.set_defaults(func=cmd_exec)
    sub.add_parser("shell", help="a shell inside the cluster's namespace").set_defaults(
        func=cmd_exec, command_line=[]
    )
    p_pin = sub.add_parser("pin-k8s", help="re-pin k8s.io/kubernetes (rewrites its go.mod)")
    p_pin.add_argument("version", help="e.g. v1.36.4")
    p_pin.set_defaults(func=cmd_pin_k8s)
    p_images = sub.add_parser("images", help="the chat service, operator and pause images (OCI archives)")
    images_commands = p_images.add_subparsers(dest="images_command", required=True)
    p_ibuild = images_commands.add_parser("build", help="build OCI archives (cached by their inputs)")
    p_ibuild.add_argument("image", choices=[*images.KINDS, "pause", "all"])
    p_ibuild.add_argument("--tag", default="dev", help="tag of the chatbot and operator images")
    p_ibuild.add_argument("--out", type=Path, help="where the archives go (default: the cache)")
    p_ibuild.add_argument("--force", action="store_true", help="build even when the cache holds it")
    p_images.set_defaults(func=cmd_images)
    p_demo = sub.add_parser("demo", help="kubechat end to end on a real node (`make demo`), or remove it")
    p_demo.add_argument("demo_command", choices=("up", "down"))
    p_demo.set_defaults(func=cmd_demo)
    return top


def main(argv: list[str] | None = None) -> int:
    top = parser()
    args = top.parse_args(argv)
    unknown = set(getattr(args, "components", [])) - set(build.COMPONENTS)
    if unknown:
        top.error(f"unknown component(s): {', '.join(sorted(unknown))}")
    try:
        return int(args.func(args))
    except LocalClusterError as err:
        print(f"{COMMAND} {args.command}: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{COMMAND} {args.command}: interrupted", file=sys.stderr)
        return 130
