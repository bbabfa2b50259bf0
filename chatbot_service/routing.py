"""How every route reads its request and how failures become answers. Edge: FastAPI plumbing.

JSON bodies are parsed strictly (``validation.parse_json``) and only when sent as JSON; every error,
the framework's own 404/405/validation errors included, leaves in OpenAI's shape, and a 405 names every
method the path takes.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from chatbot_service.errors import BadRequest, ChatError, UnsupportedMediaType
from chatbot_service.validation import parse_json, validation_error


def error_response(error: ChatError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


class JSONRequest(Request):
    """A request whose JSON body is read strictly (see ``validation.parse_json``)."""

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = parse_json(await self.body())
        return self._json


class JSONRoute(APIRoute):
    """Routes that take a JSON body take only ``application/json`` (or ``+json``): a body a browser
    may send cross-site without asking (``text/plain``, forms) is refused before it is read."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        if self.body_field is None:
            return handler

        async def strict(request: Request) -> Response:
            media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
            if media_type != "application/json" and not media_type.endswith("+json"):
                raise UnsupportedMediaType(
                    f"send the body as application/json (got {media_type[:60] or 'no content type'})"
                )
            return await handler(JSONRequest(request.scope, request.receive))

        return strict


def allowed_methods(app: FastAPI, request: Request) -> list[str]:
    """Every method some route takes at this path (Starlette names only the first route's)."""
    methods: set[str] = set()
    for route in app.router.routes:
        match, _ = route.matches(request.scope)
        if match is not Match.NONE:
            methods |= getattr(route, "methods", None) or set()
    return sorted(methods)


def install_error_handlers(app: FastAPI, seen: Callable[[ChatError], object] = lambda _: None) -> None:
    """OpenAI-shaped answers for every error; ``seen`` is told of each ``ChatError`` (for the metrics)."""

    @app.exception_handler(ChatError)
    async def on_chat_error(_: Request, exc: ChatError) -> JSONResponse:
        seen(exc)
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def on_invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = exc.errors()
        for problem in problems:
            if problem.get("type") == "json_invalid":
                reason = (problem.get("ctx") or {}).get("error", "")
                return error_response(
                    BadRequest(f"the request body is not valid JSON: {reason}", code="malformed_json")
                )
        return error_response(validation_error(problems))

    @app.exception_handler(StarletteHTTPException)
    async def on_http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        headers = dict(getattr(exc, "headers", None) or {})
        message = str(exc.detail)
        if exc.status_code == 405:
            allowed = allowed_methods(app, request)
            headers["Allow"] = ", ".join(allowed)
            message = f"{request.method} is not allowed here; use {', '.join(allowed)}"
        body = {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}}
        return JSONResponse(body, status_code=exc.status_code, headers=headers)


def install_openapi(app: FastAPI) -> None:
    """The OpenAPI document without FastAPI's 422 responses: validation errors here are 400s in
    OpenAI's shape, and each route already lists them."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = generate()
            for item in schema.get("paths", {}).values():
                for operation in item.values():
                    operation.get("responses", {}).pop("422", None)
            for name in ("HTTPValidationError", "ValidationError"):
                schema.get("components", {}).get("schemas", {}).pop(name, None)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
