"""/openapi.json documents every route's request and response bodies, and 405s name every method."""

from __future__ import annotations

from typing import Any

import httpx2
import pytest

from tests.support.servers import ThreadedServer


def resolve(doc: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = doc["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


def test_every_route_documents_its_bodies(bot: ThreadedServer) -> None:
    doc = httpx2.get(bot.url + "/openapi.json").json()
    expected = {
        ("/chat", "post"),
        ("/v1/chat/completions", "post"),
        ("/sessions/{session_id}", "get"),
        ("/sessions/{session_id}", "delete"),
        ("/v1/models", "get"),
        ("/healthz", "get"),
        ("/readyz", "get"),
        ("/info", "get"),
        ("/metrics", "get"),
        ("/v1/usage", "get"),
        ("/v1/responses", "post"),
        ("/v1/responses/{response_id}", "get"),
        ("/v1/responses/{response_id}", "delete"),
        ("/v1/responses/{response_id}/input_items", "get"),
        ("/v1/conversations", "post"),
        ("/v1/conversations/{conversation_id}", "get"),
        ("/v1/conversations/{conversation_id}", "post"),
        ("/v1/conversations/{conversation_id}", "delete"),
        ("/v1/conversations/{conversation_id}/items", "get"),
        ("/v1/conversations/{conversation_id}/items", "post"),
        ("/v1/conversations/{conversation_id}/items/{item}", "get"),
        ("/v1/conversations/{conversation_id}/items/{item}", "delete"),
    }
    found = {(path, method) for path, item in doc["paths"].items() for method in item}
    assert found == expected
    for path, method in expected:
        operation = doc["paths"][path][method]
        if method == "post":
            body = operation["requestBody"]["content"]["application/json"]["schema"]
            assert resolve(doc, body)["properties"], (path, body)
        for status, response in operation["responses"].items():
            if status == "204":
                continue
            assert "content" in response, (path, method, status)
            if status.startswith(("4", "5")) and path != "/readyz":
                error = resolve(doc, response["content"]["application/json"]["schema"])
                assert set(resolve(doc, error["properties"]["error"])["properties"]) == {
                    "message",
                    "type",
                    "param",
                    "code",
                }
    completion = resolve(doc, {"$ref": "#/components/schemas/CompletionRequest"})
    temperature = completion["properties"]["temperature"]["anyOf"][0]
    assert temperature == {"type": "number", "minimum": 0.0, "maximum": 2.0}
    assert "text/event-stream" in doc["paths"]["/v1/chat/completions"]["post"]["responses"]["200"]["content"]


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("PUT", "/sessions/abc", "DELETE, GET"),
        ("POST", "/sessions/abc", "DELETE, GET"),
        ("GET", "/chat", "POST"),
        ("DELETE", "/v1/chat/completions", "POST"),
        ("POST", "/healthz", "GET"),
    ],
)
def test_405_names_every_allowed_method(bot: ThreadedServer, method: str, path: str, allow: str) -> None:
    response = httpx2.request(method, bot.url + path)
    assert response.status_code == 405 and response.headers["allow"] == allow
    assert response.json()["error"]["code"] == "method_not_allowed"
