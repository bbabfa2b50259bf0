"""``kubechat-operator``: run the operator (a thin front of ``kopf run``) against the current kubeconfig
or the in-cluster service account."""

from __future__ import annotations

import argparse
import logging
import os
import time
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kubechat-operator", description="Serve ChatBot resources.")
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument(
        "-n", "--namespace", action="append", default=[], help="watch this namespace (repeatable)"
    )
    scope.add_argument("-A", "--all-namespaces", action="store_true", help="watch every namespace (default)")
    parser.add_argument(
        "--liveness",
        default=os.environ.get("KUBECHAT_LIVENESS", "http://0.0.0.0:8081/healthz"),
        help="liveness endpoint URL; 'none' turns it off",
    )
    parser.add_argument(
        "--peering",
        default=os.environ.get("KUBECHAT_PEERING"),
        help="peering object name, so that only one of several replicas acts (needs Kopf's peering CRDs)",
    )
    parser.add_argument(
        "--priority",
        type=int,
        default=None,
        help="peering priority; by default the older replica wins (tied replicas would all pause, "
        "and a younger one never takes over from a running one)",
    )
    parser.add_argument(
        "--bot-image",
        default=os.environ.get("KUBECHAT_BOT_IMAGE"),
        help="the chat service image for bots that name none",
    )
    parser.add_argument(
        "--bot-image-pull-policy",
        default=os.environ.get("KUBECHAT_BOT_IMAGE_PULL_POLICY"),
        choices=["Always", "IfNotPresent", "Never"],
    )
    parser.add_argument(
        "--workers", type=int, default=4, help="bots reconciled at once (each one by one worker at a time)"
    )
    parser.add_argument(
        "--resync-seconds",
        type=float,
        default=1800.0,
        help="apply every bot in full this often, whatever the watches said (0: never)",
    )
    parser.add_argument(
        "--watch-bindings",
        action=argparse.BooleanOptionalAction,
        default=os.environ.get("KUBECHAT_WATCH_BINDINGS", "true").lower() != "false",
        help="watch the bots' TokenReview ClusterRoleBindings (needs list and watch on them: the chart's "
        "rbac.tokenReview); without it a binding changed by hand waits for the resync, and one left by a bot "
        "deleted while no operator ran stays",
    )
    parser.add_argument(
        "--metrics-address",
        default=os.environ.get("KUBECHAT_OPERATOR_METRICS_ADDRESS", "none"),
        help="host:port to serve the operator's Prometheus metrics at /metrics (default 'none': off)",
    )
    parser.add_argument(
        "--usage-interval",
        type=float,
        default=float(os.environ.get("KUBECHAT_USAGE_INTERVAL", "0")),
        help="read every bot's pods' /metrics this often (seconds) and keep the totals in status.usage; "
        "the operator must reach the pods' IPs (0, the default: off)",
    )
    parser.add_argument(
        "--log-level",
        default=os.environ.get("KUBECHAT_LOG_LEVEL", "info"),
        choices=["debug", "info", "warning", "error"],
    )
    args = parser.parse_args(argv)

    if args.workers < 1:
        parser.error("--workers must be at least 1")
    metrics_address: tuple[str, int] | None = None
    if args.metrics_address != "none":
        host, _, port = args.metrics_address.rpartition(":")
        if not port.isdigit() or not 0 < int(port) < 65536:
            parser.error(f"--metrics-address must be host:port or 'none', not {args.metrics_address!r}")
        metrics_address = (host.strip("[]") or "0.0.0.0", int(port))
    if args.usage_interval < 0 or 0 < args.usage_interval < 5:
        parser.error("--usage-interval must be 0 (off) or at least 5 seconds")

    import kopf

    from kubechat_operator import handlers  # registers the startup and cleanup handlers
    from kubechat_operator.controller import ControllerConfig
    from kubechat_operator.memo import OperatorMemo
    from kubechat_operator.render import OperatorDefaults

    defaults = OperatorDefaults()
    memo = OperatorMemo(
        ControllerConfig(
            defaults=OperatorDefaults(
                image=args.bot_image or defaults.image,
                image_pull_policy=args.bot_image_pull_policy or defaults.image_pull_policy,
            ),
            workers=args.workers,
            resync_seconds=args.resync_seconds,
            namespaces=tuple(args.namespace),
        ),
        usage_interval=args.usage_interval,
        watch_bindings=args.watch_bindings,
        metrics_address=metrics_address,
        peering=args.peering is not None,
    )
    if memo.peering:
        handlers.watch_bots_with_kopf()

    kopf.configure(verbose=args.log_level == "debug", quiet=args.log_level in ("warning", "error"))
    if args.log_level != "debug":  # Kopf logs "Handler 'bot_seen' succeeded." for every watch event
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    kopf.run(
        standalone=args.peering is None,
        peering_name=args.peering,
        priority=args.priority if args.priority is not None else -time.time_ns() // 1_000_000,
        clusterwide=not args.namespace,
        namespaces=args.namespace,
        liveness_endpoint=None if args.liveness == "none" else args.liveness,
        memo=memo,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
