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
import os
import socket
import sys
import time
from collections import deque
from typing import Any, AsyncIterator

import uvicorn

from vibeserve_ray.candidate import GenerationRequest, TokenOut, capabilities, import_entrypoint, load_candidate
from vibeserve_ray.serve.app import build_app
from vibeserve_ray.serve.front import OpenAIFront

STATS_PATH = "/stats"
PROFILE_PATH = "/profile"  # only with --profile: stops the profiler and writes PROFILE_TRACE in the --profile directory
PROFILE_TRACE = "profile-trace.json"


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
    parser.add_argument("--profile", metavar="DIR", help=f"run under torch.profiler; GET {PROFILE_PATH} stops it and writes DIR/{PROFILE_TRACE}")
    args = parser.parse_args()
    asyncio.run(serve(args))


async def serve(args: argparse.Namespace) -> None:
    spec = load_candidate(args.candidate)
    profiler = _start_profiler() if args.profile else None  # before the engine starts its threads, or they are not seen
    create_engine = import_entrypoint(spec)
    engine = Meter(create_engine(args.model, args.device, {**spec.knobs, **args.knobs}))
    app = build_app(OpenAIFront(engine, args.tokenizer, args.served_name))

    async def stats() -> dict[str, Any]:
        return engine.drain()

    app.add_api_route(STATS_PATH, stats, methods=["GET"], include_in_schema=False)
    if profiler is not None:
        async def stop_profiler() -> dict[str, str]:
            return {"trace": await asyncio.to_thread(_write_trace, profiler, args.profile)}

        app.add_api_route(PROFILE_PATH, stop_profiler, methods=["GET"], include_in_schema=False)
    sock = socket.socket(fileno=args.listen_fd)
    config = uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=2)
    try:
        await uvicorn.Server(config).serve(sockets=[sock])
    finally:
        await engine.close()


def _start_profiler():
    """torch.profiler over every thread created from now on (the engine steps in its own)."""
    # torch only when profiling: the front does not use it, and a candidate's engine need not
    import torch
    from torch._C._profiler import _ExperimentalConfig
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    # trace_only: key_averages() builds a Python object per event (measured 22-39 s for 30k
    # events on 2 cores); the Chrome trace is written by C++ in under a second
    profiler = profile(activities=activities, experimental_config=_ExperimentalConfig(profile_all_threads=True, trace_only=True))
    profiler.start()
    return profiler


def _write_trace(profiler, directory: str) -> str:
    profiler.stop()
    profiler.export_chrome_trace(os.path.join(directory, PROFILE_TRACE))
    return PROFILE_TRACE


if __name__ == "__main__":
    sys.exit(main())
