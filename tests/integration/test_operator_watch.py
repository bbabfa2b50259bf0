"""The watches (``watch.py``) against the real API server: listed, watched, resumed after the server ends
a watch, filtered by label on the server, listed again after a ``410 Gone`` (the bots deleted meanwhile
dropped), and stopped promptly; and what an apply answers (the Deployment whole, the rest as metadata)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any

import pytest
from kubechat_operator.controller import Controller, ControllerConfig
from kubechat_operator.kube import ApiError, Kube
from kubechat_operator.watch import BOTS, CHILDREN, Watch
from kubernetes import client

from localcluster.cluster import ClusterInfo
from tests.cluster.polling import eventually
from tests.integration.test_operator import bot_manifest
from tests.support.operator import install_crds

pytestmark = pytest.mark.cluster

SELECTOR = "app.kubernetes.io/managed-by=kubechat-operator"
CONFIG_MAPS = next(c for c in CHILDREN if c.kind == "ConfigMap")


class Seen:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.events: list[tuple[str | None, str, str, str]] = []  # (type, kind, name, data value)

    def __call__(self, event: str | None, obj: Mapping[str, Any]) -> None:
        with self.lock:
            value = str((obj.get("data") or {}).get("v"))
            self.events.append((event, str(obj.get("kind")), obj["metadata"]["name"], value))

    def of(self, name: str) -> list[tuple[str | None, str, str]]:
        with self.lock:
            return [(e, kind, value) for e, kind, n, value in self.events if n == name]


def config_map(name: str, value: str, managed: bool = True) -> client.V1ConfigMap:
    labels = {"app.kubernetes.io/managed-by": "kubechat-operator"} if managed else {"other": "x"}
    return client.V1ConfigMap(metadata=client.V1ObjectMeta(name=name, labels=labels), data={"v": value})


@pytest.fixture
def watching(kube_api: Any, namespace: str) -> Iterator[tuple[Seen, client.CoreV1Api]]:
    core = client.CoreV1Api(kube_api)
    core.create_namespaced_config_map(namespace, config_map("before", "1"))  # there before: listed
    seen = Seen()
    # the server ends each watch after 1 s, so the changes below land after at least one resume
    watch = Watch(Kube(kube_api), CONFIG_MAPS, namespace, SELECTOR, seen, server_timeout=1)
    watch.start()
    try:
        yield seen, core
    finally:
        watch.stop()


def test_children_are_listed_then_watched_across_resumed_watches(
    watching: tuple[Seen, client.CoreV1Api], namespace: str
) -> None:
    seen, core = watching
    eventually(lambda: assert_equal(seen.of("before"), [(None, "ConfigMap", "1")]), what="the listing")
    core.create_namespaced_config_map(namespace, config_map("ignored", "1", managed=False))
    time.sleep(2.5)  # two server-ended watches later
    core.patch_namespaced_config_map("before", namespace, {"data": {"v": "2"}})
    core.create_namespaced_config_map(namespace, config_map("later", "1"))
    core.delete_namespaced_config_map("later", namespace)
    eventually(
        lambda: assert_equal(seen.of("later"), [("ADDED", "ConfigMap", "1"), ("DELETED", "ConfigMap", "1")]),
        what="a child created and deleted",
    )
    assert seen.of("before") == [(None, "ConfigMap", "1"), ("MODIFIED", "ConfigMap", "2")]
    assert seen.of("ignored") == []  # the label selector is applied by the server


def test_a_watch_stops_promptly_while_the_server_holds_it_open(kube_api: Any, namespace: str) -> None:
    seen = Seen()
    watch = Watch(Kube(kube_api), CONFIG_MAPS, namespace, SELECTOR, seen)  # the server's 300 s
    watch.start()
    client.CoreV1Api(kube_api).create_namespaced_config_map(namespace, config_map("one", "1"))
    eventually(lambda: assert_equal(len(seen.of("one")), 1), what="the watch is open")
    watch.stop()  # gives up waiting after 5 s: the thread must be gone by then, not in 300 s
    assert not any(t.name == f"watch {watch.path}" and t.is_alive() for t in threading.enumerate())


def test_a_failing_handler_gets_the_event_again_and_the_watch_goes_on(kube_api: Any, namespace: str) -> None:
    seen = Seen()
    failed: list[str] = []

    def flaky(event: str | None, obj: Mapping[str, Any]) -> None:
        if obj["metadata"]["name"] == "boom" and not failed:
            failed.append("boom")
            raise RuntimeError("a bug in the handler")
        seen(event, obj)

    watch = Watch(Kube(kube_api), CONFIG_MAPS, namespace, SELECTOR, flaky, max_backoff=0.5)
    watch.start()
    try:
        core = client.CoreV1Api(kube_api)
        eventually(lambda: assert_equal(watch.version is not None, True), what="the listing")
        core.create_namespaced_config_map(namespace, config_map("boom", "1"))
        eventually(lambda: assert_equal(seen.of("boom"), [("ADDED", "ConfigMap", "1")]), what="a redelivery")
        core.create_namespaced_config_map(namespace, config_map("after", "1"))
        eventually(
            lambda: assert_equal(seen.of("after"), [("ADDED", "ConfigMap", "1")]), what="the next event"
        )
        assert failed == ["boom"]
    finally:
        watch.stop()


def assert_equal(got: object, want: object) -> None:
    assert got == want, got


def test_a_bot_deleted_while_no_watch_ran_is_dropped_at_the_next_listing(
    cluster: ClusterInfo, kube_api: Any, namespace: str
) -> None:
    """No DELETED event reaches a watch that fell behind (``410 Gone``): the listing that follows tells
    which bots are gone, and the controller drops their state, in the listed namespace only."""
    install_crds(cluster)
    custom = client.CustomObjectsApi(kube_api)
    for name in ("kept", "gone"):
        custom.create_namespaced_custom_object(
            "kubechat.dev", "v1alpha1", namespace, "chatbots", bot_manifest(name)
        )
    controller = Controller(
        Kube(kube_api), ControllerConfig(namespaces=(namespace,))
    )  # its workers not started
    listings: list[set[tuple[str, str]]] = []

    def listed(scope: str | None, keys: set[tuple[str, str]]) -> None:
        assert scope == namespace
        listings.append(keys)
        controller.bots_listed(scope, keys)

    first = Watch(Kube(kube_api), BOTS, namespace, "", controller.bot_event, on_listed=listed)
    first.start()
    eventually(lambda: assert_equal(len(listings), 1), what="the first listing")
    first.stop()
    assert listings[0] == {(namespace, "kept"), (namespace, "gone")}
    assert {k for k in controller.bots} == listings[0]
    controller.bot_event(
        None, {**bot_manifest("elsewhere"), "metadata": {"name": "b", "namespace": "other", "uid": "u"}}
    )

    custom.delete_namespaced_custom_object("kubechat.dev", "v1alpha1", namespace, "chatbots", "gone")
    behind = Watch(Kube(kube_api), BOTS, namespace, "", controller.bot_event, on_listed=listed)
    behind.version = "1"  # long compacted away: the API server answers 410 Gone, so it lists again
    behind.start()
    try:
        eventually(lambda: assert_equal(len(listings), 2), what="the listing after 410 Gone")
    finally:
        behind.stop()
    assert listings[1] == {(namespace, "kept")}
    assert set(controller.bots) == {(namespace, "kept"), ("other", "b")}
    assert controller.sizes()["bots"] == 2


def test_a_deployment_apply_is_answered_whole(kube_api: Any, namespace: str) -> None:
    """The Deployment's answer keeps its status (kube.py): after a restart a bot's first reconcile may
    come before the watch lists the Deployment, and that answer is what the bot's status is built from
    (tests/unit/test_tracking.py); the other kinds are answered as metadata."""
    kube = Kube(kube_api)
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "whole", "namespace": namespace, "labels": {"app": "whole"}},
        "spec": {
            "selector": {"matchLabels": {"app": "whole"}},
            "template": {
                "metadata": {"labels": {"app": "whole"}},
                "spec": {"containers": [{"name": "c", "image": "example.invalid/c:1"}]},
            },
        },
    }
    answer = kube.apply(deployment)
    assert answer["kind"] == "Deployment" and "status" in answer and answer["metadata"]["generation"] == 1
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "meta", "namespace": namespace}}
    assert kube.apply(cm)["kind"] == "PartialObjectMetadata"


def test_an_apply_with_a_field_the_api_does_not_know_is_refused_not_dropped(
    kube_api: Any, namespace: str
) -> None:
    """Applies skip the API server's strict second parse (``fieldValidation=Ignore``, kube.py): what it
    would find is duplicate keys, which a JSON body made from a dict cannot have; a field the API does
    not know must still be refused, so a rendering mistake fails loudly (and is retried, logged) instead
    of vanishing."""
    kube = Kube(kube_api)
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "typo", "namespace": namespace}}
    with pytest.raises(ApiError) as refused:
        kube.apply({**cm, "dta": {"k": "v"}})
    # the same answer with Warn, Strict or Ignore (checked by hand against this API server): a 500
    assert ".dta: field not declared in schema" in refused.value.status.message, refused.value.status
    names = {c.metadata.name for c in client.CoreV1Api(kube_api).list_namespaced_config_map(namespace).items}
    assert "typo" not in names  # nothing written
    kube.apply({**cm, "data": {"k": "v"}})
    assert client.CoreV1Api(kube_api).read_namespaced_config_map("typo", namespace).data == {"k": "v"}
