"""One-line descriptions of Azure SDK failures for logs and ``/readyz``. Pure: no I/O.

Status, the service's error code and message, or the root cause of a connection failure; never a
request or response body beyond the service's own error message.
"""

from __future__ import annotations

from typing import Any

from azure.core.exceptions import HttpResponseError, ServiceRequestError, ServiceResponseError


def describe(exc: BaseException) -> str:
    """One line about an SDK failure, for logs and ``/readyz``: status, service error code, root cause."""
    if isinstance(exc, TimeoutError) and len(exc.args) > 1 and isinstance(exc.args[1], list) and exc.args[1]:
        return describe(exc.args[1][-1])  # the provider's startup retries ended: show the last cause
    if isinstance(exc, HttpResponseError) and exc.status_code:
        text = f"HTTP {exc.status_code} {exc.reason or ''}".rstrip()
        error = getattr(exc, "error", None)
        if error is not None and getattr(error, "code", None):
            text += f" ({error.code}): {_first_line(error.message or '')}"
        elif exc.status_code == 401 and exc.response is not None:
            response: Any = exc.response
            challenge = response.headers.get("WWW-Authenticate")
            text += f"; {challenge}" if challenge else ""
        return _short(text)
    if isinstance(exc, ServiceRequestError | ServiceResponseError):
        root = _root_cause(exc)
        cause = (
            f"{type(root).__name__}: {_first_line(str(root))}" if root is not exc else _first_line(str(exc))
        )
        return _short(f"cannot connect: {cause}")
    return _short(f"{type(exc).__name__}: {_first_line(str(exc))}")


def _root_cause(exc: BaseException) -> BaseException:
    seen = {id(exc)}
    while True:
        inner = getattr(exc, "inner_exception", None) or exc.__cause__ or exc.__context__
        if inner is None or id(inner) in seen:
            return exc
        seen.add(id(inner))
        exc = inner


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


def _short(text: str, limit: int = 400) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
