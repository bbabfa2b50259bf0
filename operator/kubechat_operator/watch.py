"""Watches of the bots and their children, outside Kopf. Edge: a thread per watched collection.

Kopf turns every watch event into a body wrapper, causes, per-object memories, handler progress state
and keyword arguments before a handler runs: most of the operator's CPU per bot went there (profiled
with py-spy under operator-bench). A child's event only has to mark its bot, and children change far
more often than bots (every Deployment status update of every rollout), so their events go straight
from the stream to ``Controller.child_event``. The bots are watched here too, unless the operator runs
with ``--peering``: Kopf's peering can pause only Kopf's own watches, so then Kopf watches them (and a
child of a bot this process does not know is ignored). Kopf's handling cost one change ~1.3 ms before
its first apply and a quarter of the operator's CPU in a bulk create (operator-bench, 200 bots).

The loop is client-go's reflector without the cache: list (paged), then watch from the list's
``resourceVersion`` with bookmarks; a watch the server ends is resumed from the last version seen; a
``410 Gone`` (too old) lists again; any other failure is retried with backoff, so a watch never dies.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import urllib3

from kubechat_operator import GROUP, PLURAL, VERSION
from kubechat_operator.errors import ApiStatus, OperatorError
from kubechat_operator.kube import WATCH_SECONDS, ApiError, Kube

logger = logging.getLogger("kubechat_operator")

OnEvent = Callable[[str | None, Mapping[str, Any]], None]
#: Called after every full listing with the namespace listed (None: all) and the (namespace, name) of
#: every object in it, so that objects deleted while no watch ran (no DELETED event) are dropped too.
OnListed = Callable[[str | None, set[tuple[str, str]]], None]


@dataclass(frozen=True)
class Collection:
    kind: str
    group_version: str  # "v1" or "apps/v1"
    plural: str

    def path(self, namespace: str | None) -> str:
        root = "/api/v1" if self.group_version == "v1" else f"/apis/{self.group_version}"
        return f"{root}/namespaces/{namespace}/{self.plural}" if namespace else f"{root}/{self.plural}"


CHILDREN = (
    Collection("ServiceAccount", "v1", "serviceaccounts"),
    Collection("ConfigMap", "v1", "configmaps"),
    Collection("Deployment", "apps/v1", "deployments"),
    Collection("Service", "v1", "services"),
)
BOTS = Collection("ChatBot", f"{GROUP}/{VERSION}", PLURAL)
#: The bots' TokenReview bindings (spec.access.serviceAccounts): cluster-scoped, so watched cluster-wide
#: even when the operator serves some namespaces; needs list and watch on them (the chart's rbac.tokenReview).
BINDINGS = Collection("ClusterRoleBinding", "rbac.authorization.k8s.io/v1", "clusterrolebindings")


class Watch:
    """One collection (one namespace, or all), filtered by a label selector on the server."""

    def __init__(
        self,
        kube: Kube,
        collection: Collection,
        namespace: str | None,
        selector: str,
        on_event: OnEvent,
        max_backoff: float = 30.0,
        server_timeout: int = WATCH_SECONDS,
        on_listed: OnListed | None = None,
    ) -> None:
        self.kube, self.collection, self.selector, self.on_event = kube, collection, selector, on_event
        self.namespace, self.on_listed = namespace, on_listed
        self.path = collection.path(namespace)
        self.max_backoff, self.server_timeout = max_backoff, server_timeout
        self.version: str | None = None  # the newest resourceVersion seen; None: list first
        self._stopped = threading.Event()
        self._streams: list[urllib3.BaseHTTPResponse] = []
        self._thread = threading.Thread(target=self._run, name=f"watch {self.path}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stopped.set()
        for _ in range(int(timeout * 10)):  # again, in case a stream opened meanwhile
            for stream in list(self._streams):
                stream.shutdown()  # wakes the thread blocked reading it
            self._thread.join(0.1)
            if not self._thread.is_alive():
                return

    def _run(self) -> None:
        failures = 0
        while not self._stopped.is_set():
            try:
                if self.version is None:
                    self.version = self._list()
                self._watch()
                failures = 0
                continue
            except (OperatorError, OSError, urllib3.exceptions.HTTPError, ValueError) as exc:
                problem = str(exc)
            except Exception:  # a bug must not end the watch for good: log it, go on after a pause
                logger.exception("watching %s failed unexpectedly", self.path)
                problem = "unexpected error"
            if self._stopped.is_set():
                return
            delay = min(0.5 * 2.0**failures, self.max_backoff)
            failures += 1
            logger.warning("watching %s failed, again in %.1f s: %s", self.path, delay, problem)
            self._stopped.wait(delay)

    def _query(self) -> list[tuple[str, str]]:
        return [("labelSelector", self.selector)] if self.selector else []

    def _list(self) -> str:
        """Every object as seen now (event None, as Kopf reports a listing); the version to watch from."""
        version = ""
        listed: set[tuple[str, str]] = set()  # only for on_listed (the bots' watch)
        for page in self.kube.list_pages(self.path, self._query()):
            for item in page.get("items") or ():
                item.setdefault("kind", self.collection.kind)  # list items carry no kind
                if self.on_listed is not None:
                    meta = item.get("metadata") or {}
                    listed.add((str(meta.get("namespace")), str(meta.get("name"))))
                self.on_event(None, item)
            version = str((page.get("metadata") or {}).get("resourceVersion") or "")
        if self.on_listed is not None:
            self.on_listed(self.namespace, listed)
        return version

    def _watch(self) -> None:
        """Watch from ``self.version``, moving it along, until the server ends the watch; a version too
        old (410) sets it to None, so the next round lists again."""
        query = [
            *self._query(),
            ("resourceVersion", self.version or ""),
            ("allowWatchBookmarks", "true"),
            ("timeoutSeconds", str(self.server_timeout)),
        ]
        for event in self.kube.watch(self.path, query, self._streams, self.server_timeout + 30.0):
            kind, obj = event.get("type"), event.get("object") or {}
            if kind == "ERROR":
                status = ApiStatus.parse(int(obj.get("code") or 500), json.dumps(obj))
                if status.code == 410:
                    self.version = None
                    return
                raise ApiError(status)
            if kind != "BOOKMARK":
                self.on_event(str(kind), obj)
            # after the handler: an event it failed on is delivered again by the next watch
            self.version = str((obj.get("metadata") or {}).get("resourceVersion") or self.version)


class Watches:
    """The watches of one operator process: every child kind in every namespace it serves, (``bindings``)
    the TokenReview bindings cluster-wide, and (``bots``: the handlers of their events and listings) the
    bots in every namespace it serves."""

    def __init__(
        self,
        kube: Kube,
        namespaces: tuple[str, ...],
        selector: str,
        on_event: OnEvent,
        bindings: bool = False,
        bots: tuple[OnEvent, OnListed] | None = None,
    ) -> None:
        scopes = namespaces or (None,)
        self.watches = [
            Watch(kube, collection, namespace, selector, on_event)
            for collection in CHILDREN
            for namespace in scopes
        ]
        if bindings:
            self.watches.append(Watch(kube, BINDINGS, None, selector, on_event))
        if bots is not None:
            on_bot, on_listed = bots
            self.watches += [Watch(kube, BOTS, ns, "", on_bot, on_listed=on_listed) for ns in scopes]

    @staticmethod
    def count(namespaces: tuple[str, ...], bindings: bool, bots: bool) -> int:
        """How many watch streams (each holds a connection of the pool)."""
        return (len(CHILDREN) + int(bots)) * max(1, len(namespaces)) + int(bindings)

    def start(self) -> None:
        for watch in self.watches:
            watch.start()

    def stop(self) -> None:
        for watch in self.watches:
            watch.stop()
