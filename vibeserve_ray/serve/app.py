"""The OpenAI-compatible HTTP front: one FastAPI app for evaluation and deployment.

It runs in the candidate's sandboxed engine process under uvicorn (`serve.worker`): the
evaluator measures that process and a Ray Serve replica proxies to it, so what was
measured is what is served. The front lives in `app.state.front`. Every error, also a
body that is not UTF-8 JSON, an unknown route or an engine failure, gets OpenAI's error
shape; `/openapi.json` describes the requests and responses as `protocol` declares them.
"""

from __future__ import annotations

import json
import time
from typing import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException

from vibeserve_ray.serve.front import OpenAIFront, Piece, RequestError, TokenCounts, new_id
from vibeserve_ray.serve.protocol import (
    UNSUPPORTED, ChatCompletionRequest, ChatCompletionResponse, CompletionRequest, CompletionResponse, ErrorResponse, Health, ModelList,
    error_body, text_of,
)

_ERRORS = {code: {"model": ErrorResponse} for code in (400, 404, 500)}
# each server-sent event: `data` holds one JSON chunk (the response's shape, `delta` for
# `message` on chat), the last one `[DONE]`
_EVENT = {"type": "object", "properties": {"data": {"type": "string", "contentMediaType": "application/json"}}, "required": ["data"]}
_STREAM = {"text/event-stream": {"schema": _EVENT}}
ERROR_TYPES = {401: "authentication_error", 404: "NotFoundError", 429: "rate_limit_error"}


def error_type(status: int) -> str:
    return ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")


