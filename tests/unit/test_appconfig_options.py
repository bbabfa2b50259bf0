"""Which App Configuration keys and labels a bot reads, from its environment; and how SDK failures
are described. No network."""

from __future__ import annotations

from typing import ClassVar

import pytest
from azure.core.exceptions import HttpResponseError, ServiceRequestError

from chatbot_service.appconfig import from_environ
from chatbot_service.appconfig_options import NO_LABEL, parse_connection_string, parse_options
from chatbot_service.azure_errors import describe
from chatbot_service.settings import SettingsError

ENDPOINT = {"KUBECHAT_APPCONFIG_ENDPOINT": "https://kubechat.azconfig.io/", "KUBECHAT_BOT_NAME": "helpdesk"}


def test_not_configured_means_no_source() -> None:
    assert parse_options({"KUBECHAT_BOT_NAME": "helpdesk"}) is None
    assert from_environ({"KUBECHAT_BOT_NAME": "helpdesk"}) is None


def test_defaults_from_the_bot_name() -> None:
    options = parse_options(ENDPOINT)
    assert options is not None
    assert options.endpoint == "https://kubechat.azconfig.io" and options.where == options.endpoint
    assert options.key_prefix == "helpdesk:" and options.label is None
    assert options.refresh_interval == 30 and options.startup_timeout == 30
    assert options.verify_challenge_resource is True and options.watch_key is None
    assert options.selectors == [("helpdesk:*", NO_LABEL)]


def test_a_label_overrides_unlabelled_defaults_and_the_sentinel_is_watched_under_it() -> None:
    options = parse_options(
        ENDPOINT
        | {
            "KUBECHAT_APPCONFIG_KEY_PREFIX": "bots/helpdesk/",
            "KUBECHAT_APPCONFIG_LABEL": "prd",
            "KUBECHAT_APPCONFIG_SENTINEL_KEY": "sentinel",
            "KUBECHAT_APPCONFIG_REFRESH_INTERVAL": "2.5",
            "KUBECHAT_APPCONFIG_STARTUP_TIMEOUT": "0",
            "KUBECHAT_KEYVAULT_VERIFY_CHALLENGE_RESOURCE": "False",
        }
    )
    assert options is not None
    # later selectors win in the provider: the label's values over the unlabelled ones
    assert options.selectors == [("bots/helpdesk/*", NO_LABEL), ("bots/helpdesk/*", "prd")]
    assert options.watch_key == ("bots/helpdesk/sentinel", "prd")
    assert options.refresh_interval == 2.5 and options.startup_timeout == 0
    assert options.verify_challenge_resource is False


def test_connection_strings_from_a_file_or_the_environment_never_shown() -> None:
    secret = "c2VjcmV0LXNlY3JldC1zZWNyZXQ="
    text = f"Endpoint=https://kubechat.azconfig.io;Id=abc;Secret={secret}"
    from_file = parse_options(
        {"KUBECHAT_APPCONFIG_CONNECTION_STRING_FILE": "/var/run/appconfig/cs", "KUBECHAT_BOT_NAME": "b"}
    )
    assert from_file is not None and from_file.where == "(connection string from /var/run/appconfig/cs)"
    local = parse_options({"KUBECHAT_APPCONFIG_CONNECTION_STRING": text, "KUBECHAT_BOT_NAME": "b"})
    assert local is not None and local.connection_string is not None
    assert secret not in repr(local) and local.connection_string.reveal() == text
    endpoint, ident, hidden = parse_connection_string(text + "\n")
    assert (endpoint, ident, hidden.reveal()) == ("https://kubechat.azconfig.io", "abc", secret)
    with pytest.raises(ValueError, match="not of the form") as info:
        parse_connection_string(f"Endpoint=kubechat;Secret={secret}")
    assert secret not in str(info.value)


@pytest.mark.parametrize(
    ("env", "problem"),
    [
        ({"KUBECHAT_APPCONFIG_ENDPOINT": "https://x.azconfig.io"}, "KUBECHAT_APPCONFIG_KEY_PREFIX: required"),
        (ENDPOINT | {"KUBECHAT_APPCONFIG_CONNECTION_STRING": "x"}, "not both"),
        (ENDPOINT | {"KUBECHAT_APPCONFIG_ENDPOINT": "http://x"}, "must be an https:// URL"),
        (ENDPOINT | {"KUBECHAT_APPCONFIG_LABEL": "prd,dev"}, "KUBECHAT_APPCONFIG_LABEL: must not contain"),
        (ENDPOINT | {"KUBECHAT_APPCONFIG_KEY_PREFIX": "bot*"}, "KUBECHAT_APPCONFIG_KEY_PREFIX: must not"),
        (ENDPOINT | {"KUBECHAT_APPCONFIG_SENTINEL_KEY": "s*"}, "one key, not a filter"),
        (ENDPOINT | {"KUBECHAT_APPCONFIG_REFRESH_INTERVAL": "0.5"}, "REFRESH_INTERVAL: must be a number"),
        (ENDPOINT | {"KUBECHAT_APPCONFIG_STARTUP_TIMEOUT": "soon"}, "STARTUP_TIMEOUT: must be a number"),
        (ENDPOINT | {"KUBECHAT_KEYVAULT_VERIFY_CHALLENGE_RESOURCE": "maybe"}, "must be true or false"),
    ],
)
def test_bad_options_are_named(env: dict[str, str], problem: str) -> None:
    with pytest.raises(SettingsError, match=problem.replace("*", r"\*")):
        parse_options(env)
    source = from_environ(env)  # the bot stays up, not ready, saying why
    assert source is not None
    with pytest.raises(SettingsError, match=problem.replace("*", r"\*")):
        source.values()


class _Response:
    request = None
    status_code = 404
    reason = "Not Found"
    headers: ClassVar[dict[str, str]] = {}
    content_type = "application/json"

    def text(self) -> str:
        return '{"error": {"code": "SecretNotFound", "message": "A secret with (name/id) x was not found."}}'


def test_failures_are_described_in_one_line() -> None:
    error = HttpResponseError(response=_Response())
    assert describe(error) == "HTTP 404 Not Found (SecretNotFound): A secret with (name/id) x was not found."
    refused = ServiceRequestError("<urllib3 object at 0x1>: Failed to establish a new connection")
    refused.__cause__ = ConnectionRefusedError(111, "Connection refused")
    assert describe(refused) == "cannot connect: ConnectionRefusedError: [Errno 111] Connection refused"
    timeout = TimeoutError("The provider timed out while attempting to load.", [ValueError("x"), refused])
    assert describe(timeout) == describe(refused)
    assert describe(ValueError("first\nsecond")) == "ValueError: first"
