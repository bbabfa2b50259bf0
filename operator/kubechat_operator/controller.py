"""The one reconcile path: watch events mark bots dirty, workers reconcile them, failures come back.

Every trigger (a bot created, changed or seen at start; a child changed or deleted; a periodic resync;
a retry) ends in ``WorkQueue.add`` for the bot's key. A worker thread takes the key and runs
``reconcile``: render the children, apply those that differ from what this process last wrote, look
for missing Secrets only when needed, write the status once if it changed. It is idempotent, so a
reconcile too many costs CPU, not requests; a failure is retried with backoff whatever triggered it.
State is per bot and dropped when the bot is deleted.
"""

from __future__ import annotations

import datetime
import logging
import threading
import time
import zlib
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import urllib3

from kubechat_operator.bindings import BINDING, ORPHAN_GRACE_SECONDS, Unbound
from kubechat_operator.errors import ChildrenRefused, NamespaceTerminating, OperatorError, classify
from kubechat_operator.kube import ApiError, Kube
from kubechat_operator.render import (
    BOT_LABEL,
    BOT_NAMESPACE_LABEL,
    BOT_UID_LABEL,
    OperatorDefaults,
    bot_account,
    render_bot,
)
from kubechat_operator.spec import Bot
from kubechat_operator.status import SPLIT_WARNING, build_status, same_status
from kubechat_operator.tracking import ACCESS_KINDS, BotKey, BotState, SecretsFound
from kubechat_operator.workqueue import WorkQueue

logger = logging.getLogger("kubechat_operator")

#: The most applies one reconcile has in flight (a new bot's ConfigMap, Deployment and Service): the
#: worker sends one, the appliers' pool the others, each on a connection of the API client's pool.
APPLIES_AT_ONCE = 3
#: A Secret found for one bot counts as found for every bot that names it for this long (SecretsFound).
SECRET_FOUND_SECONDS = 10.0


