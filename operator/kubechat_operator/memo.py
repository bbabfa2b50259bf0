"""What the operator's handlers share: its configuration (from the command line) and the controller.

Kopf hands every handler a ``memo``; this typed one is passed to ``kopf.run`` by ``main``, so flags
reach the handlers through it, not through the process environment. Kopf shallow-copies the memo per
watched object, so its fields are references to the one shared configuration and controller.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from kubechat_operator.controller import Controller, ControllerConfig
from kubechat_operator.watch import Watches

if TYPE_CHECKING:
    from kubechat_operator.collector import UsageCollector


@dataclass
class OperatorMemo:
    config: ControllerConfig = field(default_factory=ControllerConfig)
    usage_interval: float = 0.0  # seconds between usage collections; 0: off
    watch_bindings: bool = True  # also watch the bots' TokenReview ClusterRoleBindings (cluster-wide)
    peering: bool = False  # --peering: Kopf watches the bots (its peering pauses only its own watches)
    metrics_address: tuple[str, int] | None = None  # (host, port) of the operator's /metrics; None: off
    controller: Controller | None = None  # made at startup, once the API client is configured
    watches: Watches | None = None  # of the children, started with the controller
    collector: UsageCollector | None = None
    metrics_server: Any = None  # the /metrics HTTP server, shut down at cleanup

    def running(self) -> Controller:
        if self.controller is None:
            raise RuntimeError("the controller starts in the startup handler, before any watch")
        return self.controller
