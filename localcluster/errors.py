"""Every error the local cluster raises on purpose, in one place.

Each carries a message meant for a person: the CLI prints it as one line (what failed and what to do) and
exits non-zero, never with a traceback. They are RuntimeErrors so callers that only care that a step
failed can catch that.
"""

from __future__ import annotations


class LocalClusterError(RuntimeError):
    """A step of the local cluster failed; the message says what failed and what to do."""


class BuildError(LocalClusterError):
    """A binary, image or other artifact could not be built or fetched."""


class FetchError(BuildError):
    """Something had to be downloaded and could not be (or did not match its pinned hash)."""


class ComponentError(LocalClusterError):
    """A component failed to start or become healthy; the message carries the tail of its log."""


class NodeError(LocalClusterError):
    """The real node's namespace or one of its components could not be set up."""


class ApiError(LocalClusterError):
    """The API server answered with an HTTP error."""

    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"HTTP {status}: {body[:500]}")
        self.status = status
