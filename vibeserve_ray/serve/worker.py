"""Entry point of a candidate's sandboxed server process (started by `runner`).

Imports the candidate, builds its engine, and serves the shared front on the listening
socket the runner passes in (--listen-fd: bound on the host's loopback before this
process starts, so there is no port race, and reachable although this process's own
network namespace has no route anywhere). The
evaluator measures this process and a Serve replica proxies to it, so what was measured
is what is served. It times the engine from the outside (TTFT, tokens/s per request) and
hands the figures to whoever drains `GET /stats`: the replica, which exports them as Ray
metrics (this process holds no Ray connection and no secrets). `/stats` also says how
many requests are inside the engine now (`in_flight`), so a soak can tell that none is
left stuck.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import sys
import time
from collections import deque
from typing import Any, AsyncIterator

from vibeserve_ray.candidate import GenerationRequest, TokenOut, capabilities

STATS_PATH = "/stats"


class Meter:
    """The candidate's engine, timed from the outside (its internals are its own)."""

    def __init__(self, engine: Any, keep: int = 10_000):
        self.engine = engine
        self.capabilities = capabilities(engine)
        self.ttft_ms: deque[float] = deque(maxlen=keep)
        self.tokens_per_s: deque[float] = deque(maxlen=keep)
        self.in_flight = 0  # streams opened on the engine and not yet closed

    async def generate(self, request: GenerationRequest) -> AsyncIterator[TokenOut]:
        start, n = time.perf_counter(), 0
        stream = self.engine.generate(request)
        self.in_flight += 1
        try:
            async for out in stream:
                if not n:
                    self.ttft_ms.append((time.perf_counter() - start) * 1000)
                n += 1
                yield out
        finally:
            self.in_flight -= 1
            if n:
                self.tokens_per_s.append(n / max(time.perf_counter() - start, 1e-6))
            close = getattr(stream, "aclose", None)
            if close is not None:
                await close()  # an abandoned request is aborted inside the engine

    def drain(self) -> dict[str, Any]:
        """The figures gathered since the last drain, and the requests in flight now."""
        out = {"ttft_ms": list(self.ttft_ms), "tokens_per_s": list(self.tokens_per_s), "in_flight": self.in_flight}
        self.ttft_ms.clear()
        self.tokens_per_s.clear()
        return out

    async def close(self) -> None:
        await self.engine.close()


def main() -> None:
    parser = argparse.ArgumentParser(prog="vibeserve_ray.serve.worker")
    parser.add_argument("--candidate", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--tokenizer", required=True)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--served-name", required=True)
    parser.add_argument("--listen-fd", type=int, required=True, help="a listening TCP socket inherited from the runner")
    parser.add_argument("--knobs", type=json.loads, default={}, help="JSON object overriding the candidate's knobs")
    args = parser.parse_args()
    asyncio.run(serve(args))


async def serve(args: argparse.Namespace) -> None:
    import uvicorn

    from vibeserve_ray.candidate import import_entrypoint, load_candidate
    from vibeserve_ray.serve.app import build_app
    from vibeserve_ray.serve.front import OpenAIFront

    spec = load_candidate(args.candidate)
    create_engine = import_entrypoint(spec)
    engine = Meter(create_engine(args.model, args.device, {**spec.knobs, **args.knobs}))
    app = build_app(OpenAIFront(engine, args.tokenizer, args.served_name))

    async def stats() -> dict[str, Any]:
        return engine.drain()

    app.add_api_route(STATS_PATH, stats, methods=["GET"], include_in_schema=False)
    sock = socket.socket(fileno=args.listen_fd)
    config = uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=2)
    try:
        await uvicorn.Server(config).serve(sockets=[sock])
    finally:
        await engine.close()


if __name__ == "__main__":
    sys.exit(main())
