"""Where one spec change's time goes, from the API server's audit log of an operator-bench run.

For each patch of a bot's spec (by the harness's user), the operator's requests that followed it for
that bot, stamped by the API server (microseconds): before the first apply (the bot's watch event,
Kopf, the queue, rendering), each apply and the status write on the server, and the operator's time
between them. Needs an audit policy that also records the patches (the harness records only the
operator's requests); with a copy of ``../shared/anchors/operator-bench`` whose ``run.sh`` policy has

    - level: Metadata
      users: ["admin"]
      verbs: ["patch"]
      resources: [{group: kubechat.dev, resources: [chatbots]}]

before its ``level: None`` rule:

    python3 bench/operator_timeline.py /tmp/opbench-run/kubechat-n200-r1/audit.log

Prints medians in ms; stdlib only (any python3).
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
from typing import Any


def stamp(text: str) -> float:
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000


def span(
    events: list[dict[str, Any]], resource: str, sub: str | None, names: set[str]
) -> tuple[float, float] | None:
    for e in events:
        ref = e.get("objectRef") or {}
        if ref.get("resource") == resource and ref.get("subresource") == sub and ref.get("name") in names:
            return stamp(e["requestReceivedTimestamp"]), stamp(e["stageTimestamp"])
    return None


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("audit_log")
    parser.add_argument("--changer", default="admin", help="the user who patches the bots")
    parser.add_argument("--operator", default="operator", help="the operator's user")
    args = parser.parse_args()
    with open(args.audit_log) as log:
        done = [json.loads(line) for line in log if '"ResponseComplete"' in line]
    changes = [
        e
        for e in done
        if e["user"]["username"] == args.changer
        and e["verb"] == "patch"
        and "subresource" not in e["objectRef"]
    ]
    ours = [e for e in done if e["user"]["username"] == args.operator]
    rows: dict[str, list[float]] = {}
    for change in changes:
        name, t0 = change["objectRef"]["name"], stamp(change["stageTimestamp"])
        after = [e for e in ours if t0 <= stamp(e["requestReceivedTimestamp"]) < t0 + 2000]
        cm = span(after, "configmaps", None, {f"{name}-config"})
        dep = span(after, "deployments", None, {name})
        status = span(after, "chatbots", "status", {name})
        if not (cm and dep and status):
            continue
        for label, value in (
            ("patch answered -> ConfigMap apply received (watch, Kopf, queue, render)", cm[0] - t0),
            ("ConfigMap apply on the server", cm[1] - cm[0]),
            ("ConfigMap answered -> Deployment apply received (operator)", dep[0] - cm[1]),
            ("Deployment apply on the server", dep[1] - dep[0]),
            ("Deployment answered -> status write received (operator)", status[0] - dep[1]),
            ("status write on the server", status[1] - status[0]),
            ("patch answered -> Deployment written", dep[1] - t0),
            ("patch answered -> status written", status[1] - t0),
        ):
            rows.setdefault(label, []).append(value)
    print(f"{len(changes)} changes, {len(next(iter(rows.values()), []))} with all three requests; medians:")
    for label, values in rows.items():
        print(f"  {statistics.median(values):7.1f} ms  {label}")


if __name__ == "__main__":
    main()