def build_app(front: OpenAIFront | None = None) -> FastAPI:
    app = FastAPI(title="vibeserve_ray", summary="OpenAI-compatible API of a vibeserve_ray candidate", docs_url=None, redoc_url=None)
    app.state.front = front
    app.openapi = lambda: front_schema(app)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = validation_message(exc.errors())
        return JSONResponse(error_body(message, param=param, code=400), status_code=400)

    @app.exception_handler(RequestError)
    async def _bad(request: Request, exc: RequestError) -> JSONResponse:
        return JSONResponse(error_body(str(exc), exc.type, exc.status, exc.param), status_code=exc.status)

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> JSONResponse:  # unknown route, wrong method, unreadable body
        message = "Request body is not valid UTF-8" if isinstance(exc.__cause__, UnicodeDecodeError) else str(exc.detail)
        return JSONResponse(error_body(message, error_type(exc.status_code), exc.status_code), status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def _failed(request: Request, exc: Exception) -> JSONResponse:  # the candidate's engine failed
        return JSONResponse(error_body(f"engine error: {type(exc).__name__}: {exc}", "server_error", 500), status_code=500)

    @app.get("/health", responses={200: {"model": Health}})
    async def health() -> dict:
        return {"status": "ok"}

    @app.get("/v1/models", responses={200: {"model": ModelList}})
    async def models(request: Request) -> dict:
        front = request.app.state.front
        card = {"id": front.served_name, "object": "model", "created": front.created, "owned_by": "vibeserve_ray", "max_model_len": front.max_model_len}
        return {"object": "list", "data": [card]}

    @app.post("/v1/completions", responses={200: {"model": CompletionResponse, "content": _STREAM}, **_ERRORS})
    async def completions(body: CompletionRequest, request: Request):
        front: OpenAIFront = request.app.state.front
        front.check_model(body.model)
        prompt_ids = front.encode_prompt(body.prompt)
        if body.max_tokens == 0 and not body.echo:
            raise RequestError("max_tokens must be at least 1 (0 only with echo, which scores the prompt)", param="max_tokens")
        # max_tokens 0: the engine makes one token (engines always do), which is dropped
        max_tokens = None if body.max_tokens is None else max(body.max_tokens, 1)
        scored = body.echo and body.logprobs is not None
        gen = front.generation_request(body, prompt_ids, max_tokens, want_logprobs=body.logprobs is not None, top_logprobs=body.logprobs or 0,
                                       prompt_logprobs=scored)
        rid, created = new_id("cmpl"), int(time.time())
        pieces = front.pieces(gen, body.stop, echo=body.echo, prompt_only=body.max_tokens == 0)
        offset = [0]  # text_offset runs on across stream chunks

        def chunk(piece: Piece) -> dict:
            choice = {"index": 0, "text": piece.text, "logprobs": None, "finish_reason": piece.finish_reason}
            if body.logprobs is not None:
                choice["logprobs"] = _completion_logprobs(front, piece, offset)
            if body.return_token_ids:
                choice["token_ids"] = [] if piece.prompt else piece.token_ids
            return {"id": rid, "object": "text_completion", "created": created, "model": front.served_name, "choices": [choice]}

        if body.stream:
            head = {"id": rid, "object": "text_completion", "created": created, "model": front.served_name}
            return StreamingResponse(_events(await _started(pieces), [], chunk, head, len(prompt_ids), body), media_type="text/event-stream")

        prompt, generated = await _collect(pieces)
        whole = Piece([], [], "")
        for piece in (prompt, generated):
            if piece is not None:
                whole.add(piece)
        body_out = chunk(whole)
        body_out["usage"] = TokenCounts(len(prompt_ids), len(generated.token_ids)).to_dict()
        if body.return_token_ids:
            body_out["choices"][0]["token_ids"] = generated.token_ids
            body_out["prompt_token_ids"] = prompt_ids
        return body_out

    @app.post("/v1/chat/completions", responses={200: {"model": ChatCompletionResponse, "content": _STREAM}, **_ERRORS})
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        front: OpenAIFront = request.app.state.front
        front.check_model(body.model)
        if body.top_logprobs and not body.logprobs:
            raise RequestError("top_logprobs needs logprobs: true", param="top_logprobs")
        messages = [{"role": m.role, "content": text_of(m.content), **({"name": m.name} if m.name is not None else {})} for m in body.messages]
        prompt_ids = front.encode_chat(messages)
        gen = front.generation_request(body, prompt_ids, body.max_completion_tokens or body.max_tokens, want_logprobs=body.logprobs,
                                       top_logprobs=body.top_logprobs or 0)
        rid, created = new_id("chatcmpl"), int(time.time())
        pieces = front.pieces(gen, body.stop)

        def logprobs_of(piece: Piece) -> dict | None:
            if not body.logprobs:
                return None
            return {"content": [_chat_logprob(front, t, lp, top) for t, lp, top in zip(piece.token_ids, piece.logprobs, piece.tops)]}

        if body.stream:
            def chunk(delta: dict, piece: Piece | None, reason: str | None) -> dict:
                choice = {"index": 0, "delta": delta, "logprobs": logprobs_of(piece) if piece else None, "finish_reason": reason}
                if body.return_token_ids:
                    choice["token_ids"] = piece.token_ids if piece else []
                return {"id": rid, "object": "chat.completion.chunk", "created": created, "model": front.served_name, "choices": [choice]}

            events = _events(await _started(pieces), [chunk({"role": "assistant", "content": ""}, None, None)],
                             lambda p: chunk({"content": p.text} if p.text else {}, p, p.finish_reason),
                             {"id": rid, "object": "chat.completion.chunk", "created": created, "model": front.served_name}, len(prompt_ids), body)
            return StreamingResponse(events, media_type="text/event-stream")

        _, whole = await _collect(pieces)
        choice = {"index": 0, "message": {"role": "assistant", "content": whole.text}, "logprobs": logprobs_of(whole), "finish_reason": whole.finish_reason}
        if body.return_token_ids:
            choice["token_ids"] = whole.token_ids
        return {
            "id": rid,
            "object": "chat.completion",
            "created": created,
            "model": front.served_name,
            "choices": [choice],
            "usage": TokenCounts(len(prompt_ids), len(whole.token_ids)).to_dict(),
        }

    return app


# --- errors and the schema ---------------------------------------------------------------

# pydantic names the member of a union it tried in the error's location ('str',
# 'list[TextPart]'); a parameter's path is made of field names and list indices only
_TYPE_TAGS = {"str", "int", "float", "bool", "list", "dict", "none"}


def _param(loc: tuple) -> str:
    parts = [p for p in loc[1:] if isinstance(p, int) or (p.isidentifier() and p.islower() and p not in _TYPE_TAGS)]
    return ".".join(str(p) for p in parts)


def validation_message(errors: list[dict]) -> tuple[str, str | None]:
    """One line and the parameter it names, from the most specific of pydantic's errors."""
    err = max(errors, key=lambda e: len(e.get("loc", ())))
    param = _param(tuple(err.get("loc", ())))
    if err.get("type") == "json_invalid":
        return "Request body is not valid JSON", None
    if not param:
        return "Request body must be a JSON object", None
    if err.get("type") == "extra_forbidden":
        return f"Unrecognized request argument supplied: {param}", param
    if param in UNSUPPORTED:
        return f"{param}: not supported by this server (accepted: {UNSUPPORTED[param]})", param
    return f"{param}: {err.get('msg')}", param


def front_schema(app: FastAPI) -> dict:
    """FastAPI's schema, with our 400 error body where it documents a 422 of its own."""
    if app.openapi_schema is None:
        schema = get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes)
        for path in schema["paths"].values():
            for operation in path.values():
                operation.get("responses", {}).pop("422", None)
        for name in ("HTTPValidationError", "ValidationError"):
            schema.get("components", {}).get("schemas", {}).pop(name, None)
        app.openapi_schema = schema
    return app.openapi_schema


