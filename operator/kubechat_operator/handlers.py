"""Kopf wiring. Edge: Kopf runs the process (signals, login, liveness, peering) and its startup handler
starts the controller and the watches; every event only reaches the controller, which marks the bot
for reconcile; the reconcile itself (retried with backoff) lives in ``controller``.

The bots and their children are watched by ``watch`` (cheaper per event than Kopf), the children with
a server-side label selector, so the operator never receives other ConfigMaps, Services or
Deployments. With ``--peering`` Kopf watches the bots instead (``watch_bots_with_kopf``), as its
peering pauses only its own watches: an ``@kopf.on.event`` handler, so Kopf writes nothing to the bots
(no progress or last-handled annotations, no finalizers); it must not fail, as Kopf would only log it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

import kopf
from kubernetes import client, config
from prometheus_client import start_http_server

from kubechat_operator import GROUP, PLURAL, VERSION
from kubechat_operator.controller import APPLIES_AT_ONCE, Controller
from kubechat_operator.kube import Kube
from kubechat_operator.memo import OperatorMemo
from kubechat_operator.metrics import OperatorMetrics
from kubechat_operator.watch import Watches

#: Every child carries this label; their watches ask the server to send only those.
SELECTOR = "app.kubernetes.io/managed-by=kubechat-operator"


def _api_client(pool: int) -> client.ApiClient:
    try:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
    except config.ConfigException:
        # KUBECONFIG read now, not when the client library was imported (as its default does)
        config.load_kube_config(config_file=os.environ.get("KUBECONFIG"))  # type: ignore[no-untyped-call]
    configuration = client.Configuration.get_default_copy()
    configuration.connection_pool_maxsize = pool
    return client.ApiClient(configuration)


class NoDiffBase(kopf.DiffBaseStorage):
    """Kopf deep-copies every watched object into a "diff base" on every event, for change handlers
    (``on.create/update``) to diff against. There are none here, so nothing is built or stored: that
    copy was the largest part of Kopf's per-event CPU."""

    def build(self, *, body: kopf.Body, extra_fields: Iterable[Any] | None = None) -> kopf.BodyEssence:
        return kopf.BodyEssence()

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        return None


@kopf.on.startup()
def startup(settings: kopf.OperatorSettings, memo: OperatorMemo, **_: Any) -> None:
    """One API client, the reconcile workers and the children's watches; Kopf posts no Events of its
    own (the controller posts the few a person should see) and keeps no diff base."""
    settings.posting.enabled = False
    settings.persistence.diffbase_storage = NoDiffBase()
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    watches = Watches.count(memo.config.namespaces, memo.watch_bindings, bots=not memo.peering)
    metrics = OperatorMetrics()
    kube = Kube(_api_client(APPLIES_AT_ONCE * memo.config.workers + 4 + watches), metrics)
    controller = Controller(kube, memo.config)
    metrics.watch(controller.statuses, controller.queue.sizes)
    if memo.metrics_address is not None:
        host, port = memo.metrics_address
        memo.metrics_server = start_http_server(port, host, registry=metrics.registry)[0]
    controller.start()
    memo.controller = controller
    memo.watches = Watches(
        kube,
        memo.config.namespaces,
        SELECTOR,
        controller.child_event,
        bindings=memo.watch_bindings,
        bots=None if memo.peering else (controller.bot_event, controller.bots_listed),
    )
    memo.watches.start()
    if memo.usage_interval > 0:
        from kubechat_operator.collector import UsageCollector

        memo.collector = UsageCollector(kube, controller, memo.usage_interval, memo.config.namespaces)
        memo.collector.start()


@kopf.on.cleanup()
def cleanup(memo: OperatorMemo, **_: Any) -> None:
    if memo.collector is not None:
        memo.collector.stop()
    if memo.watches is not None:
        memo.watches.stop()
    if memo.controller is not None:
        memo.controller.stop()
    if memo.metrics_server is not None:
        memo.metrics_server.shutdown()
        memo.metrics_server.server_close()


async def bot_seen(event: kopf.RawEvent, memo: OperatorMemo, **_: Any) -> None:
    """A bot created, changed, seen at start (type None) or deleted (with ``--peering`` only)."""
    memo.running().bot_event(event["type"], event["object"])


def watch_bots_with_kopf() -> None:
    """Register ``bot_seen`` for the bots' events: before ``kopf.run``, and only with ``--peering``."""
    kopf.on.event(GROUP, VERSION, PLURAL)(bot_seen)
