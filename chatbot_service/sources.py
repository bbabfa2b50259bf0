"""Where settings come from on this process: the environment and mounted files. Edge: reads files.

Layers, later wins: the environment (local runs), then Azure App Configuration (added by
``appconfig``), then ``KUBECHAT_CONFIG_DIR`` (the ChatBot's explicit spec, mounted by the operator as
a ConfigMap, one file per canonical key), then ``KUBECHAT_OPENAI_API_KEY_FILE`` (a mounted Secret), and
``KUBECHAT_API_KEYS_DIR``: the bot's client keys, a mounted Secret with one file per client (the file's
name is the client's identity, its content the key), never an environment variable.
Files are re-read on every reload, so a rotated Secret or an edited ConfigMap reaches a running pod
without a restart.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

from chatbot_service.settings import KNOWN_KEYS

ENV_PREFIX = "KUBECHAT_"
#: The OpenAI SDK's own variable names, honoured as every OpenAI tool does.
ENV_ALIASES = {"OPENAI_API_KEY": "openai_api_key", "OPENAI_BASE_URL": "openai_base_url"}


def from_environ(environ: Mapping[str, str]) -> dict[str, str]:
    """Canonical settings from environment variables (``KUBECHAT_MODEL`` -> ``model``)."""
    values = {key: environ[name] for name, key in ENV_ALIASES.items() if name in environ}
    for name, value in environ.items():
        if name.startswith(ENV_PREFIX):
            key = name[len(ENV_PREFIX) :].lower()
            if key in KNOWN_KEYS and key != "api_keys":  # client keys come from files only
                values[key] = value
    return values


def read_config_dir(path: Path) -> dict[str, str]:
    """One setting per file, named by its canonical key, as a mounted ConfigMap lays them out.

    Kubelet's bookkeeping entries (``..data`` and friends) start with dots and are skipped.
    """
    values: dict[str, str] = {}
    for entry in sorted(path.iterdir()):
        if entry.name.startswith(".") or not entry.is_file():
            continue
        values[entry.name] = entry.read_text(encoding="utf-8")
    return values


def read_local(
    environ: Mapping[str, str], app_configuration: Mapping[str, str] | None = None
) -> dict[str, str]:
    """All local layers merged, with ``app_configuration`` (already loaded) between env and files."""
    values = from_environ(environ)
    if app_configuration:
        values.update(app_configuration)
    config_dir = environ.get("KUBECHAT_CONFIG_DIR")
    if config_dir:
        values.update(read_config_dir(Path(config_dir)))
    key_file = environ.get("KUBECHAT_OPENAI_API_KEY_FILE")
    if key_file and os.path.exists(key_file):
        values["openai_api_key"] = Path(key_file).read_text(encoding="utf-8")
    keys_dir = environ.get("KUBECHAT_API_KEYS_DIR")
    if keys_dir:
        # A missing directory is no keys (the Secret is mounted optional): every key is refused.
        keys = read_config_dir(Path(keys_dir)) if os.path.isdir(keys_dir) else {}
        values["api_keys"] = json.dumps(keys, sort_keys=True)
    return values
