"""The Chat Completions wire protocol over ``httpx2``, and OpenAI itself. Edge: network I/O.

One POST per turn, its JSON answer or its SSE stream, is all the service asks of a model API: the
retries and the one deadline per call are ours (``_send``), the SSE framing is ours (``sse``), the error
mapping by status is ours (``upstream_errors``). So no SDK sits here: the ``openai`` package added
~10 MiB of idle RSS (measured side by side) and ~1 s of import to every bot, to build a request we build
in a line and to parse answers into objects we would only serialise again (docs/architecture.md). Every
failure leaves here as an ``UpstreamError``; no message carries a key or a token.

``ChatCompletionsAPI`` is what every provider speaking this protocol shares; a provider says where
requests go, how they authenticate and how its own errors read (``upstream_azure``).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import httpx2

from chatbot_service import __version__
from chatbot_service.errors import ChatError, UpstreamError
from chatbot_service.settings import Settings
from chatbot_service.sse import CompletionStream, StreamEvent
from chatbot_service.upstream import ModelAPI, Reply
from chatbot_service.upstream_errors import (
    Refusal,
    backoff,
    broke_mid_reply,
    map_refusal,
    retry_after,
    timed_out,
    unreachable,
)

DEFAULT_BASE_URL = "https://api.openai.com/v1"
#: The OpenAI SDK's pool: many turns in flight share few connections, kept alive between turns.
LIMITS = httpx2.Limits(max_connections=1000, max_keepalive_connections=100)
USER_AGENT = f"kubechat/{__version__}"


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
            raise broke_mid_reply(isinstance(exc, httpx2.TimeoutException)) from None


class ChatCompletionsAPI:
    """One HTTP client for the process's life: one pool of kept-alive connections and one TLS context
    (2.5 MiB each), whatever the settings' reloads change; proxies and CAs come from the environment
    (``HTTPS_PROXY``, ``SSL_CERT_FILE``: httpx2's ``trust_env``).

    Retries: one deadline, ``request_timeout``, covers a whole call with all its retries; no sleep is
    longer than the time left, and a 429 asking for more than that is returned at once with its
    ``Retry-After``.
    """

    name = "openai"
    path = "/chat/completions"

    def __init__(self) -> None:
        self._client = httpx2.AsyncClient(limits=LIMITS, follow_redirects=True)

    # -- what a provider says -------------------------------------------------------------

    def base_url(self, settings: Settings) -> str:
        return settings.openai_base_url or DEFAULT_BASE_URL

    async def auth_headers(self, settings: Settings) -> dict[str, str]:
        """The request's credentials (where a provider puts a fresh token)."""
        assert settings.openai_api_key is not None
        return {"Authorization": f"Bearer {settings.openai_api_key.reveal()}"}

    def query(self, settings: Settings) -> dict[str, str]:
        return {}

    def body(self, settings: Settings, params: dict[str, Any]) -> dict[str, Any]:
        return params

    def secrets(self, settings: Settings) -> list[str]:
        """Values redacted from any upstream text passed on."""
        return [settings.openai_api_key.reveal()] if settings.openai_api_key else []

    def map_refusal(self, refusal: Refusal, settings: Settings) -> UpstreamError:
        return map_refusal(refusal, settings, self.secrets(settings))

    def problem(self) -> str | None:
        return None

    def succeeded(self) -> None:
        """A call went through (a provider may clear what it reported)."""

    # -- the protocol -----------------------------------------------------------------------

    async def aclose(self) -> None:
        await self._client.aclose()

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
        known to be a completion: a 200 carrying an HTML page is a bad gateway."""
        response = await self._send(settings, self.body(settings, params), stream=False)
        completion_body(response.content)
        self.succeeded()
        return response.content

    @asynccontextmanager
    async def stream(self, settings: Settings, params: dict[str, Any]) -> AsyncIterator[ChatStream]:
        """Open a streamed completion: the deadline covers getting the response's headers (retries
        included); then each silence between chunks may last up to ``request_timeout``. Errors before
        the first byte raise here, mapped; errors while reading raise from ``batches``."""
        response = await self._send(settings, {**self.body(settings, params), "stream": True}, stream=True)
        try:
            if not response.headers.get("content-type", "").startswith("text/event-stream"):
                raise UpstreamError(
                    502, "upstream_bad_response", "the model API answered a stream request without a stream"
                )
            self.succeeded()
            yield ChatStream(response)
        finally:
            await response.aclose()

    async def _send(self, settings: Settings, body: dict[str, Any], *, stream: bool) -> httpx2.Response:
        """POST ``body`` until the model API accepts it, refuses it for good, retries run out, or the
        call's one deadline would pass while waiting. A non-streamed answer comes back read (the
        deadline bounds a body that trickles in too); a streamed one with only its headers read."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + settings.request_timeout
        url = self.base_url(settings).rstrip("/") + self.path
        tried = 0
        while True:
            left = deadline - loop.time()
            wait: float | None = None
            try:
                async with asyncio.timeout(left):
                    headers = {
                        "Accept": "text/event-stream" if stream else "application/json",
                        "User-Agent": USER_AGENT,
                        **await self.auth_headers(settings),
                    }
                    request = self._client.build_request(
                        "POST",
                        url,
                        json=body,
                        params=self.query(settings),
                        headers=headers,
                        # a stream's silences may each last the whole timeout; a plain answer has what is left
                        timeout=settings.request_timeout if stream else left,
                    )
                    response = await self._client.send(request, stream=True)
                    if not response.is_error and stream:
                        return response
                    try:
                        await response.aread()
                    finally:
                        await response.aclose()
                if not response.is_error:
                    return response
                refusal = Refusal.read(response.status_code, response.headers, response.content)
                error = self.map_refusal(refusal, settings)
                if not refusal.retried:
                    raise error from None
                wait = retry_after(response.headers)
            except (TimeoutError, httpx2.TimeoutException):
                raise timed_out(settings) from None
            except (httpx2.HTTPError, httpx2.InvalidURL):  # refused connections, broken answers
                error = unreachable()
            except ChatError:
                raise  # our own refusal (a provider without a credential) or a mapped answer
            delay = backoff(tried) if wait is None else wait
            if tried >= settings.max_retries or delay >= deadline - loop.time():
                raise error  # a Retry-After beyond the deadline: the client is told at once, with it
            await asyncio.sleep(delay)
            tried += 1


class OpenAIChat(ChatCompletionsAPI):
    """OpenAI, or any OpenAI-compatible endpoint (``openai_base_url``), with a bearer API key."""


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


if TYPE_CHECKING:
    _checked: ModelAPI = OpenAIChat()  # the provider fits the protocol routes and turns rely on
