"""Errors a client can be told about, each with its HTTP status and a stable code. Pure: no I/O.

Bodies follow the OpenAI error shape (``{"error": {"message", "type", "param", "code"}}``) so OpenAI
SDKs pointed at a bot show our messages as they would show OpenAI's. Messages never carry secrets.
"""

from __future__ import annotations

from typing import Any


class ChatError(Exception):
    """Base of every error that becomes an HTTP response."""

    status = 500
    type = "server_error"
    code = "internal_error"
    param: str | None = None
    refusal: str | None = None  # why access control turned the request away, for the metrics

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class InternalError(ChatError):
    """A bug: the message never says more than that (the log has the traceback)."""


class BadRequest(ChatError):
    status = 400
    type = "invalid_request_error"
    code = "invalid_request"

    def __init__(self, message: str, *, code: str | None = None, param: str | None = None) -> None:
        super().__init__(message)
        if code:
            self.code = code
        self.param = param


class BodyTooLarge(ChatError):
    status = 413
    type = "invalid_request_error"
    code = "body_too_large"


class UnsupportedMediaType(ChatError):
    status = 415
    type = "invalid_request_error"
    code = "unsupported_media_type"


class CrossOriginRefused(ChatError):
    status = 403
    type = "invalid_request_error"
    code = "cross_origin_refused"


class SessionNotFound(ChatError):
    status = 404
    type = "invalid_request_error"
    code = "session_not_found"

    def __init__(self, session_id: str) -> None:
        super().__init__(
            f"no session {session_id!r}: it never existed, was reset, or expired after being idle; "
            "send the message without session_id to start a new one"
        )


class NotFound(ChatError):
    """No such response, conversation or item (for this caller: others' are never found)."""

    status = 404
    type = "invalid_request_error"
    code = "not_found"


class MessageTooLong(ChatError):
    status = 413
    type = "invalid_request_error"
    code = "message_too_long"

    def __init__(self, *, tokens: int, limit: int) -> None:
        super().__init__(
            f"the message needs {tokens} prompt tokens with the system prompt, but this bot's budget is "
            f"{limit} (context window minus the tokens reserved for the reply); shorten the message"
        )
        self.tokens = tokens
        self.limit = limit

    @classmethod
    def chars(cls, length: int, limit: int) -> MessageTooLong:
        """Too long before counting tokens: over the bot's ``max_message_chars``."""
        error = cls(tokens=0, limit=0)
        error.message = f"the message has {length} characters; this bot accepts at most {limit}"
        error.args = (error.message,)
        return error


class NotReady(ChatError):
    status = 503
    type = "server_error"
    code = "not_ready"


class UpstreamError(ChatError):
    """The model's API failed; ``status`` says how, for the client to decide whether to retry."""

    type = "upstream_error"

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        headers: dict[str, str] | None = None,
        type: str | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(message, headers=headers)
        self.status = status
        self.code = code
        self.param = param
        if type:
            self.type = type


class SessionStoreUnavailable(ChatError):
    status = 503
    type = "server_error"
    code = "session_store_unavailable"


class Unauthenticated(ChatError):
    """No credential, or one that is not valid; says nothing that would help guessing."""

    refusal = "unauthenticated"  # counted in kubechat_refusals_total

    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"

    def __init__(self) -> None:
        super().__init__(
            "missing or invalid credentials: send 'Authorization: Bearer <API key or token>'",
            headers={"WWW-Authenticate": 'Bearer realm="kubechat"'},
        )


class Forbidden(ChatError):
    """A known identity that this bot does not allow, or not for this."""

    refusal = "forbidden"  # counted in kubechat_refusals_total

    status = 403
    type = "invalid_request_error"
    code = "permission_denied"


class RateLimited(ChatError):
    """Over a per-minute limit (OpenAI's ``rate_limit_exceeded``; type ``requests`` or ``tokens``)."""

    refusal = "rate_limited"  # counted in kubechat_refusals_total

    status = 429
    code = "rate_limit_exceeded"

    def __init__(self, message: str, *, kind: str, headers: dict[str, str]) -> None:
        super().__init__(message, headers=headers)
        self.type = kind


class QuotaExceeded(ChatError):
    """Over a day, week or month budget (OpenAI's ``insufficient_quota``)."""

    refusal = "budget_exhausted"  # counted in kubechat_refusals_total

    status = 429
    type = "insufficient_quota"
    code = "insufficient_quota"


class LimitsUnavailable(ChatError):
    """The shared counters (Redis) cannot be reached and the bot refuses rather than count nothing."""

    refusal = "limits_unavailable"  # counted in kubechat_refusals_total

    status = 503
    type = "server_error"
    code = "limits_unavailable"
