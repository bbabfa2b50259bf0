"""`make demo` / `make demo-down` (`python3 -m localcluster demo up|down`): kubechat end to end on this
machine, nothing from the internet.

`up` starts the local cluster with a real node (building what is missing: binaries, images), installs the
CRD and the Helm chart (the operator runs in a pod from the locally built image), starts a small
OpenAI-compatible echo server on the node IP, applies the `helpdesk` bot, waits until it is Ready, asks it a
question through its Service and prints the answer and how to go on. `down` removes all of it.

Standard library only: a plain python3 runs it, before any venv exists (buildah and the images' own pip
build the images).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from localcluster import build, cache, node
from localcluster.cluster import LocalCluster, cluster_dir, prepare
from localcluster.components import Process, is_running, spawn, stop
from localcluster.errors import LocalClusterError

REPO = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
BOT_MANIFEST = REPO / "examples" / "demo" / "helpdesk.yaml"
ECHO_PORT = 8000
RELEASE, OPERATOR_NS = "kubechat", "kubechat-system"
BOT, BOT_NS = "helpdesk", "default"
QUESTION = "What can you do for me?"
LOCALCLUSTER = "python3 -m localcluster"


def say(message: str) -> None:
    print(f"[demo] {message}", flush=True)


def run(*argv: str, stdin: str | None = None, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(argv, input=stdin, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        output = (done.stderr.strip() or done.stdout.strip()).splitlines()
        raise LocalClusterError(f"{' '.join(argv[:3])} failed: {output[-1] if output else 'no output'}")
    return done.stdout


class Demo:
    def __init__(self) -> None:
        self.workdir = cluster_dir()
        self.state_file = self.workdir / "demo.json"
        self.kubeconfig = self.workdir / "kubeconfig"

    def kubectl(self, *args: str, stdin: str | None = None) -> str:
        return run("kubectl", "--kubeconfig", str(self.kubeconfig), *args, stdin=stdin)

    # ---- up ----------------------------------------------------------------------------------------------
    def up(self) -> None:
        started = time.monotonic()
        say("building what is missing (binaries, images) before the cluster's namespace is entered")
        prepare(real_node=True, extra=["helm"])
        say(f"everything built or cached after {time.monotonic() - started:.1f} s")
        cluster = self._cluster()
        say(f"cluster with a real node up after {time.monotonic() - started:.1f} s")
        self.kubectl("apply", "--server-side", "-f", str(REPO / "crds"))
        self.kubectl("wait", "--for=condition=Established", "crd/chatbots.kubechat.dev", "--timeout=60s")
        echo = self._echo_server(cluster)
        self._operator()
        secret = self.kubectl(
            "create", "secret", "generic", "openai", "-n", BOT_NS, "--from-literal=apiKey=demo-no-real-key",
            "--dry-run=client", "-o", "json",
        )  # fmt: skip
        self.kubectl("apply", "-f", "-", stdin=secret)
        applied = time.monotonic()
        self.kubectl("apply", "-n", BOT_NS, "-f", str(BOT_MANIFEST))
        say(f"applied examples/demo/helpdesk.yaml; waiting for chatbot/{BOT} to be Ready")
        self.kubectl("wait", "-n", BOT_NS, "--for=condition=Ready", f"chatbot/{BOT}", "--timeout=180s")
        ip = self.kubectl("get", "service", BOT, "-n", BOT_NS, "-o", "jsonpath={.spec.clusterIP}")
        reply = ask(f"http://{ip}/chat", QUESTION)
        answered = time.monotonic()
        self.state_file.write_text(json.dumps({"echo": {"pid": echo.pid, "argv": echo.argv}}) + "\n")
        print(
            f"""
Q: {QUESTION}
A: {reply["reply"]}

kubectl apply -> first answer: {answered - applied:.1f} s; whole demo: {answered - started:.1f} s.

The cluster lives in a network namespace of its own; reach it from inside (KUBECONFIG is set there):
  {LOCALCLUSTER} exec -- kubectl get chatbots -A
  {LOCALCLUSTER} exec -- curl -s http://{ip}/chat -H 'Content-Type: application/json' \\
      -d '{{"message": "Hello!"}}'
  {LOCALCLUSTER} exec -- kubectl scale chatbot/{BOT} --replicas=3
  {LOCALCLUSTER} shell        # a shell in there
