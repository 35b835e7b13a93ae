"""The part of the HTTP front that knows text: prompts in, token stream out as text.

Engines speak token ids; the front owns tokenisation, chat templates, EOS, stop
strings and incremental detokenisation, so every candidate gets them identically in
evaluation and in deployment.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator

from vibeserve_ray.candidate import Engine, GenerationRequest


class RequestError(ValueError):
    """Bad input found after parsing (too long, unknown model): a 4xx, never a 500."""

    def __init__(self, message: str, status: int = 400, param: str | None = None, type_: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.param, self.type = status, param, type_


@dataclass
class Piece:
    """What one step of a stream adds: tokens, their logprobs and the new text."""

    token_ids: list[int]
    logprobs: list[float | None]
    text: str
    finish_reason: str | None = None


@dataclass
class Usage:
    prompt_tokens: int
    completion_tokens: int = 0

    def to_dict(self) -> dict:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens, "total_tokens": self.prompt_tokens + self.completion_tokens}


@dataclass
class _Detokenizer:
    """Decodes the whole output each time and emits the new suffix, holding back an
    incomplete UTF-8 sequence and anything that might be the start of a stop string."""

    tokenizer: Any
    stop: list[str]
    ids: list[int] = field(default_factory=list)
    emitted: int = 0

    def push(self, token_ids: list[int], final: bool) -> tuple[str, bool]:
        self.ids.extend(token_ids)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        for s in self.stop:
            at = text.find(s, max(0, self.emitted - len(s)))
            if at != -1:
                out, self.emitted = text[self.emitted : at], at
                return out, True
        if text.endswith("\ufffd") and not final:
            return "", False
        hold = 0 if final else max((len(s) - 1 for s in self.stop), default=0)
        end = max(self.emitted, len(text) - hold)
        out, self.emitted = text[self.emitted : end], end
        return out, False


class OpenAIFront:
    """The text side of every candidate's engine process, in evaluation and behind Serve."""

    def __init__(self, engine: Engine, tokenizer_dir: str | Path, served_name: str):
        from transformers import AutoTokenizer

        self.engine = engine
        self.tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
        config = json.loads((Path(tokenizer_dir) / "config.json").read_text()) if (Path(tokenizer_dir) / "config.json").is_file() else {}
        self.max_model_len = int(config.get("max_position_embeddings", self.tokenizer.model_max_length))
        self.vocab_size = int(config.get("vocab_size", len(self.tokenizer)))
        eos = config.get("eos_token_id", self.tokenizer.eos_token_id)
        self.eos_token_ids = sorted(set(eos if isinstance(eos, list) else [eos]) - {None})
        self.served_name = served_name
        self.created = int(time.time())

    # --- requests -> GenerationRequest ------------------------------------------------

    def check_model(self, model: str) -> None:
        if model != self.served_name:
            raise RequestError(f"The model `{model}` does not exist.", status=404, param="model", type_="NotFoundError")

    def encode_prompt(self, prompt: str | list[int] | list[str]) -> list[int]:
        if isinstance(prompt, str):
            ids = self.tokenizer.encode(prompt)
        elif prompt and all(isinstance(p, int) for p in prompt):
            ids = list(prompt)
        elif len(prompt) == 1 and isinstance(prompt[0], str):
            ids = self.tokenizer.encode(prompt[0])
        else:
            raise RequestError("prompt must be one string or one list of token ids (batched prompts are not supported)", param="prompt")
        if not ids:
            raise RequestError("prompt is empty", param="prompt")
        bad = [i for i in ids if i >= self.vocab_size]
        if bad:
            raise RequestError(f"token id {bad[0]} is out of the vocabulary (size {self.vocab_size})", param="prompt")
        return ids

    def encode_chat(self, messages: list[dict]) -> list[int]:
        text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return self.tokenizer.encode(text, add_special_tokens=False)

    def encode_prediction(self, prediction: Any) -> list[int] | None:
        if prediction is None:
            return None
        if isinstance(prediction, list):
            return list(prediction)
        from vibeserve_ray.serve.protocol import text_of

        return self.tokenizer.encode(text_of(prediction.content), add_special_tokens=False)

    def generation_request(self, body: Any, prompt_ids: list[int], max_tokens: int | None, want_logprobs: bool) -> GenerationRequest:
        room = self.max_model_len - len(prompt_ids)
        if max_tokens is None:
            max_tokens = room
        if len(prompt_ids) + max_tokens > self.max_model_len:
            raise RequestError(
                f"This model's maximum context length is {self.max_model_len} tokens. However, you requested "
                f"{len(prompt_ids) + max_tokens} tokens ({len(prompt_ids)} in the prompt, {max_tokens} for the completion).",
                param="max_tokens",
            )
        stop_ids = list(body.stop_token_ids or [])
        if not body.ignore_eos:
            stop_ids += self.eos_token_ids
        return GenerationRequest(
            prompt_token_ids=prompt_ids,
            max_tokens=max_tokens,
            temperature=body.temperature,
            top_p=body.top_p,
            seed=body.seed,
            stop_token_ids=sorted(set(stop_ids)),
            response_format=body.response_format,
            prediction=self.encode_prediction(body.prediction),
            want_logprobs=want_logprobs,
        )

    # --- the token stream ---------------------------------------------------------------

    async def pieces(self, request: GenerationRequest, stop: str | list[str] | None) -> AsyncIterator[Piece]:
        """The engine's stream as text pieces; the last one carries finish_reason."""
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        detok = _Detokenizer(self.tokenizer, [s for s in stops if s])
        stream = self.engine.generate(request)
        produced = 0
        try:
            async for out in stream:
                produced += 1
                finished = produced >= request.max_tokens or out.token_id in request.stop_token_ids
                visible = [] if out.token_id in self.eos_token_ids and out.token_id in request.stop_token_ids else [out.token_id]
                text, hit_stop = detok.push(visible, final=finished)
                reason = "stop" if hit_stop or (finished and out.token_id in request.stop_token_ids) else ("length" if finished else None)
                yield Piece([out.token_id], [out.logprob], text, reason)
                if reason:
                    return
            yield Piece([], [], detok.push([], final=True)[0], "stop" if produced < request.max_tokens else "length")
        finally:
            close = getattr(stream, "aclose", None)
            if close is not None:
                await close()  # aborts the request inside the engine

    def token_text(self, token_id: int) -> str:
        return self.tokenizer.decode([token_id])


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"
