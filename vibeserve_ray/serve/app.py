"""The OpenAI-compatible HTTP front: one FastAPI app for evaluation and deployment.

It runs in the candidate's sandboxed engine process under uvicorn (`serve.worker`): the
evaluator measures that process and a Ray Serve replica proxies to it, so what was
measured is what is served. The front lives in `app.state.front`.
"""

from __future__ import annotations

import json
import time
from typing import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse

from vibeserve_ray.serve.front import OpenAIFront, Piece, RequestError, Usage, new_id
from vibeserve_ray.serve.protocol import ChatCompletionRequest, CompletionRequest, error_body, text_of


def build_app(front: OpenAIFront | None = None) -> FastAPI:
    app = FastAPI(title="vibeserve_ray", docs_url=None, redoc_url=None)
    app.state.front = front

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        err = exc.errors()[0]
        param = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        message = "Request body is not valid JSON" if err.get("type") == "json_invalid" else f"{param}: {err.get('msg')}"
        return JSONResponse(error_body(message, param=param or None, code=400), status_code=400)

    @app.exception_handler(RequestError)
    async def _bad(request: Request, exc: RequestError) -> JSONResponse:
        return JSONResponse(error_body(str(exc), exc.type, exc.status, exc.param), status_code=exc.status)

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models(request: Request) -> dict:
        front = request.app.state.front
        card = {"id": front.served_name, "object": "model", "created": front.created, "owned_by": "vibeserve_ray", "max_model_len": front.max_model_len}
        return {"object": "list", "data": [card]}

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        front: OpenAIFront = request.app.state.front
        front.check_model(body.model)
        prompt_ids = front.encode_prompt(body.prompt)
        gen = front.generation_request(body, prompt_ids, body.max_tokens, want_logprobs=body.logprobs is not None)
        rid, created = new_id("cmpl"), int(time.time())
        echo = front.tokenizer.decode(prompt_ids, skip_special_tokens=True) if body.echo else ""

        def chunk(text: str, piece: Piece | None, reason: str | None) -> dict:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": reason}
            if piece is not None and body.logprobs is not None:
                choice["logprobs"] = _completion_logprobs(front, piece.token_ids, piece.logprobs)
            if body.return_token_ids:
                choice["token_ids"] = piece.token_ids if piece else []
            return {"id": rid, "object": "text_completion", "created": created, "model": front.served_name, "choices": [choice]}

        if body.stream:
            first = [chunk(echo, None, None)] if echo else []
            events = _events(front.pieces(gen, body.stop), first, lambda p: chunk(p.text, p, p.finish_reason),
                             {"id": rid, "object": "text_completion", "created": created, "model": front.served_name}, len(prompt_ids), body)
            return StreamingResponse(events, media_type="text/event-stream")

        whole = await _collect(front.pieces(gen, body.stop), echo)
        body_out = chunk(whole.text, whole, whole.finish_reason)
        body_out["usage"] = Usage(len(prompt_ids), len(whole.token_ids)).to_dict()
        if body.return_token_ids:
            body_out["prompt_token_ids"] = prompt_ids
        return body_out

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        front: OpenAIFront = request.app.state.front
        front.check_model(body.model)
        prompt_ids = front.encode_chat([{"role": m.role, "content": text_of(m.content)} for m in body.messages])
        gen = front.generation_request(body, prompt_ids, body.max_completion_tokens or body.max_tokens, want_logprobs=body.logprobs)
        rid, created = new_id("chatcmpl"), int(time.time())

        def logprobs_of(piece: Piece) -> dict | None:
            if not body.logprobs:
                return None
            return {"content": [{"token": front.token_text(t), "logprob": lp, "top_logprobs": []} for t, lp in zip(piece.token_ids, piece.logprobs)]}

        if body.stream:
            def chunk(delta: dict, piece: Piece | None, reason: str | None) -> dict:
                choice = {"index": 0, "delta": delta, "logprobs": logprobs_of(piece) if piece else None, "finish_reason": reason}
                if body.return_token_ids:
                    choice["token_ids"] = piece.token_ids if piece else []
                return {"id": rid, "object": "chat.completion.chunk", "created": created, "model": front.served_name, "choices": [choice]}

            events = _events(front.pieces(gen, body.stop), [chunk({"role": "assistant", "content": ""}, None, None)],
                             lambda p: chunk({"content": p.text} if p.text else {}, p, p.finish_reason),
                             {"id": rid, "object": "chat.completion.chunk", "created": created, "model": front.served_name}, len(prompt_ids), body)
            return StreamingResponse(events, media_type="text/event-stream")

        whole = await _collect(front.pieces(gen, body.stop), "")
        choice = {"index": 0, "message": {"role": "assistant", "content": whole.text}, "logprobs": logprobs_of(whole), "finish_reason": whole.finish_reason}
        if body.return_token_ids:
            choice["token_ids"] = whole.token_ids
        return {
            "id": rid,
            "object": "chat.completion",
            "created": created,
            "model": front.served_name,
            "choices": [choice],
            "usage": Usage(len(prompt_ids), len(whole.token_ids)).to_dict(),
        }

    return app


def _sse(data: dict) -> str:
    return f"data: {json.dumps(data)}\n\n"


async def _events(pieces: AsyncIterator[Piece], first: list[dict], to_chunk, head: dict, prompt_tokens: int, body) -> AsyncIterator[str]:
    """SSE for a stream: leading chunks, one per piece, usage if asked, then [DONE]."""
    usage = Usage(prompt_tokens)
    for c in first:
        yield _sse(c)
    async for piece in _guarded(pieces):
        if isinstance(piece, dict):
            yield _sse(piece)
            break
        usage.completion_tokens += len(piece.token_ids)
        if piece.token_ids or piece.text or piece.finish_reason:
            yield _sse(to_chunk(piece))
    if body.stream_options and body.stream_options.include_usage:
        yield _sse(head | {"choices": [], "usage": usage.to_dict()})
    yield "data: [DONE]\n\n"


async def _collect(pieces: AsyncIterator[Piece], text: str) -> Piece:
    whole = Piece([], [], text)
    async for piece in pieces:
        whole.token_ids += piece.token_ids
        whole.logprobs += piece.logprobs
        whole.text += piece.text
        whole.finish_reason = piece.finish_reason
    return whole


async def _guarded(pieces: AsyncIterator[Piece]) -> AsyncIterator[Piece | dict]:
    """Once a stream has started, an engine error can only be reported in-band."""
    try:
        async for piece in pieces:
            yield piece
    except Exception as exc:  # noqa: BLE001 - the candidate's failure, reported to the client
        yield error_body(f"engine error: {type(exc).__name__}: {exc}", "server_error", 500)


def _completion_logprobs(front: OpenAIFront, token_ids: list[int], logprobs: list[float | None]) -> dict:
    tokens = [front.token_text(t) for t in token_ids]
    offsets, at = [], 0
    for tok in tokens:
        offsets.append(at)
        at += len(tok)
    return {
        "tokens": tokens,
        "token_logprobs": logprobs,
        "top_logprobs": [{tok: lp} if lp is not None else None for tok, lp in zip(tokens, logprobs)],
        "text_offset": offsets,
    }