The bot's upstream is an echo server (no internet here). On a real cluster, put your key in the Secret
and drop `openAI.baseUrl` (examples/helpdesk.yaml, docs/install.md):
  kubectl create secret generic openai --from-literal=apiKey="$OPENAI_API_KEY"
`make demo-down` removes everything.""",
            flush=True,
        )

    def _cluster(self) -> LocalCluster:
        """The running real-node cluster (entering its network), or a new one."""
        running = LocalCluster.from_state(self.workdir)
        if running is not None and running.is_complete():
            if running.holder is None:
                raise LocalClusterError(f"a kwok cluster runs in {self.workdir}: `make cluster-down` first")
            node.switch_network(f"/proc/{running.holder.pid}/ns/net")
            return running
        if running is not None:
            running.stop()  # what is left of a broken one
        cluster = LocalCluster(self.workdir, real_node=True, timeout=180)
        try:
            cluster.start()
        except (OSError, subprocess.CalledProcessError) as err:
            raise LocalClusterError(f"the cluster did not start: {err}") from err
        return cluster

    def _echo_server(self, cluster: LocalCluster) -> Process:
        """The echo server of an earlier `make demo` on this cluster, or a new one."""
        earlier = self._recorded_echo()
        if earlier is not None and is_running(earlier):
            return earlier
        argv = [sys.executable, str(HERE / "echo_openai.py"), "--host", node.NODE_IP]
        argv += ["--port", str(ECHO_PORT)]
        echo = spawn("echo-openai", argv, cluster.log_dir)  # inherits this thread's network namespace
        url = f"http://{node.NODE_IP}:{ECHO_PORT}/v1/chat/completions"
        deadline = time.monotonic() + 10
        while True:
            try:
                ask(url, "ping", body={"model": "m", "messages": [{"role": "user", "content": "ping"}]})
                return echo
            except OSError:
                if not is_running(echo) or time.monotonic() > deadline:
                    raise LocalClusterError(f"the echo server did not start; see {echo.log}") from None
                time.sleep(0.1)

    def _operator(self) -> None:
        """The Helm chart, with the images built here (already in the node's containerd)."""
        helm = build.COMPONENTS["helm"].binary  # built by prepare(): no download can work in here
        home = self.workdir / "helm-home"
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig), "HELM_CONFIG_HOME": str(home / "config"),
               "HELM_CACHE_HOME": str(home / "cache"), "HELM_DATA_HOME": str(home / "data")}  # fmt: skip
        run(
            str(helm), "upgrade", "--install", RELEASE, str(REPO / "charts" / "kubechat"),
            "-n", OPERATOR_NS, "--create-namespace", "--wait", "--timeout", "180s",
            "--set", "image.repository=docker.io/kubechat/operator", "--set", "image.tag=dev",
            "--set", "botImage.repository=docker.io/kubechat/chatbot", "--set", "botImage.tag=dev",
            env=env,
        )  # fmt: skip
        say("operator running in the cluster (Helm release kubechat in kubechat-system)")

    def _recorded_echo(self) -> Process | None:
        """The echo server an earlier `up` recorded (by PID), if any."""
        if not self.state_file.exists():
            return None
        echo = json.loads(self.state_file.read_text())["echo"]
        return Process("echo-openai", echo["pid"], echo["argv"], Path(os.devnull))

    # ---- down --------------------------------------------------------------------------------------------
    def down(self) -> None:
        echo = self._recorded_echo()
        if echo is not None:
            stop([echo])
            self.state_file.unlink()
        cluster = LocalCluster.from_state(self.workdir)
        if cluster is not None:
            cluster.stop()
        say(f"demo removed (binaries and images stay cached in {cache.cache_dir()})")


def ask(url: str, message: str, body: dict[str, Any] | None = None, timeout: float = 60) -> dict[str, Any]:
    """POST JSON, retrying while a new Service address starts answering."""
    data = json.dumps(body or {"message": message}).encode()
    deadline = time.monotonic() + timeout
    while True:
        request = urllib.request.Request(url, data, {"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return dict(json.loads(response.read()))
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
