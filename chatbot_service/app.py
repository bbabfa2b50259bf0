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
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Depends, FastAPI, Path, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.types import Scope

from chatbot_service import __version__, responses_routes
from chatbot_service.api_models import (
    EVENT_STREAM,
    SESSION_ID_PATTERN,
    BotInfo,
    ChatCompletion,
    ChatReply,
    ChatRequest,
    CompletionRequest,
    Health,
    ModelList,
    Readiness,
    SessionHistory,
    errors,
)
from chatbot_service.errors import ChatError, NotFound, SessionNotFound
from chatbot_service.guard import Caller, Guard
from chatbot_service.holder import SettingsHolder
from chatbot_service.memory import memory_limit, release_freed, store_budget
from chatbot_service.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from chatbot_service.metrics import Metrics
from chatbot_service.middleware import Edge
from chatbot_service.observe import Observer
from chatbot_service.recorder import ENV as METRICS_ENV
from chatbot_service.recorder import NoMetrics, Recorder, metrics_on
from chatbot_service.relay import Relay, RelayResponse
from chatbot_service.routing import JSONRoute, install_error_handlers, install_openapi
from chatbot_service.service import ChatService, TurnResult
from chatbot_service.sessions import SessionStore, Stores
from chatbot_service.sources import read_local
from chatbot_service.sse import KEEPALIVE
from chatbot_service.tokens import get_encoding
from chatbot_service.tracing import tracer_from_environ
from chatbot_service.upstream import Upstream
from chatbot_service.usage import usage_report

if TYPE_CHECKING:
    from chatbot_service.appconfig import Source

log = logging.getLogger("kubechat.http")

MAX_BODY_BYTES = 1 << 20
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


SessionId = Annotated[str, Path(pattern=SESSION_ID_PATTERN)]


async def _authorized(request: Request) -> Caller:
    """Every route that talks to the model or to sessions: who calls (401/403 otherwise)."""
    holder: SettingsHolder = request.app.state.holder
    guard: Guard = request.app.state.guard
    caller = await guard.authenticate(holder.current, request.headers.get("authorization"))
    request.state.kubechat_caller = caller  # its x-ratelimit-* headers go on the response
    return caller


Authorized = Annotated[Caller, Depends(_authorized)]


