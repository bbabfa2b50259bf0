"""Kopf wiring. Edge: every handler here only hands what it saw to the controller, which marks the bot
for reconcile; the reconcile itself (retried with backoff) lives in ``controller``.

Only ``@kopf.on.event`` handlers, so Kopf writes nothing to the bots (no progress or last-handled
annotations, no finalizers); they must not fail, as Kopf would only log it. Children are watched with a
server-side label selector, so the operator never receives other ConfigMaps, Services or Deployments.
"""

from __future__ import annotations

import os
from typing import Any

import kopf
from kubernetes import client, config
from prometheus_client import start_http_server

from kubechat_operator import GROUP, PLURAL, VERSION
from kubechat_operator.controller import Controller
from kubechat_operator.kube import Kube
from kubechat_operator.memo import OperatorMemo
from kubechat_operator.metrics import OperatorMetrics

MANAGED = {"app.kubernetes.io/managed-by": "kubechat-operator"}


def _api_client(pool: int) -> client.ApiClient:
    try:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
    except config.ConfigException:
        # KUBECONFIG read now, not when the client library was imported (as its default does)
        config.load_kube_config(config_file=os.environ.get("KUBECONFIG"))  # type: ignore[no-untyped-call]
    configuration = client.Configuration.get_default_copy()
    configuration.connection_pool_maxsize = pool
    return client.ApiClient(configuration)


@kopf.on.startup()
def startup(settings: kopf.OperatorSettings, memo: OperatorMemo, **_: Any) -> None:
    """One API client and the reconcile workers; Kopf posts no Events of its own (the controller posts
    the few a person should see)."""
    settings.posting.enabled = False
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    selector = ",".join(f"{k}={v}" for k, v in MANAGED.items())
    settings.watching.label_selectors["apps", "v1", "deployments"] = selector
    settings.watching.label_selectors["v1", "services"] = selector
    settings.watching.label_selectors["v1", "configmaps"] = selector
    metrics = OperatorMetrics()
    kube = Kube(_api_client(memo.config.workers + 4), metrics)
    controller = Controller(kube, memo.config)
    metrics.watch(controller.statuses, controller.queue.sizes)
    if memo.metrics_address is not None:
        host, port = memo.metrics_address
        memo.metrics_server = start_http_server(port, host, registry=metrics.registry)[0]
    controller.start()
    memo.controller = controller
    if memo.usage_interval > 0:
        from kubechat_operator.collector import UsageCollector

        memo.collector = UsageCollector(kube, controller, memo.usage_interval, memo.namespaces)
        memo.collector.start()


@kopf.on.cleanup()
def cleanup(memo: OperatorMemo, **_: Any) -> None:
    if memo.collector is not None:
        memo.collector.stop()
    if memo.controller is not None:
        memo.controller.stop()
    if memo.metrics_server is not None:
        memo.metrics_server.shutdown()
        memo.metrics_server.server_close()


@kopf.on.event(GROUP, VERSION, PLURAL)
async def bot_seen(event: kopf.RawEvent, memo: OperatorMemo, **_: Any) -> None:
    """A bot created, changed, seen at start (type None) or deleted."""
    _controller(memo).bot_event(event["type"], event["object"])


@kopf.on.event("apps", "v1", "deployments", labels=MANAGED)
@kopf.on.event("v1", "services", labels=MANAGED)
@kopf.on.event("v1", "configmaps", labels=MANAGED)
async def child_seen(event: kopf.RawEvent, memo: OperatorMemo, **_: Any) -> None:
    """A child changed (the Deployment's progress included) or deleted: its bot is looked at again."""
    _controller(memo).child_event(event["type"], event["object"])


def _controller(memo: OperatorMemo) -> Controller:
    return memo.running()
