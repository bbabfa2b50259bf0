"""What we know about each model family: its tokenizer, its context window, how it takes a reply limit.

Pure data and lookup, no I/O. Model names arrive as dated snapshots (``gpt-4o-2024-08-06``) or as
Azure deployment names, so lookup is by longest known prefix, and an unknown name gets an explicit,
conservative fallback that callers can see (``ModelInfo.known`` is False) and report.
"""

from __future__ import annotations

from dataclasses import dataclass

O200K = "o200k_base"
CL100K = "cl100k_base"

#: Context window used for a model we do not know, unless ``max_context_tokens`` says otherwise.
FALLBACK_CONTEXT_TOKENS = 8192


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """Token facts for one model name."""

    name: str
    encoding: str
    context_tokens: int
    #: Reasoning models and the gpt-5 family refuse ``max_tokens`` and want ``max_completion_tokens``.
    reply_limit_param: str = "max_tokens"
    known: bool = True


# prefix -> (encoding, context window, reply limit parameter)
_KNOWN: dict[str, tuple[str, int, str]] = {
    "gpt-5": (O200K, 400_000, "max_completion_tokens"),
    "gpt-4.1": (O200K, 1_047_576, "max_tokens"),
    "gpt-4o": (O200K, 128_000, "max_tokens"),
    "chatgpt-4o": (O200K, 128_000, "max_tokens"),
    "o1": (O200K, 200_000, "max_completion_tokens"),
    "o1-mini": (O200K, 128_000, "max_completion_tokens"),
    "o3": (O200K, 200_000, "max_completion_tokens"),
    "o4-mini": (O200K, 200_000, "max_completion_tokens"),
    "gpt-4-turbo": (CL100K, 128_000, "max_tokens"),
    "gpt-4-32k": (CL100K, 32_768, "max_tokens"),
    "gpt-4": (CL100K, 8_192, "max_tokens"),
    "gpt-3.5-turbo": (CL100K, 16_385, "max_tokens"),
    "gpt-35-turbo": (CL100K, 16_385, "max_tokens"),  # Azure's spelling
}
_PREFIXES = sorted(_KNOWN, key=len, reverse=True)


def lookup(model: str) -> ModelInfo:
    """Return the token facts for ``model``; unknown names fall back to o200k_base and a small window."""
    for prefix in _PREFIXES:
        if model == prefix or model.startswith(prefix + "-") or model.startswith(prefix + ":"):
            encoding, context, param = _KNOWN[prefix]
            return ModelInfo(model, encoding, context, param)
    return ModelInfo(model, O200K, FALLBACK_CONTEXT_TOKENS, "max_tokens", known=False)
