"""The bodies the HTTP API takes and gives, as typed models. Pure: no I/O.

The Chat Completions request mirrors OpenAI's own rules (types, ranges, enums), so a request OpenAI
would refuse is refused here with a 400 naming the parameter, before anything is sent upstream; and the
same models give ``/openapi.json`` its request and response bodies. Models are strict: ``"0.5"`` is not
a number and ``"yes"`` is not a boolean, as for OpenAI.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

SESSION_ID_PATTERN = r"^[A-Za-z0-9_-]{1,128}$"

#: Parameters OpenAI has and a bot does not do: refused by name rather than silently dropped.
UNSUPPORTED = (
    "tools",
    "tool_choice",
    "functions",
    "function_call",
    "audio",
    "prediction",
    "web_search_options",
)
#: Validated and passed on to the model's API as the client sent them.
PASSED_THROUGH = (
    "temperature",
    "top_p",
    "n",
    "stop",
    "seed",
    "presence_penalty",
    "frequency_penalty",
    "user",
    "response_format",
    "logprobs",
    "top_logprobs",
    "logit_bias",
    "reasoning_effort",
)

_STRICT = ConfigDict(extra="forbid", strict=True)
Int64 = Annotated[int, Field(ge=-(2**63), le=2**63 - 1)]
TokenId = Annotated[str, Field(pattern=r"^[0-9]+$")]
Bias = Annotated[int, Field(ge=-100, le=100)]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorBody(BaseModel):
    """Every error, in OpenAI's shape."""

    error: ErrorDetail


# -- /chat ------------------------------------------------------------------------------------


class ChatRequest(BaseModel):
    """A turn in a server-side conversation."""

    model_config = _STRICT
    message: str = Field(description="The user's message.")
    session_id: str | None = Field(
        default=None,
        pattern=SESSION_ID_PATTERN,
        description="Continue this session; omit to start a new one.",
    )
    stream: bool = Field(default=False, description="Stream the reply as Server-Sent Events.")


class ChatReply(BaseModel):
    session_id: str
    reply: str
    usage: dict[str, int]
    truncated: bool


class StoredMessage(BaseModel):
    role: str
    content: str
    tokens: int


class SessionHistory(BaseModel):
    session_id: str
    messages: list[StoredMessage]
    tokens: int


# -- /v1/chat/completions ---------------------------------------------------------------------


class TextPart(BaseModel):
    model_config = _STRICT
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    """A client's message. Only text: tool calls, images and audio are refused by name."""

    model_config = ConfigDict(extra="ignore", strict=True)  # SDKs echo back e.g. "refusal": null
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]
    name: str | None = Field(default=None, description="Accepted and not forwarded.")
    tool_calls: Any = Field(default=None, description="Not supported.")

    @field_validator("tool_calls")
    @classmethod
    def _no_tool_calls(cls, value: Any) -> Any:
        if value is not None:
            raise PydanticCustomError("unsupported_parameter", "tool calls are not supported")
        return value

    @property
    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class JSONSchemaFormat(BaseModel):
    model_config = _STRICT
    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    model_config = _STRICT
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_iff_json_schema(self) -> ResponseFormat:
        if (self.type == "json_schema") != (self.json_schema is not None):
            raise PydanticCustomError(
                "json_schema_mismatch", "'json_schema' is required with type 'json_schema', and only then"
            )
        return self


class StreamOptions(BaseModel):
    model_config = _STRICT
    include_usage: bool | None = None


class CompletionRequest(BaseModel):
    """OpenAI's Chat Completions request, as far as a bot supports it. The bot's system prompt comes
    first and its model is used whatever ``model`` says."""

    model_config = _STRICT
    messages: list[ChatMessage] = Field(min_length=1)
    model: str | None = Field(default=None, description="Ignored: the bot answers with its own model.")
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    n: int | None = Field(default=None, ge=1, le=128)
    stop: str | list[str] | None = Field(default=None, max_length=4)
    seed: Int64 | None = None
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    user: str | None = None
    response_format: ResponseFormat | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    logit_bias: dict[TokenId, Bias] | None = None
    reasoning_effort: Literal["none", "minimal", "low", "medium", "high", "xhigh"] | None = None
    # Accepted and not forwarded: they ask OpenAI to keep the completion, which a bot does not pass on.
    store: bool | None = None
    metadata: dict[str, str] | None = None
    parallel_tool_calls: bool | None = None
    tools: Any = None
    tool_choice: Any = None
    functions: Any = None
    function_call: Any = None
    audio: Any = None
    prediction: Any = None
    web_search_options: Any = None

    @field_validator(*UNSUPPORTED)
    @classmethod
    def _unsupported(cls, value: Any) -> Any:
        if value is not None:
            raise PydanticCustomError("unsupported_parameter", "not supported by kubechat bots")
        return value

    @property
    def reply_limit(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    def passed_through(self) -> dict[str, Any]:
        """The parameters forwarded upstream, as the client wrote them (JSON Schema's ``schema`` key)."""
        return self.model_dump(include=set(PASSED_THROUGH), exclude_none=True, by_alias=True)


class ModelCard(BaseModel):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[ModelCard]


class CompletionMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str
    content: str | None = None


class CompletionChoice(BaseModel):
    model_config = ConfigDict(extra="allow")
    index: int
    message: CompletionMessage
    finish_reason: str | None = None


class CompletionUsage(BaseModel):
    model_config = ConfigDict(extra="allow")
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatCompletion(BaseModel):
    """The upstream's completion, passed on as it came (documented as far as a bot promises it)."""

    model_config = ConfigDict(extra="allow")
    id: str
    object: str
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: CompletionUsage | None = None


class Health(BaseModel):
    status: Literal["ok"]


class ReloaderState(BaseModel):
    restarts: int
    last_error: str | None


class Readiness(BaseModel):
    ready: bool
    missing: list[str]
    problems: list[str]
    model: str | None
    reloader: ReloaderState
    limits: str | None = Field(default=None, description="Where limits are counted, when the bot has any.")
    tokens: str | None = Field(
        default=None, description="The encoding that counts tokens, and whether it is a guess."
    )


class BotInfo(BaseModel):
    name: str | None
    model: str | None
    ready: bool
    auth_required: bool = Field(default=False, description="The bot wants a key or token (spec.access).")


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for the error statuses a route can answer, each in OpenAI's shape."""
    return {status: {"model": ErrorBody} for status in statuses}


EVENT_STREAM = {"text/event-stream": {"schema": {"type": "string", "description": "Server-Sent Events"}}}
