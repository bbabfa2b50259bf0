"""What an upstream's failure means for our client: pure logic, no I/O.

A model API that answers 4xx/5xx, times out or cannot be reached becomes an ``UpstreamError`` whose
status tells the client what to do: a refused request is the client's to fix (its 4xx, the upstream's
code and param), a rejected key or a 5xx is a bad gateway (502), a rate limit keeps its wait (429
``Retry-After``), a timeout is 504, no connection 503. Every text passed on is cut and has the bot's
secrets redacted. The retry schedule lives here too: which statuses are worth another attempt, and
how long to wait before it.
"""

from __future__ import annotations

import email.utils
import json
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from chatbot_service.errors import UpstreamError
from chatbot_service.settings import Settings

#: Besides every 5xx: a request timeout, a conflict and a rate limit are worth another attempt.
RETRIED_STATUSES = frozenset({408, 409, 429})


@dataclass(frozen=True, slots=True)
class Refusal:
    """An upstream's 4xx/5xx answer, read: its status, headers, and the ``error`` object of its JSON
    body (the whole body when it has no ``error``; empty when it is not JSON)."""

    status: int
    headers: Mapping[str, str]
    error: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def read(cls, status: int, headers: Mapping[str, str], content: bytes) -> Refusal:
        try:
            body = json.loads(content)
        except ValueError:  # an HTML error page, a truncated body: nothing to pass on but the status
            body = None
        error = body.get("error", body) if isinstance(body, dict) else None
        return cls(status, headers, error if isinstance(error, dict) else {})

    @property
    def retried(self) -> bool:
        return self.status in RETRIED_STATUSES or self.status >= 500

    @property
    def code(self) -> str:
        return str(self.error.get("code") or "")

    @property
    def message(self) -> str:
        message = self.error.get("message")
        return message if isinstance(message, str) else ""


def map_refusal(refusal: Refusal, settings: Settings, secrets: list[str]) -> UpstreamError:
    """The status and message our client should see for what the model API answered."""
    status = refusal.status
    if status in (401, 403):
        return UpstreamError(
            502,
            "upstream_auth_failed",
            f"the model API rejected this bot's API key (HTTP {status}); fix or rotate the key",
        )
    if status == 429:
        return UpstreamError(
            429,
            "upstream_rate_limited",
            "the model API is rate limiting this bot; retry later",
            headers=rate_limit_headers(refusal.headers),
        )
    message = redact(refusal.message, secrets)
    if 400 <= status < 500:
        # The request itself was refused (a parameter this model does not take, content policy ...):
        # the client's to fix, so a 4xx it will not retry, with the upstream's own code and param.
        param = refusal.error.get("param")
        return UpstreamError(
            status,
            refusal.code or "upstream_rejected",
            f"the model API refused the request: {message or f'HTTP {status}'}",
            type="invalid_request_error",
            param=param if isinstance(param, str) else None,
        )
    return UpstreamError(
        502, "upstream_error", f"the model API failed with HTTP {status}{': ' + message if message else ''}"
    )


def timed_out(settings: Settings) -> UpstreamError:
    return UpstreamError(
        504, "upstream_timeout", f"the model API did not answer within {settings.request_timeout:g} s"
    )


def unreachable() -> UpstreamError:
    return UpstreamError(503, "upstream_unreachable", "the model API could not be reached; try again later")


def broke_mid_reply(timeout: bool) -> UpstreamError:
    """A streamed body that stopped after its headers came."""
    if timeout:
        return UpstreamError(504, "upstream_timeout", "the model API stopped sending mid-reply")
    return UpstreamError(503, "upstream_unreachable", "the connection to the model API broke mid-reply")


def backoff(tried: int) -> float:
    """The OpenAI SDK's schedule: 0.5 s doubling up to 8 s, less up to a quarter of jitter."""
    return min(0.5 * 2.0**tried, 8.0) * (1 - 0.25 * random.random())


def retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds a response asks us to wait (``retry-after-ms``, ``retry-after`` seconds or HTTP date)."""
    try:
        if "retry-after-ms" in headers:
            return max(0.0, float(headers["retry-after-ms"]) / 1000)
        value = headers.get("retry-after")
        if value is None:
            return None
        try:
            return max(0.0, float(value))
        except ValueError:
            when = email.utils.parsedate_to_datetime(value)
            return max(0.0, when.timestamp() - time.time())
    except (ValueError, TypeError, OverflowError):
        return None


def rate_limit_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """``Retry-After`` in whole seconds for our client, from whichever form the upstream sent."""
    wait = retry_after(headers)
    return {"Retry-After": str(max(1, round(wait))) if wait is not None else "1"}


def redact(text: str, secrets: list[str]) -> str:
    text = text[:500]
    for secret in secrets:
        if secret:
            text = text.replace(secret, "****")
    return text
