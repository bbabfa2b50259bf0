"""The README's quickstart on the local control plane, run as written, so the README cannot rot."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from localcluster.cluster import ClusterInfo
from tests.cluster.polling import eventually
from tests.support.operator import REPO, Operator, install_crds, kubectl

pytestmark = pytest.mark.cluster


def quickstart_commands() -> list[str]:
    """The shell lines of the first code block under the quickstart heading, comments removed."""
    text = (REPO / "README.md").read_text()
    section = text.split("## Quickstart on a local control plane", 1)[1]
    block = re.search(r"```\n(.*?)```", section, re.S)
    assert block, "the README's quickstart has no code block"
    return [line.split("  #", 1)[0].strip() for line in block.group(1).splitlines() if line.strip()]


@pytest.fixture
def operator(cluster: ClusterInfo, tmp_path: Path) -> Iterator[Operator]:
    install_crds(cluster)
    op = Operator(cluster, tmp_path / "operator.log")
    op.start()
    try:
        yield op
    finally:
        op.stop()


def test_the_quickstart_runs_as_written(
    cluster: ClusterInfo, namespace: str, operator: Operator, tmp_path: Path
) -> None:
    commands = quickstart_commands()
    assert commands[0] == "export KUBECONFIG=$PWD/.local-cluster/kubeconfig"
    assert commands[-1] == "make cluster-down"
    # The test's own cluster stands in for `make cluster-up`'s: point .local-cluster/kubeconfig's
    # place at it (a copy of the repo's layout in a temp dir), and leave `make cluster-down` to the fixture.
    workdir = tmp_path / "repo"
    (workdir / ".local-cluster").mkdir(parents=True)
    (workdir / ".local-cluster" / "kubeconfig").write_text(cluster.kubeconfig.read_text())
    (workdir / "examples").symlink_to(REPO / "examples")
    script = "set -e\n" + "\n".join(
        [
            commands[0],
            f"kubectl config set-context --current --namespace {namespace} >/dev/null",
            *commands[1:-1],
        ]
    )
    env = {**os.environ, "OPENAI_API_KEY": "sk-readme-test"}
    done = subprocess.run(
        ["bash", "-c", script], cwd=workdir, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert (
        "helpdesk" in done.stdout and "gpt-4o-mini" in done.stdout
    )  # `kubectl get chatbots` printed the bot

    def five_ready() -> dict[str, Any]:
        listed = kubectl(
            cluster,
            "-n",
            namespace,
            "get",
            "chatbot",
            "helpdesk",
            "-o",
            "jsonpath={.status.readyReplicas} {.status.conditions[?(@.type=='Ready')].status}",
        )
        assert listed.stdout == "5 True", listed.stdout
        return {}

    eventually(five_ready, timeout=60, what="the scaled quickstart bot Ready with 5 pods")
