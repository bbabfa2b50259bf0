"""The Chat Completions wire protocol through the official ``openai`` async client, and OpenAI itself.
Edge: network I/O.

Responses are read raw (``cast_to=httpx2.Response``): the client still does base URL, timeouts and
error classes, but we skip building pydantic objects we would only serialise again; retries are ours,
under one deadline per call (``with_deadline``). Every failure leaves here as an ``UpstreamError``
whose HTTP status tells the client what happened; no message carries a key or a token.

``ChatCompletionsAPI`` is what every provider speaking this protocol shares; a provider says where
requests go, how they authenticate and how its own errors read (``upstream_azure``).
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import random
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, TypeVar, cast

import httpx2
import openai

from chatbot_service.errors import ChatError, UpstreamError
from chatbot_service.settings import Settings
from chatbot_service.sse import CompletionStream, StreamEvent
from chatbot_service.upstream import ModelAPI, Reply

T = TypeVar("T")

DEFAULT_BASE_URL = "https://api.openai.com/v1"
_RETRIED_STATUSES = frozenset({408, 409, 429})


class ChatStream:
    """A streamed completion being read: ``batches`` parses the body as it comes (``sse``)."""

    def __init__(self, response: httpx2.Response) -> None:
        self._response = response

    async def batches(self) -> AsyncIterator[list[StreamEvent]]:
        check = CompletionStream()
        try:
            async for piece in self._response.aiter_bytes():
                events = check.feed(piece)
                if not events:
                    continue
                if check.done:  # before [DONE] goes out: a client must not see it, then an error
                    yield events + check.finish()
                    return
                yield events
            last = check.finish()
            if last:
                yield last
        except httpx2.HTTPError as exc:
            raise map_transport_error(exc) from None


class ChatCompletionsAPI:
    """One client per (base URL, timeout, key); a change makes a new one.

    The SDK's own retries are off: it would sleep whatever ``Retry-After`` says on every retry, each
    attempt with a full timeout (3 x 60 s for a hung upstream). Here one deadline, ``request_timeout``,
    covers a whole call with all its retries; no sleep is longer than the time left, and a 429 asking
    for more than that is returned at once with its ``Retry-After``.

    The replaced client is not closed here: calls still in flight on it finish, then it is collected.
    """

    name = "openai"
    path = "/chat/completions"

    def __init__(self) -> None:
        self._key: tuple[str, str, float] | None = None
        self._client: openai.AsyncOpenAI | None = None

    # -- what a provider says -------------------------------------------------------------

    def base_url(self, settings: Settings) -> str:
        return settings.openai_base_url or DEFAULT_BASE_URL

    def client_key(self, settings: Settings) -> str:
        """The key the client is made with (a provider sending its own auth headers passes a
        placeholder the headers replace)."""
        assert settings.openai_api_key is not None
        return settings.openai_api_key.reveal()

    async def request_options(self, settings: Settings) -> dict[str, Any]:
        """Per-request options (``headers``, ``params``): where a provider puts a fresh token."""
        return {}

    def body(self, settings: Settings, params: dict[str, Any]) -> dict[str, Any]:
        return params

    def secrets(self, settings: Settings) -> list[str]:
        """Values redacted from any upstream text passed on."""
        return [settings.openai_api_key.reveal()] if settings.openai_api_key else []

    def map_error(self, exc: openai.APIError, settings: Settings) -> UpstreamError:
        return map_error(exc, settings, self.secrets(settings))

    def problem(self) -> str | None:
        return None

    def succeeded(self) -> None:
        """A call went through (a provider may clear what it reported)."""

    # -- the protocol -----------------------------------------------------------------------

    def client(self, settings: Settings) -> openai.AsyncOpenAI:
        key = (self.client_key(settings), self.base_url(settings), settings.request_timeout)
        if self._client is None or key != self._key:
            self._client = openai.AsyncOpenAI(api_key=key[0], base_url=key[1], timeout=key[2], max_retries=0)
            self._key = key
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    async def complete(self, settings: Settings, params: dict[str, Any]) -> Reply:
        body = completion_body(await self.complete_raw(settings, params))
        usage = body.get("usage")
        first = body["choices"][0] if body["choices"] and isinstance(body["choices"][0], dict) else {}
        finish = first.get("finish_reason")
        return Reply(
            reply_text(body), usage if isinstance(usage, dict) else None, body, finish and str(finish)
        )

    async def complete_raw(self, settings: Settings, params: dict[str, Any]) -> bytes:
        """One non-streamed completion, the body bytes as they came (for pass-through), once they are
        known to be a completion: a 200 carrying an HTML page is a bad gateway.

        ``client.post`` keeps the client's base URL and error classes, and skips the SDK's per-message
        type transform of ``create()``, which cost 0.18 ms a message for nothing we need."""
        client = self.client(settings)
        body = self.body(settings, params)

        async def attempt(left: float) -> bytes:
            options = {**await self.request_options(settings), "timeout": left}
            response: httpx2.Response = await client.post(
                self.path, cast_to=httpx2.Response, body=body, options=cast(Any, options)
            )
            return response.content

        content = await self._with_deadline(attempt, settings)
        completion_body(content)
        self.succeeded()
        return content

    @asynccontextmanager
    async def stream(self, settings: Settings, params: dict[str, Any]) -> AsyncIterator[ChatStream]:
        """Open a streamed completion: the deadline covers getting the response's headers (retries
        included); then each silence between chunks may last up to ``request_timeout``. Errors before
        the first byte raise here, mapped; errors while reading raise from ``batches``."""
        client = self.client(settings)
        body = {**self.body(settings, params), "stream": True}

        async def attempt(_: float) -> httpx2.Response:
            # With cast_to=httpx2.Response the SDK hands the response back unread: the caller reads it.
            events = await client.post(
                self.path,
                cast_to=httpx2.Response,
                body=body,
                options=cast(Any, await self.request_options(settings)),
                stream=True,
                stream_cls=openai.AsyncStream[httpx2.Response],
            )
            return cast(httpx2.Response, events)  # typed as a stream; at run time the raw response

        response = await self._with_deadline(attempt, settings)
        if not response.headers.get("content-type", "").startswith("text/event-stream"):
            await response.aclose()
            raise UpstreamError(
                502, "upstream_bad_response", "the model API answered a stream request without a stream"
            )
        self.succeeded()
        try:
            yield ChatStream(response)
        finally:
            await response.aclose()

    async def _with_deadline(
        self, attempt: Callable[[float], Coroutine[Any, Any, T]], settings: Settings
    ) -> T:
        return await with_deadline(attempt, settings, lambda exc: self.map_error(exc, settings))


class OpenAIChat(ChatCompletionsAPI):
    """OpenAI, or any OpenAI-compatible endpoint (``openai_base_url``), with a bearer API key."""


async def with_deadline(
    attempt: Callable[[float], Coroutine[Any, Any, T]],
    settings: Settings,
    mapper: Callable[[openai.APIError], UpstreamError],
) -> T:
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
            raise timed_out(settings) from None
        except openai.APIStatusError as exc:
            error = mapper(exc)
            if exc.status_code not in _RETRIED_STATUSES and exc.status_code < 500:
                raise error from None
            wait = retry_after(exc.response.headers)
        except openai.APIError as exc:  # connection errors, unreadable responses
            error = mapper(exc)
        except httpx2.HTTPError as exc:
            error = map_transport_error(exc)
        except ChatError:
            raise  # a provider's own refusal before sending (no credential)
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


def timed_out(settings: Settings) -> UpstreamError:
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


def reply_text(body: dict[str, Any]) -> str:
    """The first choice's text (empty for a reply that is only a refusal or tool call)."""
    try:
        content = body["choices"][0]["message"].get("content")
    except (KeyError, IndexError, TypeError, AttributeError):
        content = 0
    if content is not None and not isinstance(content, str):
        raise UpstreamError(502, "upstream_bad_response", "the model API answered without a reply")
    return content or ""


