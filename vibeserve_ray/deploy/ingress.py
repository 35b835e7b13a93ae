"""What a replica puts in front of its engine process: SSE relayed in batches, the
replica's own errors and OpenAPI schema, and request metrics for the Ray dashboard.

The engine process serves the shared front (`serve/`), the same routes, validation and
errors the evaluator measured; the replica adds only what a served API needs beyond
that: the bearer key, 503 while the engine is down, and counts and latencies.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, AsyncIterator

import aiohttp
from ray.util.metrics import Counter, Histogram
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse

from vibeserve_ray.serve.app import build_app, error_type
from vibeserve_ray.serve.protocol import error_body

ROUTES = ("/health", "/openapi.json", "/v1/models", "/v1/completions", "/v1/chat/completions")


class Metrics:
    """Per-deployment request counts, TTFT and tokens/s, exported to the Ray dashboard."""

    def __init__(self, deployment: str):
        self.requests = Counter("vibeserve_serve_requests", "HTTP requests by route and status", tag_keys=("deployment", "route", "status"))
        self.ttft_ms = Histogram("vibeserve_serve_ttft_ms", "time to first token (ms)",
                                 boundaries=[5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000], tag_keys=("deployment",))
        self.tokens_per_s = Histogram("vibeserve_serve_output_tokens_per_s", "output tokens/s of one request",
                                      boundaries=[1, 5, 10, 25, 50, 100, 250, 500, 1000], tag_keys=("deployment",))
        for m in (self.requests, self.ttft_ms, self.tokens_per_s):
            m.set_default_tags({"deployment": deployment})


class CountRequests:
    """Pure ASGI middleware (no buffering of SSE streams) counting responses by status."""

    def __init__(self, app: Any, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = 500

        async def send_status(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = scope["path"] if scope["path"] in ROUTES else "other"
            self.metrics.requests.inc(tags={"route": route, "status": str(status)})


async def relay(resp: aiohttp.ClientResponse, interval_s: float) -> AsyncIterator[bytes]:
    """The engine's SSE bytes, gathered: the first two chunks go at once (a chat stream's
    role chunk, then its first token: TTFT is never held back), later ones at most once
    per `interval_s`, each batch all that arrived meanwhile (the rest goes when the stream
    ends; a chunk after a quiet interval goes as it comes), so each hop after the replica
    pays its per-message cost a few dozen times a second, not once per token. The relay
    itself wakes once per interval, not per token: it sleeps while aiohttp buffers what
    arrives (waking per token through `wait_for` was a task per token). A client that goes
    away closes the connection, which aborts the request inside the engine."""
    content, done = resp.content, False
    eof: asyncio.Future | None = None
    try:
        for _ in range(2):
            chunk = await content.readany()
            if not chunk:
                break
            yield chunk
        if interval_s <= 0:
            async for chunk in content.iter_any():
                yield chunk
        elif not content.at_eof():
            eof = asyncio.ensure_future(content.wait_eof())
            while True:
                await asyncio.wait((eof,), timeout=interval_s)
                chunk = content.read_nowait()
                if not chunk:
                    if content.at_eof():
                        break
                    chunk = await content.readany()  # quiet for a whole interval: the next goes as it comes
                    if not chunk:
                        break
                yield chunk
        done = True
    except aiohttp.ClientError as exc:
        yield f"data: {json.dumps(error_body(f'engine unavailable: {exc}', 'server_error', 503))}\n\n".encode()
    finally:
        if eof is not None:
            eof.cancel()
            if eof.done() and not eof.cancelled():
                eof.exception()  # retrieved: a broken stream is reported above, not logged as unretrieved
        resp.release() if done else resp.close()


def error_response(status: int, message: str, type_: str) -> JSONResponse:
    return JSONResponse(error_body(message, type_, status), status_code=status)


async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
    """The replica's own 404/405 in OpenAI's error shape, like the front's."""
    return JSONResponse(error_body(str(exc.detail), error_type(exc.status_code), exc.status_code), exc.status_code, headers=exc.headers)


def replica_schema(api_key: bool) -> dict:
    """The front's schema (the replica serves exactly its routes), plus what the replica
    adds: the bearer key on /v1 when one is required, and 503 while the engine is down."""
    schema = json.loads(json.dumps(build_app().openapi()))  # a copy: the front caches its own
    error = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}}
    if api_key:
        schema["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    for path, operations in schema["paths"].items():
        for operation in operations.values():
            operation["responses"]["503"] = {"description": "the engine is not running", **error}
            if api_key and path.startswith("/v1/"):
                operation["security"] = [{"bearer": []}]
                operation["responses"]["401"] = {"description": "missing or wrong API key", **error}
    return schema
