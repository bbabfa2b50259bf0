"""The bot's browser surface: no third-party scripts, JSON routes take only JSON, other sites' pages
cannot use a bot through a visitor's browser unless allowed, no Host reflection. Over real HTTP, and in
real Chromium for what only a browser does (no-cors requests, preflights)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import TYPE_CHECKING

import httpx2
import pytest
from starlette.applications import Starlette
from starlette.responses import HTMLResponse
from starlette.routing import Route

from tests.integration.conftest import BotFactory
from tests.support.browser import chromium
from tests.support.fake_openai import FakeOpenAI
from tests.support.servers import ThreadedServer, serving

if TYPE_CHECKING:
    from playwright.sync_api import Browser

COMPLETION = {"messages": [{"role": "user", "content": "hi"}]}
JSON_FETCH = "fetch(url, {method: 'POST', body, headers: {'Content-Type': 'application/json'}})"
FIRST_CONTENT = ".then(r => r.json()).then(j => j.choices[0].message.content)"


def test_api_docs_are_off_by_default_and_the_schema_is_served(
    bot: ThreadedServer, start_bot: BotFactory, bot_env: dict[str, str]
) -> None:
    for path in ("/docs", "/redoc", "/docs/oauth2-redirect"):
        response = httpx2.get(bot.url + path)
        assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"
    assert "/v1/chat/completions" in httpx2.get(bot.url + "/openapi.json").json()["paths"]
    with start_bot(bot_env | {"KUBECHAT_API_DOCS": "true"}) as documented:
        assert httpx2.get(documented.url + "/docs").status_code == 200


@pytest.mark.parametrize("path", ["/chat", "/v1/chat/completions"])
@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", None],
)
def test_json_routes_take_only_json(
    bot: ThreadedServer, upstream: FakeOpenAI, path: str, content_type: str | None
) -> None:
    body = {"message": "hi"} if path == "/chat" else COMPLETION
    headers = {"content-type": content_type} if content_type else {}
    response = httpx2.post(bot.url + path, content=json.dumps(body).encode(), headers=headers)
    assert response.status_code == 415, response.text
    assert response.json()["error"]["code"] == "unsupported_media_type"
    assert upstream.requests == []
    ok = httpx2.post(
        bot.url + path,
        content=json.dumps(body).encode(),
        headers={"content-type": "application/json; charset=utf-8"},
    )
    assert ok.status_code == 200


@pytest.mark.parametrize(
    ("method", "path"), [("POST", "/v1/chat/completions"), ("GET", "/sessions/abc"), ("OPTIONS", "/chat")]
)
def test_other_origins_are_refused_unless_allowed(
    bot: ThreadedServer, start_bot: BotFactory, bot_env: dict[str, str], method: str, path: str
) -> None:
    evil = {"origin": "https://evil.example", "access-control-request-method": "POST"}
    refused = httpx2.request(method, bot.url + path, headers=evil, json=COMPLETION)
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "cross_origin_refused"
    assert "access-control-allow-origin" not in refused.headers
    own = {"origin": bot.url}
    assert httpx2.request(method, bot.url + path, headers=own, json=COMPLETION).status_code != 403
    with start_bot(
        bot_env | {"KUBECHAT_CORS_ORIGINS": "https://app.example, https://evil.example/"}
    ) as open_bot:
        allowed = httpx2.request(method, open_bot.url + path, headers=evil, json=COMPLETION)
        assert allowed.status_code != 403
        assert allowed.headers["access-control-allow-origin"] == "https://evil.example"


def test_an_allowed_origin_gets_cors_on_every_answer_and_others_vary_on_origin(
    bot: ThreadedServer, start_bot: BotFactory, bot_env: dict[str, str], upstream: FakeOpenAI
) -> None:
    """CORS sits outside the body limit (a 413 is readable by the allowed page) and answers
    preflights; answers to requests without ``Origin`` say ``Vary: Origin``,
    as Starlette's CORS makes them, though the edge layer skips it for them."""
    app = "https://app.example"
    with start_bot(bot_env | {"KUBECHAT_CORS_ORIGINS": app}) as open_bot:
        big = (b"x" * (64 << 10) for _ in range(40))  # 2.5 MiB, chunked: over the 1 MiB limit
        headers = {"origin": app, "content-type": "application/json"}
        refused = httpx2.post(open_bot.url + "/chat", content=big, headers=headers, timeout=30)
        assert refused.status_code == 413 and refused.json()["error"]["code"] == "body_too_large"
        assert refused.headers["access-control-allow-origin"] == app
        preflight = httpx2.options(
            open_bot.url + "/v1/chat/completions",
            headers={"origin": app, "access-control-request-method": "POST"},
        )
        assert preflight.status_code == 200, preflight.text
        assert "POST" in preflight.headers["access-control-allow-methods"]
        answered = httpx2.post(
            open_bot.url + "/v1/chat/completions", json=COMPLETION, headers={"origin": app}
        )
        assert answered.status_code == 200
        assert answered.headers["access-control-allow-origin"] == app
        assert answered.headers["vary"] == "Origin"
    assert upstream.requests and len(upstream.requests) == 1
    for response in (
        httpx2.get(bot.url + "/healthz"),
        httpx2.post(bot.url + "/v1/chat/completions", json=COMPLETION),
    ):
        assert response.headers.get_list("vary") == ["Origin"], response.headers
        assert "access-control-allow-origin" not in response.headers