def map_error(exc: openai.APIError, settings: Settings, secrets: list[str]) -> UpstreamError:
    """Turn what the openai client raised into the status our client should see."""
    if isinstance(exc, openai.APITimeoutError):
        return timed_out(settings)
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
        return UpstreamError(
            429,
            "upstream_rate_limited",
            "the model API is rate limiting this bot; retry later",
            headers=rate_limit_headers(exc.response.headers),
        )
    if isinstance(exc, openai.APIStatusError) and 400 <= exc.status_code < 500:
        # The request itself was refused (a parameter this model does not take, content policy ...):
        # the client's to fix, so a 4xx it will not retry, with the upstream's own code and param.
        error = exc.body if isinstance(exc.body, dict) else {}
        code, param = error.get("code"), error.get("param")
        message = redact(str(error.get("message") or exc.message), secrets)
        return UpstreamError(
            exc.status_code,
            code if isinstance(code, str) and code else "upstream_rejected",
            f"the model API refused the request: {message}",
            type="invalid_request_error",
            param=param if isinstance(param, str) else None,
        )
    if isinstance(exc, openai.APIStatusError):
        detail = redact(exc.message, secrets)
        return UpstreamError(
            502, "upstream_error", f"the model API failed with HTTP {exc.status_code}: {detail}"
        )
    return UpstreamError(502, "upstream_error", "the model API returned a response that could not be read")


def rate_limit_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """``Retry-After`` in whole seconds for our client, from whichever form the upstream sent."""
    wait = retry_after(headers)
    return {"Retry-After": str(max(1, round(wait))) if wait is not None else "1"}


def map_transport_error(exc: httpx2.HTTPError) -> UpstreamError:
    """Errors while reading a streamed body, after the headers came."""
    if isinstance(exc, httpx2.TimeoutException):
        return UpstreamError(504, "upstream_timeout", "the model API stopped sending mid-reply")
    return UpstreamError(503, "upstream_unreachable", "the connection to the model API broke mid-reply")


def redact(text: str, secrets: list[str]) -> str:
    text = text[:500]
    for secret in secrets:
        if secret:
            text = text.replace(secret, "****")
    return text


if TYPE_CHECKING:
    _checked: ModelAPI = OpenAIChat()  # the provider fits the protocol routes and turns rely on
