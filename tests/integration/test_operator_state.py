"""Per-bot state is bounded by the bots that exist: 1,000 bots created and deleted leave nothing behind.

The operator runs in this process (``kopf.run`` in a thread, as ``kubechat-operator`` runs it, with the
same typed memo), so the test can look into its maps; RSS is this process's, so the bound is loose.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import kopf
import kubechat_operator.handlers  # noqa: F401  (registers the handlers)
import pytest
from kubechat_operator import GROUP, PLURAL, VERSION
from kubechat_operator.controller import Controller, ControllerConfig
from kubechat_operator.memo import OperatorMemo
from kubernetes import client
from kubernetes.config import kube_config

from localcluster.cluster import ClusterInfo
from tests.cluster.polling import eventually
from tests.integration.test_operator import bot_manifest
from tests.support.operator import install_crds

pytestmark = pytest.mark.cluster

BOTS = int(os.environ.get("KUBECHAT_TEST_BOTS", "1000"))
BATCH = 100


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS in /proc/self/status")


@pytest.fixture
def controller(cluster: ClusterInfo, namespace: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Controller]:
    install_crds(cluster)
    # as if the process had started with KUBECONFIG set (the client library reads it at import)
    monkeypatch.setenv("KUBECONFIG", str(cluster.kubeconfig))
    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(cluster.kubeconfig))
    memo = OperatorMemo(ControllerConfig(resync_seconds=0, namespaces=(namespace,)))
    stop, ready = threading.Event(), threading.Event()
    thread = threading.Thread(
        target=kopf.run,
        kwargs={
            "standalone": True,
            "clusterwide": False,
            "namespaces": [namespace],
            "memo": memo,
            "stop_flag": stop,
            "ready_flag": ready,
        },
        daemon=True,
    )
    thread.start()
    try:
        assert ready.wait(60), "the operator did not start"
        yield memo.running()
    finally:
        stop.set()
        thread.join(30)


def test_a_thousand_bots_come_and_go_and_leave_no_state(
    controller: Controller, kube_api: Any, namespace: str
) -> None:
    """In rounds of BATCH (the test cluster's Service range holds about 250 addresses): after the first
    round has warmed the process up, the rest must not make it grow, and every round ends empty."""
    custom, core = client.CustomObjectsApi(kube_api), client.CoreV1Api(kube_api)
    core.create_namespaced_secret(
        namespace, client.V1Secret(metadata=client.V1ObjectMeta(name="openai"), string_data={"apiKey": "k"})
    )
    before = rss_mib()
    warmed = 0.0
    for start in range(0, BOTS, BATCH):
        names = [f"b-{i:04d}" for i in range(start, min(start + BATCH, BOTS))]

        def create(name: str) -> None:
            body = bot_manifest(name, replicas=0)  # no pods: the operator's state is what is measured
            custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(create, names))

        def all_reconciled(expected: int = len(names)) -> None:
            listed = custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)["items"]
            done = [b for b in listed if (b.get("status") or {}).get("observedGeneration")]
            assert len(done) == expected, f"{len(done)} of {expected} bots have a status"

        eventually(all_reconciled, timeout=120, interval=1, what=f"bots {names[0]}.. reconciled")
        assert controller.sizes()["bots"] == len(names)
        custom.delete_collection_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)

        def forgotten() -> None:
            sizes = controller.sizes()
            assert sizes["bots"] == sizes["waiting"] == sizes["failures"] == sizes["processing"] == 0, sizes

        eventually(forgotten, timeout=60, interval=0.5, what="every bot's state dropped")

        def services_gone() -> None:  # their cluster IPs are free again for the next round
            assert not core.list_namespaced_service(namespace).items

        eventually(services_gone, timeout=120, interval=1, what="the garbage collector done")
        if start == 0:
            warmed = rss_mib()
    grown, after_warm_up = rss_mib() - before, rss_mib() - warmed
    print(f"{BOTS} bots created and deleted: RSS +{grown:.1f} MiB, +{after_warm_up:.1f} MiB after round 1")
    # a full copy of each bot, its children and their managed fields would be several KiB per bot
    assert after_warm_up < 10, f"the process grew by {after_warm_up:.0f} MiB after its first round"
    assert grown < 60, f"the process grew by {grown:.0f} MiB over {BOTS} bots"
