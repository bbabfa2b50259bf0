"""The HTTP API of one bot (FastAPI). Edge: routes, Server-Sent Events and error mapping only;
the turn logic lives in ``service``."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import pathlib
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import TYPE_CHECKING, Annotated, Any

import httpx2
from fastapi import Depends, FastAPI, Path, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from chatbot_service import __version__
from chatbot_service.caller_headers import CallerHeaders
from chatbot_service.errors import BadRequest, ChatError, SessionNotFound
from chatbot_service.guard import Caller, Guard, Ticket
from chatbot_service.holder import SettingsHolder
from chatbot_service.service import ChatService, TurnResult
from chatbot_service.sessions import SessionStore, Stores
from chatbot_service.sources import read_local
from chatbot_service.tokens import get_encoding
from chatbot_service.upstream import Upstream, map_transport_error
from chatbot_service.usage import stream_usage, usage_report

if TYPE_CHECKING:
    from chatbot_service.appconfig import Source

log = logging.getLogger("kubechat.http")

SESSION_ID_PATTERN = r"^[A-Za-z0-9_-]{1,128}$"
MAX_BODY_BYTES = 1 << 20
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
STATIC_DIR = pathlib.Path(__file__).parent / "static"
# The chat page and its files: only this origin's own scripts, styles and connections, no inline code.
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


class ChatRequest(BaseModel):
    """A turn in a server-side conversation."""

    model_config = ConfigDict(extra="forbid", strict=True)
    message: str = Field(description="The user's message.")
    session_id: str | None = Field(
        default=None,
        pattern=SESSION_ID_PATTERN,
        description="Continue this session; omit to start a new one.",
    )
    stream: bool = Field(default=False, description="Stream the reply as Server-Sent Events.")


class ChatReply(BaseModel):
    session_id: str
    reply: str
    usage: dict[str, int]
    truncated: bool


SessionId = Annotated[str, Path(pattern=SESSION_ID_PATTERN)]


async def _authorized(request: Request) -> Caller:
    """Every route that talks to the model or to sessions: who calls (401/403 otherwise)."""
    holder: SettingsHolder = request.app.state.holder
    guard: Guard = request.app.state.guard
    caller = await guard.authenticate(holder.current, request.headers.get("authorization"))
    request.state.kubechat_caller = caller  # its x-ratelimit-* headers go on the response
    return caller


Authorized = Annotated[Caller, Depends(_authorized)]


def error_response(error: ChatError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


def sse(event: str, data: Mapping[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def create_app(
    environ: Mapping[str, str] | None = None, load: Callable[[], Mapping[str, str]] | None = None
) -> FastAPI:
    """Build the app; settings come from ``load`` (default: the environment, Azure App Configuration
    when the environment names a store, and mounted files, in that order of precedence)."""
    env = dict(os.environ if environ is None else environ)
    source = None if load else _app_configuration(env)
    holder = SettingsHolder(load or _local_loader(env, source))
    holder.reload()
    stores = Stores()
    upstream = Upstream()
    guard = Guard(stores)
    service = ChatService(holder, stores, upstream, guard)
    reload_interval = float(env.get("KUBECHAT_RELOAD_INTERVAL", "5"))

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if source is not None:
            source.start(on_loaded=holder.reload)
        if holder.current is not None:  # load the tokenizer now, not on the first user's request (~0.3 s)
            await asyncio.to_thread(get_encoding, holder.current.model_info.encoding)
        reloader = asyncio.create_task(holder.run(reload_interval))
        try:
            yield
        finally:
            reloader.cancel()
            if source is not None:
                source.close()
            await upstream.aclose()
            await stores.aclose()

    def _store() -> SessionStore:
        return stores.get(holder.loaded())

    app = FastAPI(
        title="kubechat bot",
        version=__version__,
        lifespan=lifespan,
        description=(
            "One chat bot: conversations kept server-side at /chat; OpenAI-compatible /v1/chat/completions."
        ),
    )
    app.state.service = service
    app.state.holder = holder
    app.state.guard = guard
    app.add_middleware(BodyLimit, limit=MAX_BODY_BYTES)
    app.add_middleware(CallerHeaders)

    @app.exception_handler(ChatError)
    async def on_chat_error(_: Request, exc: ChatError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def on_invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = exc.errors()
        if any(p.get("type") == "json_invalid" for p in problems):
            return error_response(BadRequest("the request body is not valid JSON", code="malformed_json"))
        described = "; ".join(
            f"{'.'.join(str(x) for x in p.get('loc', ())[1:]) or 'body'}: {p.get('msg')}" for p in problems
        )
        return JSONResponse(
            {"error": {"type": "invalid_request_error", "code": "invalid_body", "message": described}},
            status_code=422,
        )

    @app.exception_handler(StarletteHTTPException)
    async def on_http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return JSONResponse(
            {"error": {"type": "invalid_request_error", "code": code, "message": str(exc.detail)}},
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )

    @app.exception_handler(Exception)
    async def on_unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.error(
            "unexpected %s while serving a request",
            type(exc).__name__,
            exc_info=log.isEnabledFor(logging.DEBUG),
        )
        return JSONResponse(
            {
                "error": {
                    "type": "server_error",
                    "code": "internal_error",
                    "message": "internal error; see the bot's logs",
                }
            },
            status_code=500,
        )

    @app.get("/healthz", tags=["probes"])
    async def healthz() -> dict[str, str]:
        """The process is alive (liveness)."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["probes"])
    async def readyz() -> JSONResponse:
        """Settings loaded and a key present (readiness); names what is missing, never a value."""
        report = holder.readiness()
        if holder.current is not None and not holder.current.missing():
            problem = await stores.get(holder.current).check()
            if problem:
                report = {**report, "ready": False, "problems": [*holder.problems, problem]}
        return JSONResponse(report, status_code=200 if report["ready"] else 503)

    @app.post("/chat", response_model=ChatReply, tags=["conversations"])
    async def chat(request: ChatRequest, caller: Authorized) -> Response:
        """Send a message; the bot keeps the conversation. With ``stream``, Server-Sent Events:
        ``session``, then ``delta``s, then ``done`` (the full reply object) or ``error``."""
        if not request.stream:
            result = await service.turn(request.session_id, request.message, caller)
            return JSONResponse(result.as_json())
        events = await service.turn_stream(request.session_id, request.message, caller)
        return StreamingResponse(_chat_events(events), media_type="text/event-stream", headers=SSE_HEADERS)

    @app.get("/sessions/{session_id}", tags=["conversations"])
    async def get_session(session_id: SessionId, caller: Authorized) -> dict[str, Any]:
        """A session's history, oldest first, with each message's token count."""
        history = await _store().history(caller.session_key(session_id))
        if history is None:
            raise SessionNotFound(session_id)
        messages = [{"role": m.role, "content": m.content, "tokens": m.tokens} for m in history]
        return {"session_id": session_id, "messages": messages, "tokens": sum(m.tokens for m in history)}

    @app.delete("/sessions/{session_id}", status_code=204, tags=["conversations"])
    async def delete_session(session_id: SessionId, caller: Authorized) -> Response:
        """Reset: forget the session."""
        store, key = _store(), caller.session_key(session_id)
        async with store.lock(key):
            if not await store.delete(key):
                raise SessionNotFound(session_id)
        return Response(status_code=204)

    @app.post("/v1/chat/completions", tags=["openai"])
    async def completions(request: Request, caller: Authorized) -> Response:
        """OpenAI-compatible and stateless; the bot's system prompt always comes first, its model is
        used whatever the request names, and a client's system messages follow the bot's prompt."""
        try:
            body = json.loads(await request.body())
        except ValueError:
            raise BadRequest("the request body is not valid JSON", code="malformed_json") from None
        if not isinstance(body, dict):
            raise BadRequest("the request body must be a JSON object", code="invalid_body")
        settings = holder.require()
        params, prompt = service.completion_params(settings, body)
        headers = {
            "X-Kubechat-Prompt-Tokens": str(prompt.tokens),
            "X-Kubechat-Truncated": str(prompt.truncated).lower(),
        }
        ticket = await guard.admit(caller, settings, prompt.tokens, params)
        if not body.get("stream"):
            content = await ticket.guarded(upstream.complete_raw(settings, params))
            await ticket.settle_raw(content)
            return Response(content, media_type="application/json", headers=headers)
        stream = upstream.stream(settings, params)
        response = await ticket.guarded(stream.__aenter__())
        return StreamingResponse(
            _passthrough(stream, response, ticket),
            media_type="text/event-stream",
            headers={**SSE_HEADERS, **headers},
        )

    @app.get("/v1/models", tags=["openai"])
    async def models(_: Authorized) -> dict[str, Any]:
        """The one model this bot answers with, for tools that list models first."""
        settings = holder.require()
        return {
            "object": "list",
            "data": [
                {"id": settings.model, "object": "model", "created": int(time.time()), "owned_by": "kubechat"}
            ],
        }

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        """The chat page (static files, no build step)."""
        return FileResponse(STATIC_DIR / "index.html", headers=PAGE_HEADERS)

    @app.get("/info", tags=["page"])
    async def info() -> dict[str, Any]:
        """The bot's name and model, for the chat page; never a secret."""
        settings = holder.current
        return {
            "name": settings.bot_name if settings else None,
            "model": settings.model if settings else None,
            "ready": holder.readiness()["ready"],
            "auth_required": bool(settings and settings.access),
        }

    @app.get("/v1/usage", tags=["openai"])
    async def usage(caller: Authorized, identity: str | None = None) -> dict[str, Any]:
        """Tokens, cost and what is left per identity and window: the caller's own, or every identity's
        for the bot's owners (``access.owners``)."""
        return await usage_report(guard, holder.loaded(), caller, identity)

    app.mount("/static", PageFiles(directory=STATIC_DIR), name="static")
    return app


