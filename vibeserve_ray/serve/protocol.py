"""OpenAI request and response shapes, validated at the HTTP edge so bad input is a 400,
never a 500; `/openapi.json` is generated from them.

Every field a request may carry is declared, and nothing is silently ignored or
coerced (`true` is not a token id, "0.7" is not a temperature): a parameter this server
does not implement is accepted only at its neutral value (`UNSUPPORTED` says which;
clients often send those by default) and refused otherwise, an unknown parameter is
refused (as OpenAI's API does), and harmless metadata such as `user` is accepted.
Extensions kept from vLLM because our tools need them: `ignore_eos`
(fixed output lengths for benchmarks), `return_token_ids` (exact token comparison in
the checker), `stop_token_ids`, and `prediction` as token ids on completions (predicted
outputs for speculation).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

TokenId = Annotated[int, Field(ge=0)]
Seed = Annotated[int, Field(ge=-(2**63), le=2**63 - 1)]
# What an unimplemented parameter may be set to, by name: the value that asks for nothing.
UNSUPPORTED = {
    "n": "1", "best_of": "1", "presence_penalty": "0", "frequency_penalty": "0", "logit_bias": "an empty object",
    "suffix": "an empty string", "tools": "an empty list", "functions": "an empty list", "tool_choice": "'none' or 'auto'",
    "function_call": "'none' or 'auto'", "audio": "null", "modalities": "['text']", "reasoning_effort": "null",
    "verbosity": "null", "web_search_options": "null",
}
Zero = Annotated[float, Field(ge=0, le=0)]
One = Annotated[int, Field(ge=1, le=1)]
NoList = Annotated[list[Any], Field(max_length=0)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class StreamOptions(_Strict):
    include_usage: bool = False
    include_obfuscation: bool | None = None  # we add no obfuscation padding either way


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class Prediction(_Strict):
    type: Literal["content"] = "content"
    content: str | list[TextPart]


class JsonSchemaFormat(_Strict):
    """OpenAI's `response_format.json_schema`: the schema the answer must follow."""

    name: str
    description: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")  # required by the front; `schema` shadows a BaseModel method
    strict: bool | None = None


class ResponseFormat(_Strict):
    """`text` is what every engine does; the others need an engine that constrains decoding."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class _Sampling(_Strict):
    model: str
    temperature: Annotated[float, Field(ge=0, le=2)] = 1.0
    top_p: Annotated[float, Field(gt=0, le=1)] = 1.0
    seed: Seed | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[Annotated[int, Field(ge=0)]] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    ignore_eos: bool = False
    return_token_ids: bool = False
    response_format: ResponseFormat | None = None
    user: str | None = None
    # not implemented: only their neutral values (UNSUPPORTED)
    n: One = 1
    presence_penalty: Zero | None = None
    frequency_penalty: Zero | None = None
    logit_bias: Annotated[dict[str, float], Field(max_length=0)] | None = None


class CompletionRequest(_Sampling):
    prompt: str | list[TokenId] | list[str]
    # 0 only with `echo`: the prompt scored, nothing generated (how eval harnesses score text)
    max_tokens: Annotated[int, Field(ge=0)] | None = 16
    logprobs: Annotated[int, Field(ge=0, le=5)] | None = None
    echo: bool = False
    prediction: list[TokenId] | Prediction | None = None
    best_of: One | None = None
    suffix: Annotated[str, Field(max_length=0)] | None = None


class ChatMessage(_Strict):
    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str | list[TextPart]
    name: str | None = None


class ChatCompletionRequest(_Sampling):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_tokens: Annotated[int, Field(gt=0)] | None = None
    max_completion_tokens: Annotated[int, Field(gt=0)] | None = None
    logprobs: bool = False
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    prediction: Prediction | None = None
    # harmless metadata: nothing we do depends on them
    metadata: dict[str, str] | None = None
    store: bool | None = None
    service_tier: str | None = None
    prompt_cache_key: str | None = None
    safety_identifier: str | None = None
    parallel_tool_calls: bool | None = None
    # not implemented: only their neutral values (UNSUPPORTED)
    tools: NoList | None = None
    functions: NoList | None = None
    tool_choice: Literal["none", "auto"] | None = None
    function_call: Literal["none", "auto"] | None = None
    audio: None = None
    modalities: list[Literal["text"]] | None = None
    reasoning_effort: None = None
    verbosity: None = None
    web_search_options: None = None


# --- responses (documented in /openapi.json; the handlers build plain dicts) -------------


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class CompletionLogprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float | None]  # None: the first prompt token (nothing before it)
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int]


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None
    finish_reason: Literal["stop", "length"] | None
    token_ids: list[int] | None = None  # with return_token_ids


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None  # absent in stream chunks, except the last with include_usage
    prompt_token_ids: list[int] | None = None  # with return_token_ids


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int]


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChatLogprobs(BaseModel):
    content: list[TokenLogprob]


class AssistantMessage(BaseModel):
    role: Literal["assistant"]
    content: str


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: ChatLogprobs | None
    finish_reason: Literal["stop", "length"]
    token_ids: list[int] | None = None


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class ModelCard(BaseModel):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str
    max_model_len: int


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[ModelCard]


class Health(BaseModel):
    status: Literal["ok"]


class ErrorInfo(BaseModel):
    message: str
    type: str
    param: str | None
    code: int | str | None


class ErrorResponse(BaseModel):
    error: ErrorInfo


def error_body(message: str, type_: str = "invalid_request_error", code: int | str | None = None, param: str | None = None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def text_of(content: str | list[TextPart]) -> str:
    """Message content as text; the multi-part form's text parts are concatenated."""
    if isinstance(content, str):
        return content
    return "".join(part.text for part in content)
