"""Azure OpenAI's data plane as a bot uses it: chat completions at both path styles, Azure's auth and
Azure's error bodies; the answering itself is ``FakeOpenAI``'s (same replies, streams and usage).

- ``POST /openai/deployments/<deployment>/chat/completions?api-version=<version>`` (the classic path)
- ``POST /openai/v1/chat/completions`` with the deployment as ``model`` (the OpenAI-compatible path)

A request needs ``Authorization: Bearer <token>`` with an unexpired token the fake Entra ID endpoint
issued for ``https://cognitiveservices.azure.com/.default``, or (when ``api_keys`` is set) an
``api-key`` header; anything else gets Azure's 401. An identity without the role gets Azure's 403; a
prompt containing ``blocked_word`` gets the content filter's 400; ``throttle_next`` answers with
Azure's 429 and its retry headers.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.support.fake_azure.identity import FakeIdentity
from tests.support.fake_openai import FakeOpenAI

SCOPE = "https://cognitiveservices.azure.com/.default"
API_VERSIONS = frozenset({"2024-10-21", "2025-04-01-preview"})
DATA_ACTION = "Microsoft.CognitiveServices/accounts/OpenAI/deployments/chat/completions/action"


@dataclass
class Call:
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    status: int


@dataclass
class FakeAzureOpenAI:
    identity: FakeIdentity
    deployments: set[str]
    answers: FakeOpenAI = field(default_factory=lambda: FakeOpenAI(api_keys=None))
    api_keys: set[str] = field(default_factory=set)
    role_assigned: bool = True
    blocked_word: str = "forbidden-topic"
    calls: list[Call] = field(default_factory=list)
    url: str = ""
    _throttle: list[int] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.app = Starlette(
            routes=[
                Route("/openai/deployments/{deployment}/chat/completions", self.classic, methods=["POST"]),
                Route("/openai/v1/chat/completions", self.v1, methods=["POST"]),
            ]
        )

    def throttle_next(self, retry_after_ms: int) -> None:
        self._throttle.append(retry_after_ms)

    def statuses(self) -> list[int]:
        return [call.status for call in self.calls]

    async def classic(self, request: Request) -> Response:
        version = request.query_params.get("api-version")
        if version not in API_VERSIONS:
            return self._log(request, _error(404, "404", "Resource not found"))
        return await self._answer(request, request.path_params["deployment"])

    async def v1(self, request: Request) -> Response:
        if "api-version" in request.query_params and request.query_params["api-version"] != "preview":
            return self._log(request, _error(400, "BadRequest", "API version not supported"))
        try:
            body = await request.json()
        except ValueError:
            return self._log(request, _error(400, "BadRequest", "the body is not JSON"))
        return await self._answer(request, str(body.get("model", "")))

    async def _answer(self, request: Request, deployment: str) -> Response:
        key = request.headers.get("api-key")
        if key is not None:
            if key not in self.api_keys:
                return self._log(request, _denied())
        elif not self.identity.valid(request.headers.get("authorization"), SCOPE):
            return self._log(request, _denied())
        elif not self.role_assigned:
            return self._log(
                request,
                _error(
                    403,
                    "PermissionDenied",
                    f"The principal `{self.identity.client_id}` lacks the required data action "
                    f"`{DATA_ACTION}` to perform "
                    "`POST /openai/deployments/{deployment-id}/chat/completions` operation.",
                ),
            )
        if deployment not in self.deployments:
            return self._log(
                request,
                _error(404, "DeploymentNotFound", "The API deployment for this resource does not exist."),
            )
        with self._lock:
            throttle = self._throttle.pop(0) if self._throttle else None
        if throttle is not None:
            response = _error(
                429,
                "429",
                "Requests to the ChatCompletions_Create Operation under Azure OpenAI API version 2024-10-21 "
                f"have exceeded token rate limit of your current OpenAI S0 pricing tier. Please retry after "
                f"{throttle // 1000} seconds.",
            )
            response.headers["retry-after-ms"] = str(throttle)
            response.headers["retry-after"] = str(throttle // 1000)
            return self._log(request, response)
        body = await request.json()
        text = " ".join(str(m.get("content", "")) for m in body.get("messages", []))
        if self.blocked_word in text:
            return self._log(request, _content_filter())
        return self._log(request, await self.answers.completions(request))

    def _log(self, request: Request, response: Response) -> Response:
        with self._lock:
            self.calls.append(
                Call(
                    request.url.path, dict(request.query_params), dict(request.headers), response.status_code
                )
            )
        return response


def _error(http_status: int, code: str, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message, **extra}}, status_code=http_status)


def _denied() -> JSONResponse:
    return _error(
        401,
        "401",
        "Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide a valid "
        "key for an active subscription and use a correct regional API endpoint for your resource.",
    )


def _content_filter() -> JSONResponse:
    """Azure's refusal of a prompt by its content filter, as the data plane sends it."""
    results = {
        "hate": {"filtered": False, "severity": "safe"},
        "self_harm": {"filtered": False, "severity": "safe"},
        "sexual": {"filtered": False, "severity": "safe"},
        "violence": {"filtered": True, "severity": "medium"},
    }
    return _error(
        400,
        "content_filter",
        "The response was filtered due to the prompt triggering Azure OpenAI's content management policy. "
        "Please modify your prompt and retry.",
        param="prompt",
        type=None,
        status=400,
        innererror={"code": "ResponsibleAIPolicyViolation", "content_filter_result": results},
    )
