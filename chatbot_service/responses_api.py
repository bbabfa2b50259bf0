"""The bodies the Responses and Conversations APIs take, as typed models. Pure: no I/O.

What a bot can honour on any Chat Completions upstream is accepted and translated (text input items,
``instructions``, ``max_output_tokens``, ``temperature``, ``top_p``, ``text.format``, ``metadata``,
``store``, ``truncation``); what it cannot (tools, reasoning options, image and file inputs, background
mode, ``include``) is refused with a 400 naming the parameter, never silently dropped.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator
from pydantic_core import PydanticCustomError

from chatbot_service.api_models import SESSION_ID_PATTERN
from chatbot_service.errors import BadRequest

_STRICT = ConfigDict(extra="forbid", strict=True)
#: OpenAI's limits on metadata: 16 pairs, keys of up to 64 characters, values of up to 512.
MAX_METADATA = 16
#: Items a conversation may be created with, or given in one call (OpenAI's limit).
MAX_ITEMS_PER_CALL = 20
INPUT_ROLES = ("user", "assistant", "system", "developer")


def _check_metadata(value: dict[str, str]) -> dict[str, str]:
    if len(value) > MAX_METADATA:
        raise PydanticCustomError(
            "too_long", "at most 16 pairs", {"max_length": MAX_METADATA, "actual_length": len(value)}
        )
    for key, text in value.items():
        if len(key) > 64 or len(text) > 512:
            raise PydanticCustomError(
                "metadata", "keys may have at most 64 characters and values at most 512"
            )
    return value


Metadata = Annotated[dict[str, str], AfterValidator(_check_metadata)]


class TextFormat(BaseModel):
    model_config = _STRICT
    type: Literal["text", "json_object", "json_schema"]
    name: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class TextConfig(BaseModel):
    model_config = _STRICT
    format: TextFormat | None = None
    verbosity: None = Field(default=None, description="Not supported.")


class ConversationRef(BaseModel):
    model_config = _STRICT
    id: str


class ResponseStreamOptions(BaseModel):
    model_config = _STRICT
    include_obfuscation: bool | None = None


class ResponseRequest(BaseModel):
    """OpenAI's ``POST /v1/responses`` body, as far as a bot supports it. The bot's system prompt comes
    first and its model is used whatever ``model`` says."""

    model_config = _STRICT
    input: str | list[dict[str, Any]]
    model: str | None = Field(default=None, description="Ignored: the bot answers with its own model.")
    instructions: str | None = None
    previous_response_id: str | None = Field(default=None, pattern=SESSION_ID_PATTERN)
    conversation: str | ConversationRef | None = None
    store: bool | None = None
    stream: bool | None = None
    stream_options: ResponseStreamOptions | None = None
    max_output_tokens: int | None = Field(default=None, ge=16)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    metadata: Metadata | None = None
    text: TextConfig | None = None
    truncation: Literal["auto", "disabled"] | None = None
    user: str | None = None
    # Hints a bot may ignore without changing the answer: accepted, not forwarded.
    prompt_cache_key: str | None = None
    safety_identifier: str | None = None
    service_tier: str | None = None
    parallel_tool_calls: bool | None = None
    # What a bot cannot do: refused by name unless empty.
    tools: list[Any] | None = None
    tool_choice: Any = None
    reasoning: dict[str, Any] | None = None
    include: list[Any] | None = None
    background: bool | None = None
    max_tool_calls: Any = None
    top_logprobs: Any = None
    prompt: Any = None

    @field_validator("tools", "include")
    @classmethod
    def _empty_list(cls, value: list[Any] | None) -> list[Any] | None:
        if value:
            raise PydanticCustomError("unsupported_parameter", "not supported by kubechat bots")
        return value

    @field_validator("tool_choice")
    @classmethod
    def _no_tool_choice(cls, value: Any) -> Any:
        if value not in (None, "none", "auto"):
            raise PydanticCustomError("unsupported_parameter", "not supported by kubechat bots")
        return value

    @field_validator("reasoning")
    @classmethod
    def _no_reasoning(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value and any(v is not None for v in value.values()):
            raise PydanticCustomError("unsupported_parameter", "not supported by kubechat bots")
        return value

    @field_validator("background")
    @classmethod
    def _no_background(cls, value: bool | None) -> bool | None:
        if value:
            raise PydanticCustomError("unsupported_parameter", "not supported by kubechat bots")
        return value

    @field_validator("max_tool_calls", "top_logprobs", "prompt")
    @classmethod
    def _unsupported(cls, value: Any) -> Any:
        if value is not None:
            raise PydanticCustomError("unsupported_parameter", "not supported by kubechat bots")
        return value

    @property
    def conversation_id(self) -> str | None:
        if isinstance(self.conversation, ConversationRef):
            return self.conversation.id
        return self.conversation

    @property
    def stored(self) -> bool:
        """``store`` defaults to true, as on OpenAI."""
        return self.store is not False

    def response_format(self) -> dict[str, Any] | None:
        """``text.format`` as Chat Completions' ``response_format``."""
        fmt = self.text.format if self.text else None
        if fmt is None or fmt.type == "text":
            return None
        if fmt.type == "json_object":
            return {"type": "json_object"}
        if not fmt.name:
            raise BadRequest("Missing required parameter: 'text.format.name'.", param="text.format.name")
        schema: dict[str, Any] = {"name": fmt.name, "schema": fmt.schema_ or {}}
        if fmt.description is not None:
            schema["description"] = fmt.description
        if fmt.strict is not None:
            schema["strict"] = fmt.strict
        return {"type": "json_schema", "json_schema": schema}


