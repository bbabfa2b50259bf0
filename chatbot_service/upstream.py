"""The model's API, through the official ``openai`` async client. Edge: network I/O.

Responses are read raw (``with_raw_response`` / ``with_streaming_response``): the client still does
auth, base URL, timeouts, retries with backoff and error classes, but we skip building pydantic
objects we would only serialise again. Every failure leaves here as an ``UpstreamError`` whose HTTP
status tells the client what happened; no message carries the key.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any, TypeVar, cast

import httpx2
import openai

from chatbot_service.errors import UpstreamError
from chatbot_service.settings import Settings

T = TypeVar("T")

DEFAULT_BASE_URL = "https://api.openai.com/v1"


class Upstream:
    """One client for the current (key, base URL, timeout, retries); a change makes a new one.

    The replaced client is not closed here: calls still in flight on it finish, then it is collected.
    """

    def __init__(self) -> None:
        self._key: tuple[str, str, float, int] | None = None
        self._client: openai.AsyncOpenAI | None = None

    def client(self, settings: Settings) -> openai.AsyncOpenAI:
        assert settings.openai_api_key is not None
        key = (
            settings.openai_api_key.reveal(),
            settings.openai_base_url or DEFAULT_BASE_URL,
            settings.request_timeout,
            settings.max_retries,
        )
        if self._client is None or key != self._key:
            self._client = openai.AsyncOpenAI(
                api_key=key[0], base_url=key[1], timeout=key[2], max_retries=key[3]
            )
            self._key = key
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    async def _post(self, settings: Settings, params: dict[str, Any]) -> httpx2.Response:
        """POST the request as we built it: ``client.post`` keeps the client's auth, base URL, timeouts,
        retries and error classes, and skips the SDK's per-message type transform of ``create()``,
        which cost 0.18 ms a message (43 ms for a 240-message request) for nothing we need."""
        client = self.client(settings)
        response: httpx2.Response = await client.post(
            "/chat/completions", cast_to=httpx2.Response, body=params
        )
        return response

    async def complete(self, settings: Settings, params: dict[str, Any]) -> dict[str, Any]:
        """One non-streamed completion, returned as the upstream's JSON object."""
        return completion_body(await self.complete_raw(settings, params))

    async def complete_raw(self, settings: Settings, params: dict[str, Any]) -> bytes:
        """One non-streamed completion, the upstream's body bytes as they came (for pass-through),
        once they are known to be a completion: a 200 carrying an HTML page is a bad gateway."""

        async def call() -> bytes:
            return (await self._post(settings, params)).content

        content = await _mapped(call, settings)
        completion_body(content)
        return content

    @asynccontextmanager
    async def stream(self, settings: Settings, params: dict[str, Any]) -> AsyncIterator[httpx2.Response]:
        """Open a streamed completion: errors before the first byte raise here, mapped; the body
        is then read from the yielded response (transport errors while reading are the caller's)."""
        client = self.client(settings)

        async def call() -> httpx2.Response:
            # With cast_to=httpx2.Response the SDK hands the response back unread: the caller reads it.
            events = await client.post(
                "/chat/completions",
                cast_to=httpx2.Response,
                body={**params, "stream": True},
                stream=True,
                stream_cls=openai.AsyncStream[httpx2.Response],
            )
            return cast(httpx2.Response, events)  # typed as a stream; at run time the raw response

        response = await _mapped(call, settings)
        if not response.headers.get("content-type", "").startswith("text/event-stream"):
            await response.aclose()
            raise UpstreamError(
                502, "upstream_bad_response", "the model API answered a stream request without a stream"
            )
        try:
            yield response
        finally:
            await response.aclose()


async def _mapped(call: Callable[[], Coroutine[Any, Any, T]], settings: Settings) -> T:
    try:
        return await call()
    except openai.APIError as exc:
        raise map_error(exc, settings) from None
    except httpx2.HTTPError as exc:
        raise map_transport_error(exc) from None


def completion_body(content: bytes) -> dict[str, Any]:
    """The upstream's answer as a JSON object with ``choices``, or a 502 saying it was not one."""
    try:
        body = json.loads(content)
    except ValueError:
        body = None
    if not isinstance(body, dict) or not isinstance(body.get("choices"), list):
        raise UpstreamError(
            502, "upstream_bad_response", "the model API answered with something that is not a completion"
        )
    return body


def map_error(exc: openai.APIError, settings: Settings) -> UpstreamError:
    """Turn what the openai client raised into the status our client should see."""
    if isinstance(exc, openai.APITimeoutError):
        return UpstreamError(
            504, "upstream_timeout", f"the model API did not answer within {settings.request_timeout:g} s"
        )
    if isinstance(exc, openai.APIConnectionError):
        return UpstreamError(
            503, "upstream_unreachable", "the model API could not be reached; try again later"
        )
    if isinstance(exc, openai.AuthenticationError | openai.PermissionDeniedError):
        return UpstreamError(
            502,
            "upstream_auth_failed",
            f"the model API rejected this bot's API key (HTTP {exc.status_code}); fix or rotate the key",
        )
    if isinstance(exc, openai.RateLimitError):
        retry_after = exc.response.headers.get("retry-after", "1")
        return UpstreamError(
            429,
            "upstream_rate_limited",
            "the model API is rate limiting this bot; retry later",
            headers={"Retry-After": retry_after},
        )
    if isinstance(exc, openai.APIStatusError) and 400 <= exc.status_code < 500:
        # The request itself was refused (a parameter this model does not take, content policy ...):
        # the client's to fix, so a 4xx it will not retry, with the upstream's own code and param.
        error = exc.body if isinstance(exc.body, dict) else {}
        code, param = error.get("code"), error.get("param")
        message = _redact(str(error.get("message") or exc.message), settings)
        return UpstreamError(
            exc.status_code,
            code if isinstance(code, str) and code else "upstream_rejected",
            f"the model API refused the request: {message}",
            type="invalid_request_error",
            param=param if isinstance(param, str) else None,
        )
    if isinstance(exc, openai.APIStatusError):
        detail = _redact(exc.message, settings)
        return UpstreamError(
            502, "upstream_error", f"the model API failed with HTTP {exc.status_code}: {detail}"
        )
    return UpstreamError(502, "upstream_error", "the model API returned a response that could not be read")


def map_transport_error(exc: httpx2.HTTPError) -> UpstreamError:
    """Errors while reading a streamed body, after the headers came."""
    if isinstance(exc, httpx2.TimeoutException):
        return UpstreamError(504, "upstream_timeout", "the model API stopped sending mid-reply")
    return UpstreamError(503, "upstream_unreachable", "the connection to the model API broke mid-reply")


def _redact(text: str, settings: Settings) -> str:
    key = settings.openai_api_key.reveal() if settings.openai_api_key else ""
    text = text[:500]
    return text.replace(key, "****") if key else text
