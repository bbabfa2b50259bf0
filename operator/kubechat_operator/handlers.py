"""Kopf wiring: when to reconcile, and what to tell the user. Edge: thin handlers only.

A bot is reconciled on create, update and resume (render, apply, status). Its children are
watched too: one deleted or edited by hand is put back at once, and the Deployment's progress
flows into the bot's status, so ``Ready`` follows the pods.
"""

from __future__ import annotations

import copy
import datetime
import json
import logging
import os
import threading
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, cast

import kopf
from kubernetes import client, config

from kubechat_operator import GROUP, PLURAL, VERSION
from kubechat_operator.kube import Kube
from kubechat_operator.render import (
    BOT_LABEL,
    HASH_ANNOTATION,
    OperatorDefaults,
    render,
    secret_refs,
    splits_conversations,
    tokenreview_binding_name,
)
from kubechat_operator.status import SPLIT_WARNING, UNAUTHENTICATED, build_status, same_status

CHILDREN = {"app.kubernetes.io/managed-by": "kubechat-operator"}


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _api_client() -> client.ApiClient:
    try:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
    except config.ConfigException:
        config.load_kube_config()  # type: ignore[no-untyped-call]
    configuration = client.Configuration.get_default_copy()
    configuration.connection_pool_maxsize = 16
    return client.ApiClient(configuration)


@kopf.on.startup()
def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    """One API client for the process; events only for what a person should see."""
    settings.posting.level = logging.WARNING  # our own Normal events are posted explicitly
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.execution.max_workers = 32
    memo.kube = Kube(_api_client())
    memo.lookups = ThreadPoolExecutor(max_workers=8, thread_name_prefix="secret-check")
    memo.defaults = OperatorDefaults(
        image=os.environ.get("KUBECHAT_BOT_IMAGE", OperatorDefaults.image),
        image_pull_policy=os.environ.get(
            "KUBECHAT_BOT_IMAGE_PULL_POLICY", OperatorDefaults.image_pull_policy
        ),
    )
    memo.applied = {}  # (kind, namespace, name) -> generation (Deployment) or resourceVersion we wrote
    memo.rendered = {}  # (kind, namespace, name) -> the rendering this process last applied
    memo.states = {}  # (namespace, bot) -> BotState
    memo.warned = set()  # bots told that in-memory sessions split their conversations
    memo.unauthenticated = set()  # bots told that anyone may call them (no spec.access)


@kopf.index(GROUP, VERSION, PLURAL)
async def bots(
    namespace: str | None, name: str, body: kopf.Body, **_: Any
) -> dict[tuple[str | None, str], dict[str, Any]]:
    """Every bot's last seen body, so child events need no extra GET."""
    return {(namespace, name): copy.deepcopy(dict(body))}


@dataclass
class BotState:
    """What the operator knows of one bot between events; its lock makes status writes one at a time,
    each computed from the newest Deployment seen, so an older view never overwrites a newer one."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    deployment: dict[str, Any] | None = None
    problem: tuple[str, str] | None = None
    status: dict[str, Any] | None = None


def _state(memo: kopf.Memo, namespace: str, bot: str) -> BotState:
    states: dict[tuple[str, str], BotState] = memo.states
    return states.setdefault((namespace, bot), BotState())


def _version(obj: Mapping[str, Any]) -> int:
    try:
        return int(obj["metadata"]["resourceVersion"])
    except (KeyError, ValueError):
        return 0


def remember_deployment(state: BotState, deployment: dict[str, Any]) -> None:
    if state.deployment is None or _version(deployment) >= _version(state.deployment):
        state.deployment = deployment


def publish_status(memo: kopf.Memo, raw: dict[str, Any]) -> dict[str, Any]:
    """Write the bot's status if it changed: the only place status is written."""
    meta = raw["metadata"]
    state = _state(memo, meta["namespace"], meta["name"])
    with state.lock:
        template = ((state.deployment or {}).get("spec") or {}).get("template") or {}
        digest = (template.get("metadata", {}).get("annotations") or {}).get(HASH_ANNOTATION)
        previous = state.status or raw.get("status") or {}
        status = build_status(raw, state.deployment, digest, state.problem, previous, _now())
        if state.status is None or not same_status(state.status, status):
            memo.kube.patch_bot_status(meta["namespace"], meta["name"], status)
            state.status = status
        return status


def _raw(body: Mapping[str, Any]) -> dict[str, Any]:
    return copy.deepcopy(dict(body))


def _missing_secret(kube: Kube, namespace: str, spec: dict[str, Any]) -> tuple[str, str] | None:
    for name, key in secret_refs(spec):
        if kube.secret_exists(namespace, name) is False:
            return (
                "SecretNotFound",
                f"Secret {name!r} (key {key!r}) does not exist in namespace {namespace!r}",
            )
    return None


