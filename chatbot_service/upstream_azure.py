"""Azure OpenAI (``spec.azureOpenAI``): the Chat Completions protocol at a resource's data plane, with
Microsoft Entra ID by default. Edge: network I/O.

Two path styles: ``api_version`` ``v1`` (the default) posts to ``<endpoint>/openai/v1/chat/completions``
with the deployment as ``model``; a dated version posts to
``<endpoint>/openai/deployments/<deployment>/chat/completions?api-version=<version>``. Auth is a bearer
token for ``https://cognitiveservices.azure.com/.default`` from ``DefaultAzureCredential`` (workload
identity in AKS), cached and refreshed in the background (``azure_tokens``); or, when the settings
carry one, an ``api-key`` header. Azure's own answers are mapped here: a rejected identity names the
role it needs and its client id (and shows on ``/readyz``), a 429 keeps Azure's retry hint, and a
content-filter refusal says it was the content filter.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

from chatbot_service.azure_tokens import CachedToken, TokenFetchError
from chatbot_service.errors import UpstreamError
from chatbot_service.settings import Settings
from chatbot_service.upstream import ModelAPI, Reply
from chatbot_service.upstream_errors import Refusal, map_refusal, rate_limit_headers, redact
from chatbot_service.upstream_openai import ChatCompletionsAPI

SCOPE = "https://cognitiveservices.azure.com/.default"
ROLE = "Cognitive Services OpenAI User"
#: How long a rejected identity keeps the bot unready without a call proving otherwise: the pod comes
#: back into its Service after it, so a fixed role assignment is noticed without a restart.
PROBLEM_SECONDS = 60.0


class AzureOpenAIChat(ChatCompletionsAPI):
    name = "azure.ai.openai"

    def __init__(self) -> None:
        super().__init__()
        self.tokens = CachedToken(SCOPE)
        self._problem: tuple[str, float] | None = None

    def base_url(self, settings: Settings) -> str:
        endpoint = settings.azure_openai_endpoint
        if settings.azure_openai_api_version == "v1":
            return f"{endpoint}/openai/v1"
        return f"{endpoint}/openai/deployments/{settings.azure_openai_deployment}"

    def query(self, settings: Settings) -> dict[str, str]:
        version = settings.azure_openai_api_version
        return {} if version == "v1" else {"api-version": version}

    async def auth_headers(self, settings: Settings) -> dict[str, str]:
        if settings.azure_openai_api_key is not None:
            return {"api-key": settings.azure_openai_api_key.reveal()}
        try:
            token = await self.tokens.get()
        except TokenFetchError as exc:
            self._report(f"{exc} (client id {client_id()})")
            raise UpstreamError(502, "upstream_auth_failed", f"Azure OpenAI: {exc}") from None
        return {"Authorization": f"Bearer {token}"}

    def body(self, settings: Settings, params: dict[str, Any]) -> dict[str, Any]:
        # v1 routes by the body's model; the classic path by its URL (and ignores the model).
        return {**params, "model": settings.azure_openai_deployment}

    def secrets(self, settings: Settings) -> list[str]:
        key = settings.azure_openai_api_key
        return [key.reveal()] if key is not None else []

    async def complete(self, settings: Settings, params: dict[str, Any]) -> Reply:
        reply = await super().complete(settings, params)
        if reply.finish == "content_filter" and not reply.text:
            raise content_filtered("the reply", _filtered_categories(reply.body.get("choices", [{}])[0]))
        return reply

    def map_refusal(self, refusal: Refusal, settings: Settings) -> UpstreamError:
        code = refusal.code
        message = redact(refusal.message, self.secrets(settings))[:300]
        status = refusal.status
        if status in (401, 403):
            if settings.azure_openai_api_key is not None:
                return UpstreamError(
                    502,
                    "upstream_auth_failed",
                    f"Azure OpenAI rejected this bot's api-key (HTTP {status}); fix or rotate it",
                )
            reason = (
                f"Azure OpenAI refused this bot's identity (client id {client_id()}, HTTP {status}"
                f"{', ' + code if code else ''}): give it the '{ROLE}' role on the Azure OpenAI resource"
            )
            self._report(reason)
            return UpstreamError(502, "upstream_auth_failed", reason)
        if status == 429:
            headers = rate_limit_headers(refusal.headers)
            return UpstreamError(
                429,
                "upstream_rate_limited",
                f"Azure OpenAI is rate limiting deployment {settings.azure_openai_deployment!r}; retry after "
                f"{headers['Retry-After']} s{': ' + message if message else ''}",
                headers=headers,
            )
        if status == 400 and code == "content_filter":
            inner = refusal.error.get("innererror")
            return content_filtered("the prompt", _filtered_categories(inner))
        if status == 404 and code == "DeploymentNotFound":
            return UpstreamError(
                502,
                "upstream_not_found",
                f"Azure OpenAI has no deployment {settings.azure_openai_deployment!r} at this endpoint",
            )
        return map_refusal(refusal, settings, self.secrets(settings))

    def _report(self, reason: str) -> None:
        self._problem = (reason, time.monotonic())

    def succeeded(self) -> None:
        self._problem = None

    def problem(self) -> str | None:
        if self._problem is None or time.monotonic() - self._problem[1] > PROBLEM_SECONDS:
            return None
        return self._problem[0]

    async def aclose(self) -> None:
        await super().aclose()
        self.tokens.close()


def client_id() -> str:
    """The identity this pod authenticates as (set by the workload identity webhook)."""
    return os.environ.get("AZURE_CLIENT_ID") or "unknown: AZURE_CLIENT_ID is not set"


def content_filtered(what: str, categories: list[str]) -> UpstreamError:
    named = f" ({', '.join(categories)})" if categories else ""
    return UpstreamError(
        400,
        "content_filter",
        f"Azure OpenAI's content filter refused {what}{named}; rephrase it",
        type="invalid_request_error",
    )


def _filtered_categories(holder: Any) -> list[str]:
    """The categories Azure marked as filtered (``content_filter_result`` / ``content_filter_results``)."""
    if not isinstance(holder, dict):
        return []
    results = holder.get("content_filter_result") or holder.get("content_filter_results") or {}
    if not isinstance(results, dict):
        return []
    return sorted(
        name for name, result in results.items() if isinstance(result, dict) and result.get("filtered")
    )


if TYPE_CHECKING:
    _checked: ModelAPI = AzureOpenAIChat()
