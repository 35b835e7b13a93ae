"""OpenAI request shapes, validated at the HTTP edge so bad input is a 400, never a 500.

Extensions kept from vLLM because our tools need them: `ignore_eos` (fixed output
lengths for benchmarks), `return_token_ids` (exact token comparison in the checker)
and `prediction` as token ids on completions (predicted outputs for speculation).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Req(BaseModel):
    # Unknown fields are ignored, as OpenAI clients send many we have no use for.
    model_config = ConfigDict(extra="ignore")


class StreamOptions(BaseModel):
    include_usage: bool = False


class Prediction(BaseModel):
    type: Literal["content"] = "content"
    content: str | list[dict[str, Any]]


class _Sampling(_Req):
    model: str
    temperature: Annotated[float, Field(ge=0, le=2)] = 1.0
    top_p: Annotated[float, Field(gt=0, le=1)] = 1.0
    seed: int | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[Annotated[int, Field(ge=0)]] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: Literal[1] = 1
    ignore_eos: bool = False
    return_token_ids: bool = False
    response_format: dict[str, Any] | None = None


class CompletionRequest(_Sampling):
    prompt: str | list[Annotated[int, Field(ge=0)]] | list[str]
    max_tokens: Annotated[int, Field(gt=0)] | None = 16
    logprobs: Annotated[int, Field(ge=0, le=5)] | None = None
    echo: bool = False
    prediction: list[Annotated[int, Field(ge=0)]] | Prediction | None = None


class ChatMessage(BaseModel):
    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str | list[dict[str, Any]]


class ChatCompletionRequest(_Sampling):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_tokens: Annotated[int, Field(gt=0)] | None = None
    max_completion_tokens: Annotated[int, Field(gt=0)] | None = None
    logprobs: bool = False
    top_logprobs: Annotated[int, Field(ge=0, le=5)] | None = None
    prediction: Prediction | None = None


def error_body(message: str, type_: str = "invalid_request_error", code: int | str | None = None, param: str | None = None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def text_of(content: str | list[dict[str, Any]]) -> str:
    """Message content as text; the multi-part form's text parts are concatenated."""
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in content if part.get("type") == "text")
