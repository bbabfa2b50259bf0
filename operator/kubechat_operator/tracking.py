"""What the operator remembers of each bot between reconciles, and what a reconcile must send. Pure.

Watch events only update this state and say whether the bot needs a reconcile; the reconcile reads it
to decide which children differ from what this process last wrote (rendering changed, child deleted,
edited by someone else, or a periodic resync due). Kept small: fingerprints, not copies, of what was
applied; the Deployment's generation and status, not the whole object.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from kubechat_operator.spec import Bot

BotKey = tuple[str, str]  # (namespace, name)
# The order children are applied in: the pods' ServiceAccount and its TokenReview binding (spec.access)
# and the settings before the pods that use them.
KINDS = ("ServiceAccount", "ClusterRoleBinding", "ConfigMap", "Deployment", "Service")
# Children only some specs have (spec.access.serviceAccounts): one that exists while the spec no longer
# renders it is deleted by the reconcile, so the operator must know it exists even if it did not write it.
ACCESS_KINDS = ("ServiceAccount", "ClusterRoleBinding")


@dataclass(frozen=True)
class Mark:
    """One version of a child: its uid and the number that moves when its spec changes (a Deployment's
    generation; for the others the resourceVersion, as they have no generation)."""

    uid: str
    version: int

    @classmethod
    def of(cls, obj: Mapping[str, Any]) -> Mark:
        meta = obj.get("metadata") or {}
        number = meta.get("generation") if obj.get("kind") == "Deployment" else meta.get("resourceVersion")
        try:
            version = int(number or 0)
        except ValueError:
            version = 0
        return cls(str(meta.get("uid") or ""), version)


@dataclass(frozen=True)
class Applied:
    fingerprint: str  # of the rendering sent
    mark: Mark  # of the object the API server answered with


def fingerprint(child: Mapping[str, Any]) -> str:
    blob = json.dumps(child, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.blake2b(blob, digest_size=12).hexdigest()


def _resource_version(obj: Mapping[str, Any] | None) -> int:
    try:
        return int(((obj or {}).get("metadata") or {}).get("resourceVersion") or 0)
    except ValueError:
        return 0


def compact_deployment(obj: Mapping[str, Any]) -> dict[str, Any]:
    """What status needs of a Deployment: its generation, resourceVersion and status."""
    meta = obj.get("metadata") or {}
    return {
        "metadata": {"generation": meta.get("generation"), "resourceVersion": meta.get("resourceVersion")},
        "status": obj.get("status") or {},
    }


@dataclass
class SecretsFound:
    """The Secrets found lately, shared by every bot: a burst of bots naming one key Secret (a GitOps sync,
    a bulk create) asks the API server about it once per ``ttl`` seconds, not once per bot. Only finds
    are kept: a missing Secret is asked about again on each of its bot's retries. Bounded: an entry
    older than ``ttl`` is dropped at the latest ``ttl`` seconds later."""

    ttl: float
    found: dict[tuple[str, str], float] = field(default_factory=dict)  # (namespace, name) -> when found
    pruned_at: float = 0.0

    def fresh(self, namespace: str, name: str, now: float) -> bool:
        at = self.found.get((namespace, name))
        return at is not None and now - at < self.ttl

    def add(self, namespace: str, name: str, now: float) -> None:
        if now - self.pruned_at >= self.ttl:
            self.found = {ref: at for ref, at in self.found.items() if now - at < self.ttl}
            self.pruned_at = now
        self.found[(namespace, name)] = now


@dataclass
class BotState:
    """One bot as last seen by the watch, and what this process wrote for it."""

    bot: Bot
    deleting: bool = False
    seen_status: dict[str, Any] = field(default_factory=dict)  # the bot's status as last watched
    written_status: dict[str, Any] | None = None  # what this process last wrote
    applied: dict[str, Applied] = field(default_factory=dict)
    drifted: set[str] = field(default_factory=set)  # kinds seen deleted or changed by someone else
    deployment: dict[str, Any] | None = None  # compact_deployment() of the newest seen
    problem: tuple[str, str] | None = None  # what stops the bot (reason, message), its Event posted
    secrets_checked: tuple[tuple[str, str], ...] | None = None  # the refs last found all present
    # the kinds being applied right now (their own watch events may come first) -> the newest version
    # of each seen meanwhile
    in_flight: dict[str, Mark | None] = field(default_factory=dict)
    warned_split: bool = False
    applied_at: float = 0.0  # monotonic time of the last full apply (periodic resync); 0: none yet
    present: dict[str, tuple[str, str]] = field(default_factory=dict)  # ACCESS_KINDS live: (name, uid)

    def stale(self, children: Mapping[str, Any]) -> dict[str, tuple[str, str]]:
        """The access children that exist but that the spec no longer renders: to delete."""
        return {kind: live for kind, live in self.present.items() if kind not in children}

    def forget_child(self, kind: str) -> None:
        """A child deleted by this process."""
        self.present.pop(kind, None)
        self.applied.pop(kind, None)
        self.drifted.discard(kind)

    def remember_deployment(self, obj: Mapping[str, Any]) -> bool:
        """Keep the newer of the known and this Deployment; True if what status reads changed."""
        if self.deployment is not None and _resource_version(obj) < _resource_version(self.deployment):
            return False
        compact = compact_deployment(obj)
        changed = self.deployment is None or (
            compact["status"] != self.deployment["status"]
            or compact["metadata"]["generation"] != self.deployment["metadata"]["generation"]
        )
        self.deployment = compact
        return changed

    def observe_child(self, kind: str, event: str, obj: Mapping[str, Any]) -> bool:
        """A watch event of one of the bot's children; True if the bot needs a reconcile."""
        seen = Mark.of(obj)
        mine = self.applied.get(kind)
        if kind in ACCESS_KINDS:
            if event == "DELETED":
                if self.present.get(kind, ("", ""))[1] == seen.uid:
                    self.present.pop(kind)
                if mine is None:  # nothing this process wrote was lost
                    return False
            else:
                self.present[kind] = (str((obj.get("metadata") or {}).get("name")), seen.uid)
                if mine is None and kind not in self.in_flight:  # not ours: one the spec no longer wants?
                    return True
        if event == "DELETED":
            if mine is None or mine.mark.uid == seen.uid:  # an older incarnation's deletion means nothing
                self.drifted.add(kind)
                if kind == "Deployment":
                    self.deployment = None
                return True
            return False
        status_changed = self.remember_deployment(obj) if kind == "Deployment" else False
        if kind in self.in_flight:  # decided when the answer is in: this may be that very write
            before = self.in_flight[kind]
            if before is None or seen.version > before.version:
                self.in_flight[kind] = seen
            return status_changed
        if mine is not None and (seen.uid != mine.mark.uid or seen.version > mine.mark.version):
            self.drifted.add(kind)
            return True
        return status_changed

    def to_apply(self, children: Mapping[str, Mapping[str, Any]], now: float, resync: float) -> list[str]:
        """The kinds whose rendering differs from what was applied, drifted, or all when a resync is due.
        Before the first full apply, only what is missing: a retry after one child failed does not send
        again those that were written."""
        if resync > 0 and self.applied_at and now - self.applied_at >= resync:
            return [k for k in KINDS if k in children]
        return [
            kind
            for kind in KINDS
            if kind in children
            and (
                kind in self.drifted
                or kind not in self.applied
                or self.applied[kind].fingerprint != fingerprint(children[kind])
            )
        ]

    def start_apply(self, kind: str) -> None:
        self.in_flight[kind] = None

    def record_apply(self, kind: str, sent: Mapping[str, Any] | None, live: Mapping[str, Any] | None) -> bool:
        """The answer to an apply (None: it failed). True if someone else wrote the child meanwhile, so
        it needs another reconcile."""
        seen = self.in_flight.pop(kind, None)
        if sent is None or live is None:
            return False
        mark = Mark.of(live)
        self.applied[kind] = Applied(fingerprint(sent), mark)
        if kind in ACCESS_KINDS:
            self.present[kind] = (str(sent["metadata"]["name"]), mark.uid)
        self.drifted.discard(kind)
        if kind == "Deployment":
            self.remember_deployment(live)
        if seen is not None and (seen.uid != mark.uid or seen.version > mark.version):
            self.drifted.add(kind)
            return True
        return False