# --- streams -----------------------------------------------------------------------------


def _sse(data: dict) -> str:
    return f"data: {json.dumps(data)}\n\n"


async def _started(pieces: AsyncIterator[Piece]) -> AsyncIterator[Piece]:
    """`pieces` once its first piece is there: a request the engine refuses is still a
    400, not an error event inside a 200 stream."""
    first = await anext(pieces)

    async def chained() -> AsyncIterator[Piece]:
        yield first
        async for piece in pieces:
            yield piece

    return chained()


async def _events(pieces: AsyncIterator[Piece], first: list[dict], to_chunk, head: dict, prompt_tokens: int, body) -> AsyncIterator[str]:
    """SSE for a stream: leading chunks, one per piece, usage if asked, then [DONE]."""
    usage = TokenCounts(prompt_tokens)
    for c in first:
        yield _sse(c)
    async for piece in _guarded(pieces):
        if isinstance(piece, dict):
            yield _sse(piece)
            break
        if not piece.prompt:
            usage.completion_tokens += len(piece.token_ids)
        if piece.token_ids or piece.text or piece.finish_reason:
            yield _sse(to_chunk(piece))
    if body.stream_options and body.stream_options.include_usage:
        yield _sse(head | {"choices": [], "usage": usage.to_dict()})
    yield "data: [DONE]\n\n"


async def _collect(pieces: AsyncIterator[Piece]) -> tuple[Piece | None, Piece]:
    """The prompt piece (with echo) and everything generated, each as one piece."""
    prompt, whole = None, Piece([], [], "")
    async for piece in pieces:
        if piece.prompt:
            prompt = piece
        else:
            whole.add(piece)
    return prompt, whole


async def _guarded(pieces: AsyncIterator[Piece]) -> AsyncIterator[Piece | dict]:
    """Once a stream has started, an engine error can only be reported in-band."""
    try:
        async for piece in pieces:
            yield piece
    except Exception as exc:  # noqa: BLE001 - the candidate's failure, reported to the client
        yield error_body(f"engine error: {type(exc).__name__}: {exc}", "server_error", 500)


def _completion_logprobs(front: OpenAIFront, piece: Piece, offset: list[int]) -> dict:
    """OpenAI's completions logprobs: each token, its logprob, and a map of the chosen
    token and the most likely ones to their logprobs (None where nothing was scored)."""
    tokens = [front.token_text(t) for t in piece.token_ids]
    offsets = []
    for tok in tokens:
        offsets.append(offset[0])
        offset[0] += len(tok)
    tops = piece.tops or [None] * len(tokens)
    top_logprobs = [None if lp is None else {tok: lp} | {front.token_text(t): v for t, v in top or ()}
                    for tok, lp, top in zip(tokens, piece.logprobs, tops)]
    return {"tokens": tokens, "token_logprobs": piece.logprobs, "top_logprobs": top_logprobs, "text_offset": offsets}


def _chat_logprob(front: OpenAIFront, token_id: int, logprob: float | None, top) -> dict:
    def entry(t: int, lp: float | None) -> dict:
        text = front.token_text(t)
        return {"token": text, "logprob": lp, "bytes": list(text.encode())}

    return entry(token_id, logprob) | {"top_logprobs": [entry(t, v) for t, v in top or ()]}