@dataclass(frozen=True)
class ControllerConfig:
    defaults: OperatorDefaults = field(default_factory=OperatorDefaults)
    workers: int = 4
    resync_seconds: float = 1800.0  # every bot is applied in full this often, spread by a per-bot jitter
    namespaces: tuple[str, ...] = ()  # the bots' namespaces watched; empty: all
    retry_base_seconds: float = 0.25
    retry_max_seconds: float = 60.0


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Controller:
    def __init__(self, kube: Kube, config: ControllerConfig) -> None:
        self.kube, self.config = kube, config
        self.queue: WorkQueue[BotKey] = WorkQueue(config.retry_base_seconds, config.retry_max_seconds)
        self.bots: dict[BotKey, BotState] = {}
        self.unbound = Unbound()  # TokenReview bindings of bots this process does not hold
        self.secrets_found = SecretsFound(SECRET_FOUND_SECONDS)
        # guards self.bots, every BotState and secrets_found: held briefly, never over I/O
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._appliers = ThreadPoolExecutor(
            (APPLIES_AT_ONCE - 1) * config.workers, thread_name_prefix="apply"
        )

    # ---- triggers (called from the watches' threads, or Kopf's event loop: quick, no I/O) ----------------
    def bot_event(self, event: str | None, body: Mapping[str, Any]) -> None:
        meta = body.get("metadata") or {}
        key = (str(meta.get("namespace")), str(meta.get("name")))
        if event == "DELETED":
            with self._lock:
                self.unbound.bot_deleted(key, self.bots.pop(key, None))
                binding = key in self.unbound
            self.queue.drop(key)
            if binding:
                self.queue.add(key)
            return
        bot = Bot.from_body(body)
        with self._lock:
            state = self.bots.get(key)
            if state is None or state.bot.uid != bot.uid:
                state = self.bots[key] = BotState(bot)
                changed = True
            else:
                changed = state.bot != bot
                state.bot = bot
            deleting = bool(meta.get("deletionTimestamp"))
            changed = changed or deleting != state.deleting
            state.deleting = deleting
            state.seen_status = dict(body.get("status") or {})
        if changed:  # a status-only event (our own status write, typically) needs nothing
            self.queue.add(key)

    def bots_listed(self, namespace: str | None, listed: set[BotKey]) -> None:
        """A full listing of the bots (at start, or after a watch fell too far behind): a bot this process
        holds that is not in it was deleted while no watch ran, and is dropped as if its DELETED came."""
        with self._lock:
            gone = [k for k in self.bots if k not in listed and namespace in (None, k[0])]
        for namespace_, name in gone:
            self.bot_event("DELETED", {"metadata": {"namespace": namespace_, "name": name}})

    def child_event(self, event: str | None, body: Mapping[str, Any]) -> None:
        meta = body.get("metadata") or {}
        labels = meta.get("labels") or {}
        # A cluster-scoped child (the TokenReview binding) names its bot's namespace and uid in labels.
        key = (str(meta.get("namespace") or labels.get(BOT_NAMESPACE_LABEL)), str(labels.get(BOT_LABEL)))
        owners = {o.get("uid") for o in meta.get("ownerReferences") or ()} or {labels.get(BOT_UID_LABEL)}
        kind = str(body.get("kind"))
        with self._lock:
            state = self.bots.get(key)
            if state is None or state.bot.uid not in owners:
                if kind == BINDING and self._watched(key[0]) and self.unbound.seen(key, event, meta, labels):
                    self.queue.add_after(key, ORPHAN_GRACE_SECONDS)
                return
            needed = state.observe_child(kind, event or "ADDED", body)
        if needed:
            self.queue.add(key)

    def _watched(self, namespace: str) -> bool:
        return not self.config.namespaces or namespace in self.config.namespaces

    # ---- workers --------------------------------------------------------------------------------------
    def start(self) -> None:
        for i in range(self.config.workers):
            thread = threading.Thread(target=self._work, name=f"reconcile-{i}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout: float = 10.0) -> None:
        self.queue.close()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        self._threads.clear()
        self._appliers.shutdown(wait=False, cancel_futures=True)

    def _work(self) -> None:
        metrics = self.kube.metrics
        while (key := self.queue.get()) is not None:
            started, result = time.monotonic(), "unexpected"
            try:
                result = self._reconcile_and_requeue(key)
            except Exception:  # a bug must not kill the worker: log it and retry the bot later
                logger.exception("reconciling %s/%s failed unexpectedly", *key)
                self.queue.retry(key)
            finally:
                self.queue.done(key)
                metrics.reconciles.labels(result).inc()
                metrics.reconcile_duration.observe(time.monotonic() - started)

    def _reconcile_and_requeue(self, key: BotKey) -> str:
        """Reconcile and schedule the next look; returns the result for the metrics."""
        try:
            waiting = self.reconcile(key)
        except NamespaceTerminating:
            return "gone"
        except (OperatorError, OSError, urllib3.exceptions.HTTPError) as exc:
            delay = self.queue.retry(key)
            logger.warning("reconciling %s/%s failed, retrying in %.2g s: %s", *key, delay, exc)
            return "error"
        if waiting:  # for a Secret: look again, less and less often, until it appears
            self.queue.retry(key)
            return "waiting"
        self.queue.forget(key)
        if self.config.resync_seconds > 0:
            jitter = (zlib.crc32(repr(key).encode()) % 1000) / 10000  # 0-10 %, stable per bot
            self.queue.add_after(key, self.config.resync_seconds * (1 + jitter))
        logger.debug("reconciled %s/%s", *key)
        return "success"

    # ---- the reconcile --------------------------------------------------------------------------------
    def reconcile(self, key: BotKey) -> bool:
        """Make the bot's children and status match its spec. True if it waits for something outside
        (a referenced Secret); raises ``OperatorError`` subclasses on failures worth retrying."""
        with self._lock:
            state = self.bots.get(key)
            unbind = self.unbound.take(key, state)
            bot = None if state is None or state.deleting else state.bot
        if unbind is not None and self.unbound.sweep(self.kube, key, unbind):
            with self._lock:
                self.unbound.swept(key, unbind)
        if bot is None or state is None:
            return False
        children = render_bot(bot, self.config.defaults)
        rendered = {c["kind"]: c for c in children.all()}
        now = time.monotonic()
        with self._lock:
            kinds = state.to_apply(rendered, now, self.config.resync_seconds)
            restoring = [k for k in kinds if k in state.drifted and k in state.applied]
        full = len(kinds) == len(rendered)
        problem: tuple[str, str] | None = None
        again = False
        try:
            again = self._apply_children(state, rendered, kinds)
        except ApiError as exc:
            failure = classify(exc.status)
            if not isinstance(failure, ChildrenRefused):
                raise failure from None
            problem = ("InvalidSpec", str(failure))
        if problem is None:
            self._delete_stale(bot, state, rendered)
        if problem is None and (full or not state.applied_at) and rendered.keys() <= state.applied.keys():
            state.applied_at = now  # every child written: the next resync is due from now
        if kinds and problem is None:
            logger.info("%s/%s: applied %s (config %s)", *key, ", ".join(kinds), children.config_hash)
        ident = {"name": bot.name, "namespace": bot.namespace, "uid": bot.uid}
        for kind in restoring:
            if kind not in state.drifted:
                self._event(
                    ident, "Normal", "Restored", f"{kind} was deleted or changed by hand; put it back"
                )
        if again:  # a child was written by someone else while this process applied it
            self.queue.add(key)
        refused = problem is not None
        if not refused:
            problem = self._missing_secret(bot, state)
        self._publish(bot, state, None if refused else children.config_hash, problem)
        return problem is not None and not refused

    def _apply_children(
        self, state: BotState, rendered: Mapping[str, dict[str, Any]], kinds: list[str]
    ) -> bool:
        """Apply ``kinds``, at once where order does not matter: each apply costs the API server an etcd
        commit, so a bot created waits for one write, not three in a row. The access children go first
        (the pods name their account). A ConfigMap changed for a Deployment that exists goes before it, so
        no new pod starts on the old settings; a new bot's pods cannot start before their ConfigMap
        exists (its volume is not optional), so then both go at once, and the Service always does. True if
        a child was written by someone else meanwhile; a failure raises, once every apply has ended, the
        one of the first kind in ``KINDS`` order (a chain stops at its failure)."""
        again = False
        for kind in (k for k in kinds if k in ACCESS_KINDS):
            again = self._apply(state, kind, rendered[kind]) or again
        rest = [k for k in kinds if k not in ACCESS_KINDS]
        with self._lock:
            ordered = "Deployment" in state.applied or state.deployment is not None
        chains = [[k] for k in rest]
        if ordered and {"ConfigMap", "Deployment"} <= set(rest):
            chains = [
                ["ConfigMap", "Deployment"],
                *([k] for k in rest if k not in ("ConfigMap", "Deployment")),
            ]
        futures = [self._appliers.submit(self._apply_chain, state, rendered, chain) for chain in chains[1:]]
        results = [self._apply_chain(state, rendered, chains[0])] if chains else []
        results += [future.result() for future in futures]
        failures = {kind: error for _, kind, error in results if error is not None}
        first = next((kind for kind in rest if kind in failures), None)
        for kind, error in failures.items():
            if kind != first:  # the first is raised, so logged by the caller: the others only here
                logger.warning(
                    "applying the %s of %s/%s failed too: %s",
                    kind,
                    state.bot.namespace,
                    state.bot.name,
                    error,
                )
        if first is not None:
            raise failures[first]
        return again or any(written for written, _, _ in results)

    def _apply_chain(
        self, state: BotState, rendered: Mapping[str, dict[str, Any]], chain: list[str]
    ) -> tuple[bool, str, Exception | None]:
        """Apply ``chain`` in order, stopping at a failure: (written by someone else, the kind that
        failed, its error)."""
        again = False
        for kind in chain:
            try:
                again = self._apply(state, kind, rendered[kind]) or again
            except Exception as exc:
                return again, kind, exc
        return again, "", None

    def _apply(self, state: BotState, kind: str, child: dict[str, Any]) -> bool:
        with self._lock:
            state.start_apply(kind)
        try:
            live = self.kube.apply(child)
        except BaseException:
            with self._lock:
                state.record_apply(kind, None, None)
            raise
        with self._lock:
            return state.record_apply(kind, child, live)

    def _delete_stale(self, bot: Bot, state: BotState, rendered: Mapping[str, Any]) -> None:
        """Delete the access children the spec no longer renders (access or serviceAccounts removed, or
        the pods given an account of the user's): the binding, and the ServiceAccount made for them."""
        with self._lock:
            stale = state.stale(rendered)
        for kind, (name, uid) in stale.items():
            if kind == "ServiceAccount" and name == bot.spec.service_account_name == bot_account(bot.name):
                continue  # the spec now names the account this operator made: it stays, used by the pods
            try:
                self.kube.delete(kind, bot.namespace, name, uid)
            except ApiError as exc:
                raise classify(exc.status) from None
            with self._lock:
                state.forget_child(kind)
            logger.info(
                "%s/%s: deleted %s %s (the spec no longer needs it)", bot.namespace, bot.name, kind, name
            )

    def _missing_secret(self, bot: Bot, state: BotState) -> tuple[str, str] | None:
        """A referenced Secret that does not exist. Asked once per set of references, and not at all for
        a Secret found for another bot in the last ``SECRET_FOUND_SECONDS``: once all were found, the
        pods' readiness tells about later losses (``/readyz`` names what is missing)."""
        refs = tuple(bot.spec.required_secrets())
        if not refs or state.secrets_checked == refs:
            return None
        for name, key in refs:
            with self._lock:
                if self.secrets_found.fresh(bot.namespace, name, time.monotonic()):
                    continue
            exists = self.kube.secret_exists(bot.namespace, name)
            if exists is False:
                return (
                    "SecretNotFound",
                    f"Secret {name!r} (key {key!r}) does not exist in namespace {bot.namespace!r}",
                )
            if exists:  # None: RBAC does not let this process look; nothing learnt
                with self._lock:
                    self.secrets_found.add(bot.namespace, name, time.monotonic())
        state.secrets_checked = refs
        return None

    def _publish(
        self, bot: Bot, state: BotState, digest: str | None, problem: tuple[str, str] | None
    ) -> None:
        """The one status write of a reconcile, when the status differs from the last one; Warning Events
        when a problem starts (not on every retry), posted first, so whoever sees the status finds them."""
        with self._lock:
            previous = state.written_status or state.seen_status
            deployment = state.deployment
        status = build_status(bot, deployment, digest, problem, previous, _now())
        ident = {"name": bot.name, "namespace": bot.namespace, "uid": bot.uid}
        before: dict[str, Any] = next(
            (c for c in previous.get("conditions") or () if c.get("type") == "Ready"), {}
        )
        known = {before.get("reason"), state.problem[0] if state.problem else None}
        if problem and problem[0] not in known:  # not again when only the status write is retried
            self._event(ident, "Warning", problem[0], problem[1])
        state.problem = problem
        if bot.spec.splits_conversations and not state.warned_split:
            self._event(ident, "Warning", "InMemorySessions", SPLIT_WARNING.removeprefix("; warning: "))
        state.warned_split = bot.spec.splits_conversations
        if not previous or not same_status(previous, status):
            self.kube.patch_bot_status(bot.namespace, bot.name, status)
        with self._lock:
            state.written_status = status

    def _event(self, bot: dict[str, str], type_: str, reason: str, message: str) -> None:
        """Events are for people; one that cannot be posted is logged, never a reason to retry."""
        try:
            self.kube.post_event(bot, type_, reason, message)
        except (ApiError, OSError) as exc:
            logger.warning(
                "could not post the %s event on %s/%s: %s", reason, bot["namespace"], bot["name"], exc
            )

    def usage_targets(self) -> dict[BotKey, tuple[str, dict[str, Any]]]:
        """The bots whose usage the collector keeps: key -> (uid, ``status.usage`` as last seen)."""
        with self._lock:
            return {
                key: (state.bot.uid, dict(state.seen_status.get("usage") or {}))
                for key, state in self.bots.items()
                if not state.deleting
            }

    def statuses(self) -> list[dict[str, Any]]:
        """Each bot's status as this process last wrote it (for the operator's gauges)."""
        with self._lock:
            return [state.written_status for state in self.bots.values() if state.written_status]

    def sizes(self) -> dict[str, int]:
        """How much per-bot state is held (tests check it returns to zero once the bots are gone)."""
        with self._lock:
            return {"bots": len(self.bots), "unbind": len(self.unbound), **self.queue.sizes()}