class ConversationCreate(BaseModel):
    model_config = _STRICT
    items: list[dict[str, Any]] | None = Field(default=None, max_length=MAX_ITEMS_PER_CALL)
    metadata: Metadata | None = None


class ConversationUpdate(BaseModel):
    model_config = _STRICT
    metadata: Metadata


class ItemsCreate(BaseModel):
    model_config = _STRICT
    items: list[dict[str, Any]] = Field(min_length=1, max_length=MAX_ITEMS_PER_CALL)


# -- input items ------------------------------------------------------------------------------

_TEXT_PARTS = ("input_text", "output_text", "text")
_FILE_PARTS = ("input_image", "input_file", "input_audio")


def input_messages(value: str | list[dict[str, Any]], param: str = "input") -> list[tuple[str, str]]:
    """The input as (role, text) messages: a string is one user message; items must be text
    messages (parts joined), anything else is refused naming where it is (``input[2].content[0]``)."""
    if isinstance(value, str):
        return [("user", value)]
    messages = []
    for i, item in enumerate(value):
        where = f"{param}[{i}]"
        kind = item.get("type", "message")
        if kind != "message":
            raise BadRequest(
                f"'{where}' is a {str(kind)[:40]!r} item; kubechat bots take only message items "
                "(no tools, reasoning or item references)",
                code="unsupported_parameter",
                param=f"{where}.type",
            )
        role = item.get("role")
        if role not in INPUT_ROLES:
            raise BadRequest(
                f"Invalid value for '{where}.role': {str(role)[:40]!r}. Supported values are: "
                f"{', '.join(INPUT_ROLES)}.",
                code="invalid_value",
                param=f"{where}.role",
            )
        messages.append((role, _text(item.get("content"), f"{where}.content")))
    if not messages:
        raise BadRequest(f"Invalid '{param}': empty array.", code="empty_array", param=param)
    return messages


def _text(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise BadRequest(
            f"Invalid type for '{where}': expected a string or an array of content parts.",
            code="invalid_type",
            param=where,
        )
    texts = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in _FILE_PARTS:
            raise BadRequest(
                f"'{where}[{j}]' is an {kind} part; kubechat bots take text only "
                "(no image, file or audio inputs)",
                code="unsupported_parameter",
                param=f"{where}[{j}].type",
            )
        text = part.get("text") if isinstance(part, dict) and kind in _TEXT_PARTS else None
        if kind == "refusal" and isinstance(part.get("refusal"), str):
            text = part["refusal"]
        if not isinstance(text, str):
            raise BadRequest(
                f"Invalid '{where}[{j}]': expected a text part (input_text or output_text with 'text').",
                code="invalid_value",
                param=f"{where}[{j}]",
            )
        texts.append(text)
    return "".join(texts)
