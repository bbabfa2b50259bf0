"""The parts child of service_memory.py: one bare interpreter importing what ``kubechat serve`` imports,
in its order, printing VmRSS after each step as a JSON line. A file of its own so that nothing the
benchmark itself imports is counted (run: ``python bench/memory_parts.py``).
"""

from __future__ import annotations

import json
from pathlib import Path

MODEL = "gpt-4o-mini"  # o200k_base, as for every current OpenAI model
FIELDS = ("VmRSS", "RssAnon", "RssFile")

#: (label, modules imported at that step), in the order ``kubechat serve`` meets them.
IMPORT_STEPS: list[tuple[str, list[str]]] = [
    ("asyncio, ssl, json, logging (stdlib)", ["asyncio", "ssl", "json", "logging", "ctypes"]),
    ("pydantic + pydantic_core", ["pydantic"]),
    ("starlette", ["starlette.applications", "starlette.staticfiles"]),
    ("fastapi (its OpenAPI models, telemetry hooks)", ["fastapi", "fastapi.middleware.cors"]),
    ("uvicorn (+ click, h11)", ["uvicorn", "uvicorn.protocols.http.h11_impl"]),
    ("httpx2", ["httpx2"]),
    ("opentelemetry-api", ["opentelemetry.trace"]),
    ("prometheus_client", ["prometheus_client"]),
    ("chatbot_service (our modules)", ["chatbot_service.app", "chatbot_service.cli"]),
    ("tiktoken (module)", ["tiktoken", "tiktoken_ext.openai_public"]),
]
NOT_LOADED_STEPS: list[tuple[str, list[str]]] = [
    ("openai (the tests' caller; the providers speak httpx2)", ["openai"]),
    ("redis (only with a Redis URL)", ["redis.asyncio"]),
    (
        "azure SDKs (only with App Configuration / Key Vault)",
        ["azure.identity", "azure.appconfiguration.provider", "azure.keyvault.secrets"],
    ),
]


def status(pid: int | str = "self") -> dict[str, float]:
    """VmRSS, RssAnon, RssFile of a process, in MiB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in FIELDS:
            fields[name] = int(value.split()[0]) / 1024
    return fields


def parts_child() -> None:
    """Print one JSON line per step: its label and VmRSS/RssAnon/RssFile after it."""
    import importlib

    def emit(label: str) -> None:
        print(json.dumps({"label": label, **status()}), flush=True)

    emit("interpreter")
    for label, modules in IMPORT_STEPS:
        for module in modules:
            importlib.import_module(module)
        emit(label)

    import tiktoken
    from tiktoken_ext.openai_public import o200k_base  # type: ignore[import-untyped]

    from chatbot_service.memory import release_freed

    constructor = o200k_base()
    emit("o200k_base: tiktoken's Python dict of 200k ranks")
    encoding = tiktoken.Encoding(**constructor)
    emit("o200k_base: the Rust tables (encoder, decoder, sorted tokens, regexes)")
    del constructor
    encoding._mergeable_ranks = {}
    release_freed()
    emit("o200k_base: the dict dropped, freed pages handed back")
    from chatbot_service.app import create_app

    env = {"OPENAI_API_KEY": "bench-key", "OPENAI_BASE_URL": "http://127.0.0.1:9/v1", "KUBECHAT_MODEL": MODEL}
    app = create_app(env)
    emit("create_app (routes, request models, metrics, the provider's client with its SSL context)")
    app.openapi()
    release_freed()
    emit("/openapi.json built once")
    for label, modules in NOT_LOADED_STEPS:
        for module in modules:
            importlib.import_module(module)
        emit(f"not in a default bot: {label}")
    del app


if __name__ == "__main__":
    parts_child()
