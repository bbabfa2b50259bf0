"""The Argo CD health check shipped in the chart, run by a real Lua 5.1 interpreter (the dialect of Argo CD's
gopher-lua) on statuses the operator's own status code writes."""

from __future__ import annotations

import shutil
import subprocess
from typing import Any

import yaml
from kubechat_operator.spec import Bot
from kubechat_operator.status import build_status

from tests.support.operator import REPO

HEALTH_LUA = REPO / "charts" / "kubechat" / "argocd" / "chatbot-health.lua"
NOW = "2026-12-02T00:00:00Z"


def lua_literal(value: Any) -> str:
    """A Python value as a Lua table constructor (what Argo CD hands the script as ``obj``)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        return f'"{escaped}"'
    if isinstance(value, list):
        return "{" + ", ".join(lua_literal(v) for v in value) + "}"
    if isinstance(value, dict):
        fields = (f"[{lua_literal(k)}] = {lua_literal(v)}" for k, v in value.items() if v is not None)
        return "{" + ", ".join(fields) + "}"
    raise TypeError(type(value))


def health(obj: dict[str, Any]) -> tuple[str, str]:
    lua = shutil.which("lua5.1")
    assert lua, "the Argo CD health check test needs Lua 5.1: apt-get install lua5.1"
    load = f"local hs = assert(loadfile({lua_literal(str(HEALTH_LUA))}))()"
    script = f"{load} print(hs.status) print(hs.message)"
    done = subprocess.run(
        [lua, "-e", f"obj = {lua_literal(obj)}", "-e", script], capture_output=True, text=True, timeout=10
    )
    assert done.returncode == 0, done.stderr
    status, message = done.stdout.rstrip("\n").split("\n", 1)
    return status, message


def bot(generation: int = 2, replicas: int = 2) -> dict[str, Any]:
    return {
        "metadata": {"name": "helpdesk", "namespace": "team-a", "uid": "u", "generation": generation},
        "spec": {"systemPrompt": "hi", "replicas": replicas},
    }


def deployment(ready: int, updated: int, replicas: int, **condition: str) -> dict[str, Any]:
    conditions = [condition] if condition else []
    return {
        "metadata": {"generation": 1},
        "status": {
            "observedGeneration": 1,
            "replicas": replicas,
            "readyReplicas": ready,
            "updatedReplicas": updated,
            "conditions": conditions,
        },
    }


def reconciled(
    body: dict[str, Any], dep: dict[str, Any] | None, problem: tuple[str, str] | None = None
) -> dict[str, Any]:
    return {**body, "status": build_status(Bot.from_body(body), dep, "abc", problem, {}, NOW)}


def test_all_pods_serving_is_healthy() -> None:
    status, message = health(reconciled(bot(), deployment(2, 2, 2)))
    assert status == "Healthy" and message.startswith("PodsReady:")


def test_a_spec_the_operator_has_not_seen_is_progressing_whatever_the_conditions_say() -> None:
    obj = reconciled(bot(generation=2), deployment(2, 2, 2))
    obj["metadata"]["generation"] = 3
    assert health(obj)[0] == "Progressing"
    assert health(bot())[0] == "Progressing"  # no status at all yet


def test_pods_on_their_way_are_progressing() -> None:
    status, message = health(reconciled(bot(), deployment(1, 2, 2)))
    assert status == "Progressing" and "WaitingForPods" in message


def test_a_missing_secret_is_degraded_with_its_reason() -> None:
    obj = reconciled(bot(), deployment(0, 2, 2), ("SecretNotFound", "Secret openai not found"))
    assert health(obj) == ("Degraded", "SecretNotFound: Secret openai not found")


def test_a_stalled_rollout_is_degraded() -> None:
    dep = deployment(0, 2, 2, type="Progressing", status="False", reason="ProgressDeadlineExceeded")
    status, message = health(reconciled(bot(), dep))
    assert status == "Degraded" and message.startswith("ProgressDeadlineExceeded")


def test_scaled_to_zero_is_suspended() -> None:
    assert health(reconciled(bot(replicas=0), deployment(0, 0, 0)))[0] == "Suspended"


def test_the_docs_show_the_shipped_script() -> None:
    """The argocd-cm snippet in the docs, read as YAML, is the script the chart ships."""
    text = (REPO / "docs" / "observability.md").read_text()
    block = text.split("```yaml\nresource.customizations.health.kubechat.dev_ChatBot:", 1)[1].split("```", 1)[
        0
    ]
    shown = yaml.safe_load("key:" + block)["key"]
    assert shown == HEALTH_LUA.read_text()


def test_lua_literal_round_trips_through_lua() -> None:
    """The harness itself: nested tables, escapes and booleans reach Lua as they are in Python."""
    lua = shutil.which("lua5.1")
    assert lua
    value = {"a": [1, {"b": 'q"\\\n'}], "t": True}
    check = 'assert(obj.a[1] == 1 and obj.a[2].b == "q\\"\\\\\\n" and obj.t == true) print("ok")'
    args = [lua, "-e", f"obj = {lua_literal(value)}", "-e", check]
    done = subprocess.run(args, capture_output=True, text=True, timeout=10)
    assert done.stdout.strip() == "ok", done.stderr
