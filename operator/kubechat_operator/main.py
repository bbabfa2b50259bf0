"""``kubechat-operator``: run the operator (a thin front of ``kopf run``) against the current kubeconfig
or the in-cluster service account."""

from __future__ import annotations

import argparse
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
        "--log-level",
        default=os.environ.get("KUBECHAT_LOG_LEVEL", "info"),
        choices=["debug", "info", "warning", "error"],
    )
    args = parser.parse_args(argv)

    if args.bot_image:
        os.environ["KUBECHAT_BOT_IMAGE"] = args.bot_image
    if args.bot_image_pull_policy:
        os.environ["KUBECHAT_BOT_IMAGE_PULL_POLICY"] = args.bot_image_pull_policy

    import kopf

    import kubechat_operator.handlers  # noqa: F401  (registers the handlers)

    kopf.configure(verbose=args.log_level == "debug", quiet=args.log_level in ("warning", "error"))
    kopf.run(
        standalone=args.peering is None,
        peering_name=args.peering,
        priority=args.priority if args.priority is not None else -time.time_ns() // 1_000_000,
        clusterwide=not args.namespace,
        namespaces=args.namespace,
        liveness_endpoint=None if args.liveness == "none" else args.liveness,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