def ensure(raw: dict[str, Any], memo: kopf.Memo) -> tuple[str, tuple[str, str] | None]:
    """Render and apply the bot's children; returns (config hash, problem such as a missing Secret).

    A child whose rendering has not changed since this process last applied it is not sent again,
    unless it was seen drifting; after a restart everything is applied once.
    """
    kube: Kube = memo.kube
    meta, spec = raw["metadata"], raw.get("spec") or {}
    namespace = meta["namespace"]
    state = _state(memo, namespace, meta["name"])
    # the Secret check runs beside the applies: it decides the status, not what is applied
    pending = memo.lookups.submit(_missing_secret, kube, namespace, spec)
    children = render(raw, memo.defaults)
    try:
        for child in children.all():
            key = (child["kind"], namespace, child["metadata"]["name"])
            rendered = json.dumps(child, sort_keys=True)
            if memo.rendered.get(key) == rendered:
                continue
            live = kube.apply(child)
            memo.rendered[key] = rendered
            if child["kind"] == "Deployment":
                remember_deployment(state, live)
                memo.applied[key] = live["metadata"].get("generation")
            else:
                memo.applied[key] = live["metadata"].get("resourceVersion")
    except client.ApiException as exc:
        message = _api_message(exc)
        if exc.status in (400, 422) or "failed to create typed patch object" in message:
            raise kopf.PermanentError(f"the API server refused the bot's children: {message}") from None
        if exc.status == 403 and "being terminated" in message:
            raise NamespaceTerminating(namespace) from None
        raise kopf.TemporaryError(
            f"applying the bot's children failed (HTTP {exc.status}): {message}", delay=5
        ) from None
    problem = pending.result()
    state.problem = problem
    return children.config_hash, problem


class NamespaceTerminating(Exception):
    """Nothing to do: the namespace and everything in it is going away."""


def _api_message(exc: client.ApiException) -> str:
    try:
        return str(json.loads(exc.body or "{}").get("message", exc.reason))[:500]
    except ValueError:
        return str(exc.reason)


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL)
def reconcile(body: kopf.Body, memo: kopf.Memo, retry: int, **_: Any) -> None:
    """Make the children match the spec; a missing Secret is reported and retried with backoff."""
    raw = _raw(body)
    meta = raw["metadata"]
    previous = raw.get("status") or {}
    try:
        digest, problem = ensure(raw, memo)
    except NamespaceTerminating:
        return
    except kopf.PermanentError as exc:
        _state(memo, meta["namespace"], meta["name"]).problem = ("InvalidSpec", str(exc))
        publish_status(memo, raw)
        kopf.event(body, type="Warning", reason="InvalidSpec", message=str(exc))
        raise
    publish_status(memo, raw)
    bot_key = (meta["namespace"], meta["name"])
    if not splits_conversations(raw.get("spec") or {}):
        memo.warned.discard(bot_key)
    elif bot_key not in memo.warned:  # once when it starts (and once per operator start), not per change
        memo.warned.add(bot_key)
        message = SPLIT_WARNING.removeprefix("; warning: ")
        kopf.event(body, type="Warning", reason="InMemorySessions", message=message)
    if (raw.get("spec") or {}).get("access"):
        memo.unauthenticated.discard(bot_key)
    elif bot_key not in memo.unauthenticated:  # once, as for in-memory sessions
        memo.unauthenticated.add(bot_key)
        kopf.event(body, type="Warning", reason="Unauthenticated", message=UNAUTHENTICATED)
    if previous.get("configHash") != digest:
        kopf.event(
            body,
            type="Normal",
            reason="Applied",
            message=f"applied Deployment, Service and ConfigMap (config {digest})",
        )
    if problem:
        ready_before: dict[str, Any] = next(
            (c for c in previous.get("conditions") or () if c.get("type") == "Ready"), {}
        )
        if ready_before.get("reason") != problem[0]:  # one Warning when it starts, not one per retry
            kopf.event(body, type="Warning", reason=problem[0], message=problem[1])
        raise kopf.TemporaryError(problem[1], delay=min(2 ** (retry + 1), 60))


@kopf.on.event("apps", "v1", "deployments", labels=CHILDREN)
@kopf.on.event("v1", "services", labels=CHILDREN)
@kopf.on.event("v1", "configmaps", labels=CHILDREN)
def child_changed(event: kopf.RawEvent, body: kopf.Body, memo: kopf.Memo, **kwargs: Any) -> None:
    """Put back what was deleted or edited by hand; let the Deployment's progress reach the bot."""
    bots: kopf.Index[tuple[str | None, str | None], dict[str, Any]] = kwargs["bots"]
    meta = body.get("metadata") or {}
    namespace, bot = meta.get("namespace"), (meta.get("labels") or {}).get(BOT_LABEL)
    found = list(bots.get((namespace, bot), ()))
    if not found:
        return
    raw = found[-1]
    owners = {o.get("uid") for o in meta.get("ownerReferences") or ()}
    if raw["metadata"].get("deletionTimestamp") or raw["metadata"]["uid"] not in owners:
        return
    kind, name = body.get("kind"), meta.get("name")
    key = (kind, namespace, name)
    mark = meta.get("generation") if kind == "Deployment" else meta.get("resourceVersion")
    recorded = memo.applied.get(key)
    if event["type"] == "DELETED" or (recorded is not None and mark != recorded):
        memo.rendered.pop(key, None)  # applied again below, whatever this process applied before
        try:
            ensure(raw, memo)
        except NamespaceTerminating:
            return
        how = "deleted" if event["type"] == "DELETED" else "changed"
        kopf.event(
            kopf.Body(cast(kopf.RawBody, raw)),
            type="Normal",
            reason="Restored",
            message=f"{kind} {name} was {how} by hand; put it back",
        )
    elif kind == "Deployment":
        remember_deployment(_state(memo, raw["metadata"]["namespace"], raw["metadata"]["name"]), _raw(body))
    else:
        return
    publish_status(memo, raw)


@kopf.on.event(GROUP, VERSION, PLURAL)
def bot_deleted(event: kopf.RawEvent, name: str, namespace: str | None, memo: kopf.Memo, **_: Any) -> None:
    """A cluster-scoped child cannot be owned by a namespaced bot: delete its TokenReview binding here."""
    access = (event["object"].get("spec") or {}).get("access") or {}
    if event["type"] == "DELETED" and namespace and "serviceAccounts" in access:
        memo.kube.delete_cluster_role_binding(tokenreview_binding_name(name, namespace))