def sse(event: str, data: Mapping[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def create_app(
    environ: Mapping[str, str] | None = None, load: Callable[[], Mapping[str, str]] | None = None
) -> FastAPI:
    """Build the app; settings come from ``load`` (default: the environment, Azure App Configuration
    when the environment names a store, and mounted files, in that order of precedence)."""
    env = dict(os.environ if environ is None else environ)
    source = None if load else _app_configuration(env)
    # Chosen once: with metrics off no instrument exists and NoMetrics takes every record (recorder.py).
    metrics = Metrics() if metrics_on(env) else None
    recorder: Recorder = metrics or NoMetrics()
    tracing = tracer_from_environ(env)
    observer = Observer(recorder, tracing[0] if tracing else None)
    holder = SettingsHolder(load or _local_loader(env, source), on_reload=recorder.record_reload)
    holder.reload()
    stores = Stores(store_budget(memory_limit(env)), metrics)
    upstream = Upstream()
    if holder.current is not None:
        # the provider and its HTTP client (its SSL context loads the CA bundle) now, as the app is
        # built, not on the first request; nor in the lifespan, where it would delay the server's start
        upstream.api(holder.current)
    guard = Guard(stores)
    service = ChatService(holder, stores, upstream, observer, guard)
    reload_interval = float(env.get("KUBECHAT_RELOAD_INTERVAL", "5"))

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if source is not None:
            source.start(on_loaded=holder.reload)
        if holder.current is not None:  # load the tokenizer now, not on the first user's request (~0.3 s)
            get_encoding(holder.current.model_info.encoding)
        release_freed()
        reloader = asyncio.create_task(holder.supervise(reload_interval))
        try:
            yield
        finally:
            reloader.cancel()
            if source is not None:
                source.close()
            await upstream.aclose()
            await stores.aclose()
            if tracing:
                await asyncio.to_thread(tracing[1])  # flush the spans still queued

    def _store() -> SessionStore:
        return stores.get(holder.loaded())

    # Swagger UI and ReDoc load their scripts and fonts from public CDNs: a third party's script on
    # the bot's origin, and broken where clusters are air-gapped. Off unless asked for; /openapi.json
    # is always served.
    docs = env.get("KUBECHAT_API_DOCS", "").strip().lower() in ("1", "true", "yes", "on")
    origins = frozenset(
        o.strip().rstrip("/") for o in env.get("KUBECHAT_CORS_ORIGINS", "").split(",") if o.strip()
    )
    app = FastAPI(
        title="kubechat bot",
        version=__version__,
        lifespan=lifespan,
        description=(
            "One chat bot: conversations kept server-side at /chat; OpenAI-compatible /v1/chat/completions."
        ),
        docs_url="/docs" if docs else None,
        redoc_url="/redoc" if docs else None,
        redirect_slashes=False,  # a slash redirect would be built from the Host header
    )
    app.router.route_class = JSONRoute
    app.state.service = service
    app.state.holder = holder
    app.state.metrics = metrics
    app.state.guard = guard
    # One edge layer (``middleware.Edge``): metrics, the last guard, same origin, CORS (Starlette's),
    # the body limit and the caller's headers, in that order, outermost first.
    app.add_middleware(
        Edge,
        metrics=metrics,
        limit=MAX_BODY_BYTES,
        allowed=origins,
        allow_methods=["GET", "POST", "DELETE"],
        allow_headers=["Content-Type", "Authorization"],
        expose_headers=["X-Kubechat-Prompt-Tokens", "X-Kubechat-Truncated", "Retry-After"],
    )

    install_error_handlers(app, seen=recorder.count_refusal)
    install_openapi(app)

    @app.get("/healthz", tags=["probes"], response_model=Health)
    async def healthz() -> dict[str, str]:
        """The process is alive (liveness)."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["probes"], response_model=Readiness, responses={503: {"model": Readiness}})
    async def readyz() -> JSONResponse:
        """Settings loaded and a key present (readiness); names what is missing, never a value."""
        report = holder.readiness()
        if holder.current is not None and not holder.current.missing():
            problems = [await stores.get(holder.current).check(), upstream.problem(holder.current)]
            found = [problem for problem in problems if problem]
            if found:
                report = {**report, "ready": False, "problems": [*holder.problems, *found]}
        return JSONResponse(report, status_code=200 if report["ready"] else 503)

    @app.post(
        "/chat",
        response_model=ChatReply,
        tags=["conversations"],
        responses={
            200: {"content": EVENT_STREAM},
            **errors(400, 401, 403, 404, 409, 413, 415, 429, 502, 503, 504),
        },
    )
    async def chat(request: ChatRequest, caller: Authorized) -> Response:
        """Send a message; the bot keeps the conversation. With ``stream``, Server-Sent Events:
        ``session``, then ``delta``s, then ``done`` (the full reply object) or ``error``."""
        if not request.stream:
            result = await service.turn(request.session_id, request.message, caller)
            return JSONResponse(result.as_json())
        relay, events = await service.turn_stream(request.session_id, request.message, caller)
        return RelayResponse(relay, _chat_events(events), {})

    @app.get(
        "/sessions/{session_id}",
        tags=["conversations"],
        response_model=SessionHistory,
        responses=errors(400, 401, 403, 404),
    )
    async def get_session(session_id: SessionId, caller: Authorized) -> dict[str, Any]:
        """A session's history, oldest first, with each message's token count."""
        history = await _store().history(caller.session_key(session_id))
        if history is None:
            raise SessionNotFound(session_id)
        messages = [{"role": m.role, "content": m.content, "tokens": m.tokens} for m in history]
        return {"session_id": session_id, "messages": messages, "tokens": sum(m.tokens for m in history)}

    @app.delete(
        "/sessions/{session_id}",
        status_code=204,
        tags=["conversations"],
        response_class=Response,
        responses=errors(400, 401, 403, 404),
    )
    async def delete_session(session_id: SessionId, caller: Authorized) -> Response:
        """Reset: forget the session."""
        store, key = _store(), caller.session_key(session_id)
        async with store.lock(key):
            if not await store.delete(key):
                raise SessionNotFound(session_id)
        return Response(status_code=204)

    @app.post(
        "/v1/chat/completions",
        tags=["openai"],
        response_model=ChatCompletion,
        responses={200: {"content": EVENT_STREAM}, **errors(400, 401, 403, 413, 415, 429, 502, 503, 504)},
    )
    async def completions(request: CompletionRequest, caller: Authorized) -> Response:
        """OpenAI-compatible and stateless; the bot's system prompt always comes first, its model is
        used whatever the request names, and a client's system messages follow the bot's prompt."""
        settings = holder.require()
        params, prompt = service.completion_params(settings, request)
        headers = {
            "X-Kubechat-Prompt-Tokens": str(prompt.tokens),
            "X-Kubechat-Truncated": str(prompt.truncated).lower(),
        }
        if request.stream_options is not None:
            params["stream_options"] = request.stream_options.model_dump(exclude_none=True)
        ticket = await guard.admit(caller, settings, prompt.tokens, params)
        turn = service.start_turn(settings, None, prompt, caller)
        resources = contextlib.AsyncExitStack()
        try:
            if not request.stream:
                content = await ticket.guarded(upstream.complete_raw(settings, params))
                answer = _json_object(content)  # parsed once, for the limits and the metrics
                usage = answer.get("usage") if answer else None
                await ticket.settle(usage if isinstance(usage, dict) else None)
                turn.answered(answer)
                turn.served()
                return Response(content, media_type="application/json", headers=headers)
            opened = resources.enter_async_context(upstream.stream(settings, params))
            stream = await ticket.guarded(opened)
        except ChatError as exc:
            turn.failed(exc)
            raise
        relay = Relay(stream, resources, settings.stream_keepalive, turn, ticket)
        return RelayResponse(relay, _passthrough(relay), headers)

    @app.get("/v1/models", tags=["openai"], response_model=ModelList, responses=errors(401, 403, 503))
    async def models(_: Authorized) -> dict[str, Any]:
        """The one model this bot answers with, for tools that list models first."""
        settings = holder.require()
        return {
            "object": "list",
            "data": [
                {"id": settings.model, "object": "model", "created": int(time.time()), "owned_by": "kubechat"}
            ],
        }

    @app.get(
        "/metrics",
        tags=["probes"],
        response_class=Response,
        responses={
            200: {"content": {"text/plain": {"schema": {"type": "string"}}}},
            **errors(404),
        },
    )
    async def metrics_endpoint() -> Response:
        """Prometheus metrics: the OpenTelemetry GenAI conventions (v1.41.0) and kubechat's own; 404
        when the bot's metrics are off (``KUBECHAT_METRICS=off``)."""
        if metrics is None:
            raise NotFound(f"this bot's metrics are off ({METRICS_ENV}=off): there is nothing to scrape")
        return Response(metrics.exposition(), media_type=METRICS_CONTENT_TYPE)

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        """The chat page (static files, no build step)."""
        return FileResponse(STATIC_DIR / "index.html", headers=PAGE_HEADERS)

    @app.get("/info", tags=["page"], response_model=BotInfo)
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

    app.include_router(responses_routes.router(service, _authorized, JSONRoute))
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


async def _chat_events(events: AsyncIterator[dict[str, Any]]) -> AsyncGenerator[bytes, None]:
    async for event in events:
        if "deltas" in event:
            yield b"".join(sse("delta", {"delta": delta}) for delta in event["deltas"])
        elif "keepalive" in event:
            yield KEEPALIVE
        elif "session_id" in event:
            yield sse("session", event)
        elif "done" in event:
            result: TurnResult = event["done"]
            yield sse("done", result.as_json())
        elif "error" in event:
            error: ChatError = event["error"]
            yield sse("error", {**error.body(), "status": error.status})


async def _passthrough(relay: Relay) -> AsyncGenerator[bytes, None]:
    """The upstream's events, each forwarded whole once it is complete; a stream that ends badly
    ends with one ``data: {"error": ...}`` event (which OpenAI SDKs raise as an APIError)."""
    try:
        async for batch in relay.events():
            yield KEEPALIVE if batch is None else b"".join(event.frame for event in batch)
    except ChatError as exc:
        yield b"data: " + json.dumps(exc.body(), separators=(",", ":")).encode() + b"\n\n"


def _json_object(content: bytes) -> dict[str, Any] | None:
    try:
        body = json.loads(content)
    except ValueError:
        return None
    return body if isinstance(body, dict) else None
