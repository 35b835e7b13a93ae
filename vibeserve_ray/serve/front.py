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

from jinja2 import TemplateError

from vibeserve_ray.candidate import (PROMPT_LOGPROBS, RESPONSE_FORMAT, TOP_LOGPROBS, Engine, GenerationRequest, RequestRefused, TokenOut,
                                     capabilities, load_tokenizer, response_grammar)
from vibeserve_ray.serve.protocol import text_of


class RequestError(ValueError):
    """Bad input found after parsing (too long, unknown model): a 4xx, never a 500."""

    def __init__(self, message: str, status: int = 400, param: str | None = None, type_: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.param, self.type = status, param, type_


@dataclass
class Piece:
    """What one step of a stream adds: tokens, their logprobs (and best alternatives) and
    the new text. The `prompt` piece is the echoed prompt, before any generated token."""

    token_ids: list[int]
    logprobs: list[float | None]
    text: str
    finish_reason: str | None = None
    tops: list[tuple[tuple[int, float], ...] | None] = field(default_factory=list)
    prompt: bool = False

    def add(self, other: Piece) -> None:
        self.token_ids += other.token_ids
        self.logprobs += other.logprobs
        self.tops += other.tops
        self.text += other.text
        self.finish_reason = other.finish_reason

    @classmethod
    def of(cls, outs: list[TokenOut], text: str, finish_reason: str | None = None, prompt: bool = False) -> Piece:
        return cls([o.token_id for o in outs], [o.logprob for o in outs], text, finish_reason, [o.top_logprobs for o in outs], prompt)


@dataclass
class TokenCounts:
    """A response's token counts, as its `usage` reports them (counted up while it streams)."""

    prompt_tokens: int
    completion_tokens: int = 0

    def to_dict(self) -> dict:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens, "total_tokens": self.prompt_tokens + self.completion_tokens}


@dataclass
class _Detokenizer:
    """Emits the text each token adds, holding back an incomplete UTF-8 sequence and
    anything that might be the start of a stop string.

    Incremental (as vLLM's): each push decodes only the tokens since the last complete
    piece, with the one before as context, and keeps the difference; decoding the whole
    output every token made streaming quadratic, a third of the front's Python time at
    48 tokens (py-spy --gil, 16 streams)."""

    tokenizer: Any
    stop: list[str]
    ids: list[int] = field(default_factory=list)
    text: str = ""  # every complete piece decoded so far
    emitted: int = 0  # of `text`, what was sent
    prefix_offset: int = 0  # ids[prefix_offset:read_offset] decoded last time: the context of the next piece
    read_offset: int = 0

    def push(self, token_ids: list[int], final: bool) -> tuple[str, bool]:
        self.ids.extend(token_ids)
        decode = _decode_fn(self.tokenizer)
        before = decode(self.ids[self.prefix_offset:self.read_offset])
        after = decode(self.ids[self.prefix_offset:])
        pending = after[len(before):]
        if pending.endswith("\ufffd") and not final:
            text = self.text + pending  # incomplete: looked at for stop strings, not kept
        else:
            self.text += pending
            self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
            text = self.text
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


def _decode_fn(tokenizer: Any):
    """The Rust tokenizer's own decode where the Python wrapper adds nothing (no space
    clean-up): its per-call overhead was most of the detokenising time."""
    fast = getattr(tokenizer, "_tokenizer", None)
    if fast is not None and not getattr(tokenizer, "clean_up_tokenization_spaces", False):
        return lambda ids: fast.decode(ids, skip_special_tokens=True)
    return lambda ids: tokenizer.decode(ids, skip_special_tokens=True)