class PageFiles(StaticFiles):
    """The page's static files, with the page's security headers."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers.update(PAGE_HEADERS)
        return response


def _app_configuration(env: Mapping[str, str]) -> Source | None:
    """The App Configuration source the environment asks for; the Azure SDKs (~24 MB, a slow import)
    are loaded only then."""
    if not any(name.startswith("KUBECHAT_APPCONFIG_") for name in env):
        return None
    from chatbot_service import appconfig

    return appconfig.from_environ(env)


def _local_loader(env: Mapping[str, str], source: Source | None) -> Callable[[], Mapping[str, str]]:
    if source is None:
        return lambda: read_local(env)
    return lambda: read_local(env, app_configuration=source.values())


async def _chat_events(events: AsyncIterator[dict[str, Any]]) -> AsyncIterator[bytes]:
    async for event in events:
        if "delta" in event:
            yield sse("delta", event)
        elif "session_id" in event:
            yield sse("session", event)
        elif "done" in event:
            result: TurnResult = event["done"]
            yield sse("done", result.as_json())
        elif "error" in event:
            error: ChatError = event["error"]
            yield sse("error", {**error.body(), "status": error.status})


async def _passthrough(stream: Any, response: Any, ticket: Ticket) -> AsyncIterator[bytes]:
    """Forward the upstream's event stream byte for byte; a break mid-stream ends with an error event.
    The usage chunk (when the client asked for one) settles the reservation; without it, it stands."""
    usage = None
    try:
        async for chunk in response.aiter_bytes():
            if b'"usage"' in chunk:
                usage = stream_usage(chunk) or usage
            yield chunk
    except httpx2.HTTPError as exc:
        error = map_transport_error(exc)
        yield f"data: {json.dumps(error.body())}\n\n".encode()
    finally:
        await ticket.settle(usage)
        await stream.__aexit__(None, None, None)


class BodyLimit:
    """Refuse bodies that declare more than ``limit`` bytes before reading them."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            for name, value in scope["headers"]:
                if name == b"content-length" and value.isdigit() and int(value) > self.limit:
                    response = error_response(
                        _TooLarge(f"the request body is larger than {self.limit} bytes")
                    )
                    await response(scope, receive, send)
                    return
        await self.app(scope, receive, send)


class _TooLarge(ChatError):
    status = 413
    type = "invalid_request_error"
    code = "body_too_large"
