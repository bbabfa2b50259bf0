"""Every bot's usage into its own status, without a Prometheus server. Edge: the pod list, each pod's
``/metrics`` over HTTP, and the status writes.

Every interval: one pod LIST (label selector, from the API server's watch cache) for all bots, a GET of
``/metrics`` on each ready pod (short timeouts, a bound on the bytes read, a few at a time), the fold of
``usage``, and a merge-patch of ``status.usage`` for each bot whose usage changed, so at most one write
per bot per interval, none for an idle bot. Pods are read directly at their IP, as Prometheus would:
the operator must be able to reach them (in the cluster it is), which is why this is off unless
``--usage-interval`` is set (the chart sets it).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import urllib3

from kubechat_operator.controller import Controller
from kubechat_operator.kube import ApiError, Kube
from kubechat_operator.render import BOT_LABEL, METRICS_LABEL
from kubechat_operator.tracking import BotKey
from kubechat_operator.usage import PodTarget, Reading, bot_pods, counts_from_text, fold, merge_patch

logger = logging.getLogger("kubechat_operator.usage")

SELECTOR = "app.kubernetes.io/managed-by=kubechat-operator"
MAX_BYTES = 2 * 1024 * 1024  # a bot's page is ~50-200 KB; a pod that sends more is not read


class UsageCollector:
    def __init__(
        self,
        kube: Kube,
        controller: Controller,
        interval: float,
        namespaces: Sequence[str] = (),
        *,
        timeout: float = 2.0,
        parallel: int = 8,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.kube, self.controller, self.interval = kube, controller, interval
        self.namespaces: Sequence[str | None] = tuple(namespaces) or (None,)
        self.timeout, self.parallel, self.clock = timeout, parallel, clock
        self.http = urllib3.PoolManager(num_pools=64, maxsize=1, retries=False)
        self.written: dict[BotKey, tuple[str, dict[str, Any]]] = {}  # key -> (bot uid, usage written)
        self.metrics = kube.metrics
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="usage-collector", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        self.http.clear()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            result = "failed"
            try:
                self.collect()
                result = "ok"
            except (ApiError, OSError, urllib3.exceptions.HTTPError) as exc:
                logger.warning(
                    "collecting the bots' usage failed, trying again in %.0f s: %s", self.interval, exc
                )
            except Exception:  # a bug must not end the collector: log it, go on next interval
                logger.exception("collecting the bots' usage failed unexpectedly")
            finally:
                self.metrics.usage_rounds.labels(result).inc()

    def collect(self) -> int:
        """One round for every bot the controller knows; returns how many statuses were written."""
        targets = self.controller.usage_targets()
        for gone in set(self.written) - set(targets):
            del self.written[gone]
        if not targets:
            return 0
        pods: dict[tuple[str, str], list[PodTarget]] = {}
        for namespace in self.namespaces:
            pods.update(
                bot_pods(self.kube.list_pods(namespace, SELECTOR), BOT_LABEL, off_label=METRICS_LABEL)
            )
        readable = [p for key in targets for p in pods.get(key, ()) if p.url]
        with ThreadPoolExecutor(max_workers=max(1, min(self.parallel, len(readable)))) as pool:
            found = {r.pod_uid: r for r in pool.map(self._read, readable) if r is not None}
        self.metrics.usage_scrapes.labels("ok").inc(len(found))
        self.metrics.usage_scrapes.labels("failed").inc(len(readable) - len(found))
        now, written = self.clock(), 0
        for key, (uid, seen) in targets.items():
            mine = self.written.get(key)
            previous = mine[1] if mine is not None and mine[0] == uid else seen
            alive = [p.uid for p in pods.get(key, ())]
            usage = fold(previous, [found[u] for u in alive if u in found], alive, now)
            if usage == previous:
                continue
            try:
                self.kube.patch_bot_status(key[0], key[1], {"usage": merge_patch(previous, usage)})
            except (
                ApiError
            ) as exc:  # a bot deleted meanwhile, or refused: its next round starts from `previous`
                logger.warning("could not write the usage of %s/%s: %s", *key, exc)
                continue
            self.written[key] = (uid, usage)
            self.metrics.usage_writes.inc()
            written += 1
        return written

    def _read(self, pod: PodTarget) -> Reading | None:
        """A pod's counters, or None if it could not be read (it keeps what it had counted)."""
        assert pod.url is not None
        try:
            response = self.http.request(
                "GET",
                pod.url,
                preload_content=False,
                timeout=urllib3.Timeout(connect=self.timeout, read=self.timeout),
            )
            try:
                body = response.read(MAX_BYTES + 1) if response.status == 200 else None
            finally:
                response.release_conn()
            if body is None or len(body) > MAX_BYTES:
                raise ValueError(f"HTTP {response.status}" if body is None else "page too large")
            started, counts = counts_from_text(body.decode("utf-8", "replace"))
        except (OSError, ValueError, urllib3.exceptions.HTTPError) as exc:
            logger.debug("could not read %s: %s", pod.url, exc)
            return None
        return Reading(pod.uid, started, counts)
