from __future__ import annotations

from pathlib import Path

import pytest

from chatbot_service.settings import Secret, SettingsError, parse_settings
from chatbot_service.sources import from_environ, read_config_dir, read_local


def test_defaults_and_parsed_values() -> None:
    s = parse_settings(
        {"model": "gpt-4", "temperature": "0.5", "max_reply_tokens": "200", "openai_api_key": "sk-1"}
    )
    assert s.model == "gpt-4" and s.temperature == 0.5 and s.max_reply_tokens == 200
    assert s.budget.context_tokens == 8192 and s.budget.prompt_tokens == 8192 - 200
    assert s.openai_api_key == Secret("sk-1")
    assert parse_settings({}).temperature is None
    assert parse_settings({"max_context_tokens": "4000"}).budget.context_tokens == 4000


def test_every_bad_key_is_named_at_once() -> None:
    with pytest.raises(SettingsError) as info:
        parse_settings({"temperature": "3", "max_reply_tokens": "many", "openai_base_url": "ftp://x"})
    text = str(info.value)
    assert "temperature: must be between 0 and 2 (got '3')" in text
    assert "max_reply_tokens: must be a whole number" in text
    assert "openai_base_url: must be an http:// or https:// URL" in text


def test_secret_values_never_appear_in_errors_or_reprs() -> None:
    with pytest.raises(SettingsError) as info:
        parse_settings({"openai_api_key": "   "})
    assert "openai_api_key: must not be empty" in str(info.value)
    s = parse_settings({"openai_api_key": "sk-very-secret"})
    assert "sk-very-secret" not in repr(s) and "sk-very-secret" not in str(s)


def test_reply_reserve_must_leave_room_for_the_prompt() -> None:
    with pytest.raises(SettingsError, match="max_reply_tokens: must be smaller than the context window"):
        parse_settings({"model": "gpt-4", "max_reply_tokens": "9000"})


def test_unknown_keys_are_ignored_and_reported() -> None:
    assert parse_settings({"colour": "blue"}).ignored_keys == ("colour",)


def test_environment_names() -> None:
    env = {
        "OPENAI_API_KEY": "sk-a",
        "OPENAI_BASE_URL": "http://x/v1",
        "KUBECHAT_MODEL": "gpt-4",
        "HOME": "/root",
        "KUBECHAT_CONFIG_DIR": "/nowhere",
    }
    assert from_environ(env) == {"openai_api_key": "sk-a", "openai_base_url": "http://x/v1", "model": "gpt-4"}


def test_mounted_files_win_over_the_environment(tmp_path: Path) -> None:
    config = tmp_path / "config"
    (config / "..2026_11_24").mkdir(parents=True)
    (config / "model").write_text("gpt-4o")
    (config / "..data").symlink_to(config / "..2026_11_24")
    key = tmp_path / "key"
    key.write_text("sk-from-file\n")
    env = {
        "KUBECHAT_MODEL": "gpt-4",
        "OPENAI_API_KEY": "sk-env",
        "KUBECHAT_TEMPERATURE": "1",
        "KUBECHAT_CONFIG_DIR": str(config),
        "KUBECHAT_OPENAI_API_KEY_FILE": str(key),
    }
    assert read_config_dir(config) == {"model": "gpt-4o"}
    values = read_local(env, {"temperature": "0.2", "model": "gpt-4.1"})
    assert values == {"model": "gpt-4o", "openai_api_key": "sk-from-file\n", "temperature": "0.2"}
    assert parse_settings(values).openai_api_key == Secret("sk-from-file")


def test_azure_openai_settings_pick_the_provider_and_need_only_a_deployment() -> None:
    settings = parse_settings(
        {"azure_openai_endpoint": "https://contoso.openai.azure.com/", "model": "gpt-4o-mini"}
    )
    assert settings.provider == "azure" and settings.azure_openai_api_version == "v1"
    assert settings.azure_openai_endpoint == "https://contoso.openai.azure.com"
    assert settings.missing() == ["azure_openai_deployment"]  # no OpenAI key needed: Entra ID
    keyed = parse_settings(
        {
            "azure_openai_endpoint": "https://contoso.openai.azure.com",
            "azure_openai_deployment": "chat-prod",
            "azure_openai_api_version": "2024-10-21",
            "azure_openai_api_key": "azure-key-0123456789",
        }
    )
    assert keyed.missing() == [] and "azure-key" not in repr(keyed)
    assert parse_settings({}).provider == "openai"


def test_bad_azure_openai_settings_are_named_and_the_key_is_not_echoed() -> None:
    with pytest.raises(SettingsError) as raised:
        parse_settings(
            {
                "azure_openai_endpoint": "http://contoso.openai.azure.com",
                "azure_openai_deployment": "bad name/x",
                "azure_openai_api_version": "latest",
                "azure_openai_api_key": " ",
            }
        )
    problems = "; ".join(raised.value.problems)
    for key in ("azure_openai_endpoint", "azure_openai_deployment", "azure_openai_api_version"):
        assert key in problems
    assert (
        "azure_openai_api_key: must not be empty" in problems and "got" not in problems.split("api_key")[-1]
    )


def test_token_counting_says_which_encoding_and_when_it_is_a_guess() -> None:
    known = parse_settings({"model": "gpt-4-0613"})
    assert known.token_counting == "cl100k_base (the encoding of gpt-4-0613)"
    azure = parse_settings(
        {"model": "chat-prod", "azure_openai_endpoint": "https://contoso.openai.azure.com"}
    )
    assert azure.token_counting.startswith("o200k_base (a guess: 'chat-prod' is not a model")
    assert "the model behind the Azure deployment" in azure.token_counting
    pinned = parse_settings({"model": "chat-prod", "token_encoding": "cl100k_base"})
    assert pinned.token_counting == "cl100k_base (set by token_encoding)"
