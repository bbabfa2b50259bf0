"""Which children a reconcile must send: only what changed, drifted, or is due for a resync."""

from __future__ import annotations

from typing import Any

from kubechat_operator.render import OperatorDefaults, render_bot
from kubechat_operator.spec import Bot, parse
from kubechat_operator.tracking import KINDS, BotState, SecretsFound

BOT = Bot("b", "n", "u", 1, parse({"systemPrompt": "p"}))


def live(kind: str, uid: str = "c1", version: int = 10) -> dict[str, Any]:
    number = {"generation": version} if kind == "Deployment" else {"resourceVersion": str(version)}
    return {"kind": kind, "metadata": {"uid": uid, **number}, "status": {}}


def children(bot: Bot = BOT) -> dict[str, dict[str, Any]]:
    return {c["kind"]: c for c in render_bot(bot, OperatorDefaults()).all()}


def applied_state() -> BotState:
    state = BotState(BOT)
    for kind, child in children().items():
        state.start_apply(kind)
        state.record_apply(kind, child, live(kind))
    return state


def test_first_everything_then_only_what_the_spec_changed() -> None:
    everything = [kind for kind in KINDS if kind in children()]  # a bot without spec.access: three
    assert everything == ["ConfigMap", "Deployment", "Service"]
    assert BotState(BOT).to_apply(children(), now=0, resync=0) == everything
    state = applied_state()
    assert state.to_apply(children(), now=0, resync=0) == []
    replicas = Bot("b", "n", "u", 2, parse({"systemPrompt": "p", "replicas": 3}))
    assert state.to_apply(children(replicas), now=0, resync=0) == ["Deployment"]
    prompt = Bot("b", "n", "u", 2, parse({"systemPrompt": "q"}))
    assert state.to_apply(children(prompt), now=0, resync=0) == ["ConfigMap", "Deployment"]
    state.applied_at = 40
    assert state.to_apply(children(), now=89, resync=50) == []
    assert state.to_apply(children(), now=90, resync=50) == everything  # the periodic resync


def test_a_retry_after_one_child_failed_sends_only_that_one() -> None:
    """Before the first full apply no resync is due, however long ago the process started: what was
    written is not sent again while the one that failed is retried."""
    state = BotState(BOT)
    for kind in ("ConfigMap", "Deployment"):
        state.start_apply(kind)
        state.record_apply(kind, children()[kind], live(kind))
    state.start_apply("Service")
    state.record_apply("Service", None, None)  # it failed
    assert state.to_apply(children(), now=10_000, resync=1800) == ["Service"]


def test_our_own_write_seen_back_is_not_drift_even_before_the_answer() -> None:
    state = applied_state()
    assert not state.observe_child("Service", "MODIFIED", live("Service", version=10))
    state.start_apply("Service")
    # the watch delivers the write before the worker has the API server's answer
    assert not state.observe_child("Service", "MODIFIED", live("Service", version=11))
    assert not state.record_apply("Service", children()["Service"], live("Service", version=11))
    assert state.to_apply(children(), now=0, resync=0) == []


def test_edits_and_deletions_by_others_are_drift_but_an_old_incarnation_is_not() -> None:
    state = applied_state()
    assert state.observe_child("ConfigMap", "MODIFIED", live("ConfigMap", version=12))
    assert state.to_apply(children(), now=0, resync=0) == ["ConfigMap"]
    state = applied_state()
    assert not state.observe_child("Deployment", "DELETED", live("Deployment", uid="older"))
    assert state.observe_child("Deployment", "DELETED", live("Deployment"))
    assert state.to_apply(children(), now=0, resync=0) == ["Deployment"] and state.deployment is None


def test_a_write_by_someone_else_during_our_apply_asks_for_another_look() -> None:
    state = applied_state()
    state.start_apply("ConfigMap")
    state.observe_child("ConfigMap", "MODIFIED", live("ConfigMap", version=13))
    assert state.record_apply("ConfigMap", children()["ConfigMap"], live("ConfigMap", version=12))
    assert state.to_apply(children(), now=0, resync=0) == ["ConfigMap"]