class OpenAIFront:
    """The text side of every candidate's engine process, in evaluation and behind Serve."""

    def __init__(self, engine: Engine, tokenizer_dir: str | Path, served_name: str):
        self.engine = engine
        # transformers takes a second to import: loaded where a front is built, not in a Serve
        # replica, which imports the app for its schema alone
        self.tokenizer = load_tokenizer(tokenizer_dir)
        config = json.loads((Path(tokenizer_dir) / "config.json").read_text()) if (Path(tokenizer_dir) / "config.json").is_file() else {}
        self.max_model_len = int(config.get("max_position_embeddings", self.tokenizer.model_max_length))
        self.vocab_size = int(config.get("vocab_size", len(self.tokenizer)))
        eos = config.get("eos_token_id", self.tokenizer.eos_token_id)
        self.eos_token_ids = sorted(set(eos if isinstance(eos, list) else [eos]) - {None})
        self.served_name = served_name
        self.created = int(time.time())
        self.capabilities = capabilities(engine)

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
        try:
            text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        except TemplateError as exc:  # the model's template refuses this conversation (roles out of order, ...)
            raise RequestError(f"the model's chat template refused the messages: {exc}", param="messages") from None
        return self.tokenizer.encode(text, add_special_tokens=False)

    def encode_prediction(self, prediction: Any) -> list[int] | None:
        if prediction is None:
            return None
        if not isinstance(prediction, list):
            return self.tokenizer.encode(text_of(prediction.content), add_special_tokens=False)
        if any(t >= self.vocab_size for t in prediction):
            raise RequestError(f"prediction has token ids outside the vocabulary (size {self.vocab_size})", param="prediction")
        return list(prediction)

    def require(self, capability: str, param: str, what: str) -> None:
        """A 400 naming `param` unless the engine declares `capability` (it would ignore the ask)."""
        if capability not in self.capabilities:
            raise RequestError(f"{param}: this engine does not provide {what}", param=param)

    def generation_request(self, body: Any, prompt_ids: list[int], max_tokens: int | None, want_logprobs: bool, top_logprobs: int = 0,
                           prompt_logprobs: bool = False) -> GenerationRequest:
        if top_logprobs:
            self.require(TOP_LOGPROBS, "top_logprobs" if hasattr(body, "top_logprobs") else "logprobs", "the most likely tokens at each position")
        if prompt_logprobs:
            self.require(PROMPT_LOGPROBS, "echo", "the prompt's logprobs (echo with logprobs)")
        fmt = self.response_format(body.response_format)
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
            response_format=fmt,
            prediction=self.encode_prediction(body.prediction),
            want_logprobs=want_logprobs,
            top_logprobs=top_logprobs,
            prompt_logprobs=prompt_logprobs,
        )

    def response_format(self, fmt: Any) -> dict | None:
        """None for plain text; for JSON mode the format as the engine gets it, once the engine
        declares constrained decoding and xgrammar can build the grammar (a 400 naming
        `response_format` otherwise: a schema it rejects, a json_schema without one)."""
        if fmt is None or fmt.type == "text":
            return None
        self.require(RESPONSE_FORMAT, "response_format", f"constrained decoding (response_format type '{fmt.type}')")
        out = fmt.model_dump(by_alias=True, exclude_none=True)
        try:
            response_grammar(out)
        except ValueError as exc:
            raise RequestError(f"response_format.{exc}", param="response_format") from None
        return out

    # --- the token stream ---------------------------------------------------------------

    async def pieces(self, request: GenerationRequest, stop: str | list[str] | None, echo: bool = False,
                     prompt_only: bool = False) -> AsyncIterator[Piece]:
        """The engine's stream as text pieces; the last one carries finish_reason. With
        `echo` the first is the prompt (scored when the request asks for prompt logprobs);
        `prompt_only` ends the stream there. An engine's refusal (`RequestRefused`) before
        its first token is a RequestError."""
        ids = request.prompt_token_ids
        if echo:
            prompt = Piece(ids, [None] * len(ids), self.tokenizer.decode(ids, skip_special_tokens=True), tops=[None] * len(ids), prompt=True)
            if not request.prompt_logprobs:
                yield prompt
        if prompt_only and not request.prompt_logprobs:
            yield Piece([], [], "", "length")
            return
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        detok = _Detokenizer(self.tokenizer, [s for s in stops if s])
        stream = self.engine.generate(request)
        produced, scored = 0, []
        try:
            async for out in stream:
                if len(scored) < len(ids) and request.prompt_logprobs:
                    scored.append(out)
                    if len(scored) == len(ids):
                        if [o.token_id for o in scored] != ids:
                            raise RuntimeError("the engine's prompt logprobs are not for the prompt's tokens")
                        yield Piece.of(scored, prompt.text if echo else "", prompt=True)
                        if prompt_only:
                            yield Piece([], [], "", "length")
                            return
                    continue
                produced += 1
                finished = produced >= request.max_tokens or out.token_id in request.stop_token_ids
                visible = [] if out.token_id in self.eos_token_ids and out.token_id in request.stop_token_ids else [out.token_id]
                text, hit_stop = detok.push(visible, final=finished)
                reason = "stop" if hit_stop or (finished and out.token_id in request.stop_token_ids) else ("length" if finished else None)
                yield Piece.of([out], text, reason)
                if reason:
                    return
            if len(scored) < len(ids) and request.prompt_logprobs:
                raise RuntimeError("the engine ended the stream before scoring the whole prompt")
            yield Piece([], [], detok.push([], final=True)[0], "stop" if produced < request.max_tokens else "length")
        except RequestRefused as exc:
            if produced or scored:
                raise
            raise RequestError(str(exc)) from None
        finally:
            close = getattr(stream, "aclose", None)
            if close is not None:
                await close()  # aborts the request inside the engine

    def token_text(self, token_id: int) -> str:
        return self.tokenizer.decode([token_id])


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"
