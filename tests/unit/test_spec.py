"""The typed ChatBot spec and its defaults agree with the CRD's schema and with the chat service."""

from __future__ import annotations

import copy
import dataclasses
import json
import re
import types
import typing
from pathlib import Path
from typing import Any

import yaml
from kubechat_operator import spec as specs
from kubechat_operator.spec import Bot, BotSpec, parse

from chatbot_service.appconfig_options import AppConfigOptions
from chatbot_service.compaction import DEFAULT_PROMPT, parse_context
from chatbot_service.settings import Settings

REPO = Path(__file__).resolve().parents[2]
CRD = REPO / "crds" / "chatbots.kubechat.dev.yaml"


def spec_schema() -> dict[str, Any]:
    crd = yaml.safe_load(CRD.read_text())
    (version,) = crd["spec"]["versions"]
    schema: dict[str, Any] = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
    return schema


def snake(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])([A-Z]+)", lambda m: "_" + m.group(1).lower(), name)


def dataclass_of(hint: Any) -> type | None:
    """The dataclass inside ``X | None``, else None (a scalar or a mapping)."""
    for candidate in typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,):
        if dataclasses.is_dataclass(candidate) and isinstance(candidate, type):
            return candidate
    return None


def default_of(f: dataclasses.Field[Any]) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def walk(model: type, schema: dict[str, Any], path: str) -> list[tuple[str, Any, Any]]:
    """(path, CRD default, model default) for every CRD property, recursing into objects; fails on a
    CRD property the model lacks."""
    fields = {f.name: f for f in dataclasses.fields(model)}
    hints = typing.get_type_hints(model, vars(specs))
    found = []
    for name, prop in (schema.get("properties") or {}).items():
        attr = snake(name)
        assert attr in fields, f"{path}.{name} is in the CRD but {model.__name__} has no field {attr!r}"
        nested = dataclass_of(hints[attr])
        if nested is not None and "properties" in prop:
            found += walk(nested, prop, f"{path}.{name}")
        elif nested is None:
            found.append((f"{path}.{name}", prop.get("default", None), default_of(fields[attr])))
    return found


def test_every_crd_field_has_a_typed_twin_with_the_same_default() -> None:
    pairs = walk(BotSpec, spec_schema(), "spec")
    paths = {path for path, _, _ in pairs}
    assert {"spec.appConfiguration.refreshInterval", "spec.openAI.apiKeySecretRef.key"} <= paths
    for path, crd_default, model_default in pairs:
        assert model_default is not dataclasses.MISSING or crd_default is None, path
        if model_default is dataclasses.MISSING:
            continue  # a required field (a reference's name): no default on either side
        assert crd_default == model_default, f"{path}: CRD default {crd_default!r}, model {model_default!r}"
    defaults = {path for path, crd_default, _ in pairs if crd_default is not None}
    assert defaults == {path for path, _, model in pairs if model not in (None, dataclasses.MISSING)}


def apply_schema_defaults(value: Any, schema: dict[str, Any]) -> Any:
    """What the API server does to a stored object: defaults filled in objects that are present."""
    if not isinstance(value, dict):
        return value
    out = dict(value)
    for name, prop in (schema.get("properties") or {}).items():
        if name not in out and "default" in prop:
            out[name] = copy.deepcopy(prop["default"])
        if name in out:
            out[name] = apply_schema_defaults(out[name], prop)
    return out


def test_a_manifest_means_the_same_before_and_after_the_api_server_defaults_it() -> None:
    manifests: list[dict[str, Any]] = [
        {"systemPrompt": "p", "openAI": {"apiKeySecretRef": {"name": "k"}}},
        {
            "systemPromptFrom": {"secretKeyRef": {"name": "s", "key": "p"}},
            "appConfiguration": {"connectionStringSecretRef": {"name": "c"}},
            "sessionStore": {"type": "redis", "redisUrlSecretRef": {"name": "r"}},
            "service": {},
        },
    ]
    for manifest in manifests:
        defaulted = apply_schema_defaults(manifest, spec_schema())
        assert defaulted != manifest
        assert parse(defaulted) == parse(manifest)
    assert parse({}) == BotSpec()


def test_the_defaults_the_chat_service_also_has_are_the_same() -> None:
    assert Settings().model == specs.DEFAULT_MODEL
    assert Settings().session_store == specs.DEFAULT_SESSION_STORE
    assert AppConfigOptions().refresh_interval == specs.DEFAULT_REFRESH_INTERVAL
    policy = Settings().context
    assert (policy.mode, policy.threshold) == (specs.DEFAULT_CONTEXT_MODE, specs.DEFAULT_COMPACTION_THRESHOLD)


def test_the_context_setting_the_operator_writes_is_what_the_chat_service_reads() -> None:
    for raw in ({"mode": "compact"}, {"mode": "compact", "threshold": 0.5, "summaryPrompt": "Keep names."}):
        spec = parse({"context": raw})
        assert spec.context is not None
        policy = parse_context(json.dumps(spec.context.as_setting()))
        assert (policy.mode, policy.threshold) == (raw["mode"], raw.get("threshold", 0.75))
        assert policy.prompt == raw.get("summaryPrompt", DEFAULT_PROMPT)
    assert parse({}).context is None


def test_secret_references_and_the_files_they_become() -> None:
    spec = parse(
        {
            "systemPromptFrom": {"secretKeyRef": {"name": "prompts", "key": "helpdesk"}},
            "openAI": {"apiKeySecretRef": {"name": "openai"}},
            "sessionStore": {"type": "redis", "redisUrlSecretRef": {"name": "redis"}},
            "appConfiguration": {"connectionStringSecretRef": {"name": "appconf"}},
        }
    )
    assert spec.secret_refs() == [
        ("prompts", "helpdesk", "system_prompt"),
        ("openai", "apiKey", "openai_api_key"),
        ("redis", "url", "redis_url"),
        ("appconf", "connectionString", "appconfig/connection_string"),
    ]
    assert parse({"systemPrompt": "p"}).secret_refs() == []


def test_a_bot_keeps_only_the_annotations_the_operator_reads() -> None:
    bot = Bot.from_body(
        {
            "metadata": {
                "name": "b",
                "namespace": "n",
                "uid": "u",
                "generation": 4,
                "annotations": {
                    "kubectl.kubernetes.io/last-applied-configuration": "{...the whole manifest...}",
                    "kubechat.dev/refresh-requested-at": "now",
                },
            },
            "spec": {"temperature": 1},
        }
    )
    assert bot.annotations == {"kubechat.dev/refresh-requested-at": "now"}
    assert bot.generation == 4 and bot.spec.temperature == 1 and isinstance(bot.spec.temperature, int)