def test_cross_site_fetches_without_origin_are_refused_but_links_work(bot: ThreadedServer) -> None:
    fetch = {"sec-fetch-site": "cross-site", "sec-fetch-mode": "no-cors"}
    assert httpx2.get(bot.url + "/info", headers=fetch).status_code == 403
    link = {"sec-fetch-site": "cross-site", "sec-fetch-mode": "navigate"}
    assert httpx2.get(bot.url + "/", headers=link).status_code == 200


def test_no_redirect_reflects_the_host(bot: ThreadedServer) -> None:
    for path in ("/chat/", "/v1/models/", "/healthz/", "/static"):
        response = httpx2.get(bot.url + path, headers={"host": "evil.example"})
        assert "location" not in response.headers, (path, response.headers)
        assert "evil.example" not in response.text


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as launched:
        yield launched


def test_a_cross_site_page_cannot_use_the_bot_in_a_real_browser(
    browser: Browser, start_bot: BotFactory, bot_env: dict[str, str], upstream: FakeOpenAI
) -> None:
    """A page on http://localhost:<port> (another site than http://127.0.0.1:<bot port>) tries a
    no-cors text/plain POST (no preflight) and a JSON fetch (preflighted); neither reaches the model,
    until the bot allows that origin."""
    page_app = Starlette(routes=[Route("/", lambda _: HTMLResponse("<html><body>evil</body></html>"))])
    with serving(page_app) as site, start_bot(bot_env) as bot:
        evil_origin = f"http://localhost:{site.port}"
        context = browser.new_context()
        try:
            page = context.new_page()
            page.goto(evil_origin + "/")
            target = bot.url + "/v1/chat/completions"
            body = json.dumps(COMPLETION)
            page.evaluate(
                "([url, body]) => fetch(url, {method: 'POST', mode: 'no-cors', body,"
                " headers: {'Content-Type': 'text/plain'}}).catch(() => null)",
                [target, body],
            )
            outcome = page.evaluate(
                f"([url, body]) => {JSON_FETCH}.then(r => 'answered ' + r.status, e => 'blocked')",
                [target, body],
            )
            assert outcome == "blocked"
            assert upstream.requests == []
        finally:
            context.close()
        with start_bot(bot_env | {"KUBECHAT_CORS_ORIGINS": evil_origin}) as open_bot:
            context = browser.new_context()
            try:
                page = context.new_page()
                page.goto(evil_origin + "/")
                reply = page.evaluate(
                    f"([url, body]) => {JSON_FETCH}{FIRST_CONTENT}",
                    [open_bot.url + "/v1/chat/completions", json.dumps(COMPLETION)],
                )
                assert reply == "2 messages; last: hi"
            finally:
                context.close()
