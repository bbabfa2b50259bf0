"""The operator's exceptions, and API errors sorted by what the API server says, not by its wording.

Kubernetes answers every refusal with a ``Status`` object: ``reason`` names the class of failure
(``Invalid``, ``Conflict``, ``Forbidden`` ...) and ``details.causes[].reason`` the specific causes
(``FieldValueInvalid``, ``NamespaceTerminating`` ...). Those are API; the ``message`` is prose for
people, so it is shown to them and never matched. Pure: no I/O.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

#: ``Status.reason`` values that say the request itself is wrong: sending it again cannot help.
_REFUSED = frozenset(
    {
        "Invalid",
        "BadRequest",
        "RequestEntityTooLarge",
        "UnsupportedMediaType",
        "NotAcceptable",
        "MethodNotAllowed",
    }
)
#: The cause the NamespaceLifecycle admission plugin attaches when the namespace is being deleted.
_NAMESPACE_TERMINATING = "NamespaceTerminating"
_MESSAGE_LIMIT = 500


class OperatorError(Exception):
    """Base of everything the operator raises on purpose."""


@dataclass(frozen=True)
class ApiStatus:
    """The parts of a failed request's ``Status`` that decide what to do, and its message for people."""

    code: int
    reason: str
    message: str
    causes: tuple[str, ...] = field(default=())

    @classmethod
    def parse(cls, code: int, body: str | bytes | None, http_reason: str | None = None) -> ApiStatus:
        """From an HTTP status and body; a body that is not a ``Status`` (a proxy's page) keeps the code."""
        try:
            data: Any = json.loads(body or b"{}")
        except ValueError:
            data = {}
        if not isinstance(data, dict) or data.get("kind") != "Status":
            data = {}
        details = data.get("details") if isinstance(data.get("details"), dict) else {}
        causes = tuple(
            str(c.get("reason"))
            for c in details.get("causes") or ()
            if isinstance(c, dict) and c.get("reason")
        )
        message = str(data.get("message") or http_reason or f"HTTP {code}")[:_MESSAGE_LIMIT]
        return cls(int(data.get("code") or code), str(data.get("reason") or ""), message, causes)

    @property
    def refused(self) -> bool:
        """The API server will refuse this request however often it is sent (fix the spec instead)."""
        return self.reason in _REFUSED or (self.code in (400, 422) and not self.reason)

    @property
    def namespace_terminating(self) -> bool:
        return _NAMESPACE_TERMINATING in self.causes


class ChildrenRefused(OperatorError):
    """The API server refused a child as rendered from the spec: reported as ``InvalidSpec``, not retried
    until the bot changes."""

    def __init__(self, status: ApiStatus) -> None:
        super().__init__(f"the API server refused the bot's children: {status.message}")
        self.status = status


class NamespaceTerminating(OperatorError):
    """Nothing to do: the namespace and everything in it is going away."""


class TransientApiError(OperatorError):
    """Worth retrying with backoff: a conflict, a busy or failing server, missing rights (RBAC can be
    fixed while the operator waits), a timeout."""

    def __init__(self, status: ApiStatus) -> None:
        super().__init__(f"HTTP {status.code} {status.reason or ''}: {status.message}".replace("  ", " "))
        self.status = status


def classify(status: ApiStatus) -> OperatorError:
    """What a failed write of the bot's children means for the reconcile."""
    if status.namespace_terminating:
        return NamespaceTerminating(status.message)
    if status.refused:
        return ChildrenRefused(status)
    return TransientApiError(status)
