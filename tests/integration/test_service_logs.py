"""What the bot logs: the Azure SDKs' per-request lines only at debug (through the real SDKs against
the local Azure fakes), one error with its traceback for an unexpected exception, and a settings
reloader that is restarted and reported when it dies."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import httpx2
import pytest

from chatbot_service.app import create_app
from chatbot_service.logs import AZURE_CHATTY, configure
from tests.integration.conftest import API_KEY, BotFactory
from tests.support.fake_azure.world import azure_world
from tests.support.fake_openai import FakeOpenAI
from tests.support.servers import serving

HTTP_POLICY = "azure.core.pipeline.policies.http_logging_policy"


@pytest.fixture
def root_level() -> Iterator[Callable[[int], None]]:
    """Set the root level as ``kubechat serve --log-level`` would; restore every level afterwards."""
    root = logging.getLogger()
    saved = [root.level, *(logging.getLogger(n).level for n in (*AZURE_CHATTY, "httpx2"))]

    def set_level(level: int) -> None:
        root.setLevel(level)
        configure(logging.getLevelName(level).lower())

    yield set_level
    root.setLevel(saved[0])
    for name, level in zip((*AZURE_CHATTY, "httpx2"), saved[1:], strict=True):
        logging.getLogger(name).setLevel(level)


@pytest.mark.parametrize("level", [logging.INFO, logging.DEBUG])
def test_azure_sdk_http_logging_only_at_debug(
    level: int,
    root_level: Callable[[int], None],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    upstream: FakeOpenAI,
    start_bot: BotFactory,
) -> None:
    root_level(level)
    with azure_world(tmp_path, monkeypatch) as azure:
        azure.store.set("helpdesk:model", "gpt-4o-mini")
        azure.store.set("helpdesk:openai_api_key", API_KEY)
        env = {
            "OPENAI_BASE_URL": upstream.url,
            "KUBECHAT_BOT_NAME": "helpdesk",
            "KUBECHAT_APPCONFIG_ENDPOINT": azure.store.url,
            "KUBECHAT_APPCONFIG_REFRESH_INTERVAL": "1",
            "KUBECHAT_APPCONFIG_STARTUP_TIMEOUT": "1",
        }
        with start_bot(env) as bot:
            deadline = time.monotonic() + 20
            while httpx2.get(bot.url + "/readyz").status_code != 200:
                assert time.monotonic() < deadline, "the bot did not load its settings"
                time.sleep(0.1)
            time.sleep(1.5)  # at least one refresh
    chatty = [r for r in caplog.records if r.name.startswith(AZURE_CHATTY) and r.levelno < logging.WARNING]
    ours = [
        r for r in caplog.records if r.name == "kubechat.settings" and "settings loaded" in r.getMessage()
    ]
    assert ours, "kubechat's own info lines are logged at info and debug"
    if level == logging.INFO:
        assert chatty == [], [r.getMessage()[:80] for r in chatty[:3]]
    else:
        assert any(r.name == HTTP_POLICY for r in chatty)


def test_an_unexpected_error_is_logged_once_with_its_traceback(
    bot_env: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    app = create_app(environ=bot_env)

    async def broken() -> None:
        raise RuntimeError("a bug")

    app.add_api_route("/broken", broken)  # a route with a bug, as a bug would be
    with serving(app) as bot:
        response = httpx2.get(bot.url + "/broken")
    assert response.status_code == 500
    assert response.json()["error"] == {
        "message": "internal error; see the bot's logs",
        "type": "server_error",
        "param": None,
        "code": "internal_error",
    }
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, [r.getMessage() for r in errors]
    assert errors[0].exc_info is not None and "a bug" in str(errors[0].exc_info[1])
    assert "/broken" in errors[0].getMessage()


def test_a_dead_settings_reloader_is_restarted_and_reported(
    bot_env: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    calls = 0
    values = dict(bot_env)

    def load() -> Mapping[str, str]:
        nonlocal calls
        calls += 1
        if calls in (2, 3):
            raise RuntimeError("a source that broke unexpectedly")
        return {
            "openai_api_key": values["OPENAI_API_KEY"],
            "openai_base_url": values["OPENAI_BASE_URL"],
            "model": values.get("model", "gpt-4o-mini"),
        }

    app = create_app(environ={"KUBECHAT_RELOAD_INTERVAL": "0.05"}, load=load)
    with serving(app) as bot:
        deadline = time.monotonic() + 10
        while True:
            report = httpx2.get(bot.url + "/readyz").json()
            if report["reloader"]["restarts"] >= 1 and report["reloader"]["last_error"]:
                break
            assert time.monotonic() < deadline, report
            time.sleep(0.02)
        assert report["ready"] is True  # the last good settings still serve
        assert any("settings reloader failed" in p and "RuntimeError" in p for p in report["problems"])
        values["model"] = "gpt-4.1"  # the restarted loop reloads again
        while True:
            report = httpx2.get(bot.url + "/readyz").json()
            if report["model"] == "gpt-4.1" and report["reloader"]["last_error"] is None:
                break
            assert time.monotonic() < deadline, report
            time.sleep(0.02)
        assert report["problems"] == [] and report["reloader"]["restarts"] == 2
    logged = [r for r in caplog.records if "settings reloader failed" in r.getMessage()]
    assert len(logged) == 2 and all(r.exc_info for r in logged)
