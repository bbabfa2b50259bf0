"""The model's API as the service sees it: one small protocol, and the provider each bot's settings pick.

Routes and the turn logic know only ``ModelAPI``: complete, stream, report usage, and say what is
wrong for ``/readyz``. Each provider owns its wire format (URLs, auth, SSE framing, chunk deltas, usage
blocks, error bodies) and maps every failure to an ``UpstreamError``. A new provider is one module
with a class that fits ``ModelAPI`` plus its name in ``_PROVIDERS`` (and in ``settings.PROVIDERS``).
"""

from __future__ import annotations

import importlib
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Protocol

from chatbot_service.settings import Settings
from chatbot_service.sse import StreamEvent

#: provider setting -> (module, class, ``gen_ai.provider.name``); imported on first use: a bot
#: loads only its own provider's code.
_PROVIDERS = {
    "openai": ("chatbot_service.upstream_openai", "OpenAIChat", "openai"),
    "azure": ("chatbot_service.upstream_azure", "AzureOpenAIChat", "azure.ai.openai"),
}


@dataclass(frozen=True, slots=True)
class Reply:
    """One non-streamed answer: its text, the usage the provider reported, why it stopped, and the body
    (which names the model that answered)."""

    text: str
    usage: dict[str, Any] | None
    body: dict[str, Any]
    finish: str | None = None


class EventStream(Protocol):
    """A streamed answer being read: batches of whole events as they arrive; a stream that ends badly
    raises ``ChatError`` (``UpstreamError``) instead of ending."""

    def batches(self) -> AsyncIterator[list[StreamEvent]]: ...


class ModelAPI(Protocol):
    #: ``gen_ai.provider.name`` in the OpenTelemetry GenAI conventions.
    name: str

    async def complete(self, settings: Settings, params: dict[str, Any]) -> Reply: ...

    async def complete_raw(self, settings: Settings, params: dict[str, Any]) -> bytes:
        """The answer's body as it came, once known to be a Chat Completions object (pass-through)."""
        ...

    def stream(self, settings: Settings, params: dict[str, Any]) -> AbstractAsyncContextManager[EventStream]:
        """Open a streamed answer; failures before its first byte raise on entering."""
        ...

    def problem(self) -> str | None:
        """What the provider last learnt that stops every turn (a rejected identity), for ``/readyz``."""
        ...

    async def aclose(self) -> None: ...


class Upstream:
    """The provider the current settings name, made on first use and kept; the others are never
    imported."""

    def __init__(self) -> None:
        self._apis: dict[str, ModelAPI] = {}

    def api(self, settings: Settings) -> ModelAPI:
        api = self._apis.get(settings.provider)
        if api is None:
            module, cls, _ = _PROVIDERS[settings.provider]
            api = self._apis[settings.provider] = getattr(importlib.import_module(module), cls)()
        return api

    @staticmethod
    def provider_name(settings: Settings) -> str:
        """``gen_ai.provider.name`` for the settings' provider, without importing it."""
        return _PROVIDERS[settings.provider][2]

    async def complete(self, settings: Settings, params: dict[str, Any]) -> Reply:
        return await self.api(settings).complete(settings, params)

    async def complete_raw(self, settings: Settings, params: dict[str, Any]) -> bytes:
        return await self.api(settings).complete_raw(settings, params)

    def stream(self, settings: Settings, params: dict[str, Any]) -> AbstractAsyncContextManager[EventStream]:
        return self.api(settings).stream(settings, params)

    def problem(self, settings: Settings) -> str | None:
        api = self._apis.get(settings.provider)
        return api.problem() if api is not None else None

    async def aclose(self) -> None:
        apis, self._apis = list(self._apis.values()), {}
        for api in apis:
            await api.aclose()