def test_applies_in_flight_at_once_are_told_apart() -> None:
    """The ConfigMap, Deployment and Service of a new bot are applied at once: each one's own write seen
    back is not drift, someone else's write during another kind's apply is."""
    state = applied_state()
    for kind in ("ConfigMap", "Deployment", "Service"):
        state.start_apply(kind)
    assert not state.observe_child("Service", "MODIFIED", live("Service", version=11))  # ours, early
    state.observe_child("ConfigMap", "MODIFIED", live("ConfigMap", version=13))  # someone else's, later
    assert not state.record_apply("Service", children()["Service"], live("Service", version=11))
    assert not state.record_apply("Deployment", children()["Deployment"], live("Deployment", version=11))
    assert state.record_apply("ConfigMap", children()["ConfigMap"], live("ConfigMap", version=12))
    assert state.in_flight == {}
    assert state.to_apply(children(), now=0, resync=0) == ["ConfigMap"]


def test_only_a_newer_deployment_status_counts() -> None:
    state = applied_state()
    newer = live("Deployment") | {"status": {"readyReplicas": 1}}
    newer["metadata"]["resourceVersion"] = "20"
    assert state.observe_child("Deployment", "MODIFIED", newer)
    older = live("Deployment") | {"status": {"readyReplicas": 0}}
    older["metadata"]["resourceVersion"] = "15"
    assert not state.observe_child("Deployment", "MODIFIED", older)
    assert state.deployment is not None and state.deployment["status"] == {"readyReplicas": 1}


def test_the_deployment_s_answer_brings_its_status_before_any_watch_event() -> None:
    """After a restart the first reconcile may come before the watch lists the Deployment: the apply's
    answer (read whole, kube.py) is then what the bot's status is built from."""
    state = BotState(BOT)
    state.start_apply("Deployment")
    state.record_apply(
        "Deployment", children()["Deployment"], live("Deployment") | {"status": {"readyReplicas": 2}}
    )
    assert state.deployment is not None and state.deployment["status"] == {"readyReplicas": 2}


GUARDED = Bot(
    "b", "n", "u", 1, parse({"systemPrompt": "p", "access": {"serviceAccounts": {"namespaces": ["n"]}}})
)


def test_access_children_the_spec_no_longer_renders_are_stale_whoever_wrote_them() -> None:
    state = BotState(GUARDED)
    for kind, child in children(GUARDED).items():
        state.start_apply(kind)
        state.record_apply(kind, child, live(kind, uid=f"{kind}-1"))
    assert state.stale(children(GUARDED)) == {}
    assert state.stale(children()) == {
        "ServiceAccount": ("b-chatbot", "ServiceAccount-1"),
        "ClusterRoleBinding": ("kubechat-tokenreview:n:b", "ClusterRoleBinding-1"),
    }
    state.forget_child("ServiceAccount")
    assert list(state.stale(children())) == ["ClusterRoleBinding"] and "ServiceAccount" not in state.applied

    # after a restart nothing was applied by this process: one seen in the watch is stale all the same
    fresh = BotState(BOT)
    binding = {
        **live("ClusterRoleBinding", uid="old"),
        "metadata": {"name": "kubechat-tokenreview:n:b", "uid": "old"},
    }
    assert fresh.observe_child("ClusterRoleBinding", "ADDED", binding)  # asks for a reconcile
    assert fresh.stale(children()) == {"ClusterRoleBinding": ("kubechat-tokenreview:n:b", "old")}
    assert not fresh.observe_child("ClusterRoleBinding", "DELETED", binding)  # gone: nothing of ours lost
    assert fresh.stale(children()) == {}


def test_a_secret_found_counts_for_every_bot_for_a_while_then_is_forgotten() -> None:
    found = SecretsFound(ttl=10.0)
    assert not found.fresh("ns", "openai", 0.0)
    found.add("ns", "openai", 100.0)
    assert found.fresh("ns", "openai", 109.9)
    assert not found.fresh("other", "openai", 101.0) and not found.fresh("ns", "azure", 101.0)
    assert not found.fresh("ns", "openai", 110.0)  # ask the API server again


def test_the_secrets_found_stay_bounded_by_time_not_by_how_many_were_ever_seen() -> None:
    found = SecretsFound(ttl=10.0)
    for i in range(1000):  # a thousand bots, each with its own Secret, one every 0.1 s
        found.add("ns", f"key-{i}", i / 10)
    assert len(found.found) <= 200  # at most the last two periods' worth
    found.add("ns", "late", 1000.0)
    assert list(found.found) == [("ns", "late")]
