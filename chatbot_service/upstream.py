"""The model's API, through the official ``openai`` async client. Edge: network I/O.

Responses are read raw (``cast_to=httpx2.Response``): the client still does auth, base URL, timeouts
and error classes, but we skip building pydantic objects we would only serialise again; retries are
ours, under one deadline per call (``with_deadline``). Every failure leaves here as an
``UpstreamError`` whose HTTP status tells the client what happened; no message carries the key.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import random
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from contextlib import asynccontextmanager
from typing import Any, TypeVar, cast

import httpx2
import openai

from chatbot_service.errors import UpstreamError
from chatbot_service.settings import Settings

T = TypeVar("T")

DEFAULT_BASE_URL = "https://api.openai.com/v1"


class Upstream:
    """One client for the current (key, base URL); a change makes a new one.

    The SDK's own retries are off: it would sleep whatever ``Retry-After`` says on every retry, each
    attempt with a full timeout (3 x 60 s for a hung upstream). Here one deadline, ``request_timeout``,
    covers a whole call with all its retries; no sleep is longer than the time left, and a 429 asking
    for more than that is returned at once with its ``Retry-After``.

    The replaced client is not closed here: calls still in flight on it finish, then it is collected.
    """

    def __init__(self) -> None:
        self._key: tuple[str, str, float] | None = None
        self._client: openai.AsyncOpenAI | None = None

    def client(self, settings: Settings) -> openai.AsyncOpenAI:
        assert settings.openai_api_key is not None
        key = (
            settings.openai_api_key.reveal(),
            settings.openai_base_url or DEFAULT_BASE_URL,
            settings.request_timeout,
        )
        if self._client is None or key != self._key:
            self._client = openai.AsyncOpenAI(api_key=key[0], base_url=key[1], timeout=key[2], max_retries=0)
            self._key = key
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    async def complete(self, settings: Settings, params: dict[str, Any]) -> dict[str, Any]:
        """One non-streamed completion, returned as the upstream's JSON object."""
        return completion_body(await self.complete_raw(settings, params))

    async def complete_raw(self, settings: Settings, params: dict[str, Any]) -> bytes:
        """One non-streamed completion, the upstream's body bytes as they came (for pass-through),
        once they are known to be a completion: a 200 carrying an HTML page is a bad gateway.

        ``client.post`` keeps the client's auth, base URL and error classes, and skips the SDK's
        per-message type transform of ``create()``, which cost 0.18 ms a message for nothing we need."""
        client = self.client(settings)

        async def attempt(left: float) -> bytes:
            response: httpx2.Response = await client.post(
                "/chat/completions", cast_to=httpx2.Response, body=params, options={"timeout": left}
            )
            return response.content

        content = await with_deadline(attempt, settings)
        completion_body(content)
        return content

    @asynccontextmanager
    async def stream(self, settings: Settings, params: dict[str, Any]) -> AsyncIterator[httpx2.Response]:
        """Open a streamed completion: the deadline covers getting the response's headers (retries
        included); then each silence between chunks may last up to ``request_timeout``. Errors before
        the first byte raise here, mapped; transport errors while reading are the caller's."""
        client = self.client(settings)

        async def attempt(_: float) -> httpx2.Response:
            # With cast_to=httpx2.Response the SDK hands the response back unread: the caller reads it.
            events = await client.post(
                "/chat/completions",
                cast_to=httpx2.Response,
                body={**params, "stream": True},
                stream=True,
                stream_cls=openai.AsyncStream[httpx2.Response],
            )
            return cast(httpx2.Response, events)  # typed as a stream; at run time the raw response

        response = await with_deadline(attempt, settings)
        if not response.headers.get("content-type", "").startswith("text/event-stream"):
            await response.aclose()
            raise UpstreamError(
                502, "upstream_bad_response", "the model API answered a stream request without a stream"
            )
        try:
            yield response
        finally:
            await response.aclose()


_RETRIED_STATUSES = frozenset({408, 409, 429})


async def with_deadline(attempt: Callable[[float], Coroutine[Any, Any, T]], settings: Settings) -> T:
    """Call ``attempt(seconds_left)`` until it succeeds, fails for good, runs out of retries, or the
    turn's one deadline would pass while waiting; every failure leaves as an ``UpstreamError``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + settings.request_timeout
    tried = 0
    while True:
        left = deadline - loop.time()
        wait: float | None = None
        try:
            async with asyncio.timeout(left):  # also bounds a body that trickles in
                return await attempt(left)
        except (TimeoutError, openai.APITimeoutError):
            raise _timed_out(settings) from None
        except openai.APIStatusError as exc:
            error = map_error(exc, settings)
            if exc.status_code not in _RETRIED_STATUSES and exc.status_code < 500:
                raise error from None
            wait = retry_after(exc.response.headers)
        except openai.APIError as exc:  # connection errors, unreadable responses
            error = map_error(exc, settings)
        except httpx2.HTTPError as exc:
            error = map_transport_error(exc)
        delay = backoff(tried) if wait is None else wait
        if tried >= settings.max_retries or delay >= deadline - loop.time():
            raise error  # a Retry-After beyond the deadline: the client is told at once, with it
        await asyncio.sleep(delay)
        tried += 1


def backoff(tried: int) -> float:
    """The SDK's schedule: 0.5 s doubling up to 8 s, less up to a quarter of jitter."""
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


def _timed_out(settings: Settings) -> UpstreamError:
    return UpstreamError(
        504, "upstream_timeout", f"the model API did not answer within {settings.request_timeout:g} s"
    )


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
        return _timed_out(settings)
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
