"""The Ray Serve deployment: a candidate's engine behind the front the evaluator measured.

One replica holds the target's resources and runs the candidate exactly as the evaluator
did: the same sandboxed engine process behind the same front (`runner.start_candidate`),
so routes, validation, errors and streaming are the ones measured in evaluation. The
replica's ingress checks the API key and relays requests to that process over loopback.
On a Ray the CLI starts, clients reach the replica's own HTTP server through Serve's
HAProxy ingress (`raycluster.RAY_ENV`); elsewhere through whatever ingress the cluster's
Serve runs (its Python proxy by default): the replica serves the same app either way.
Knobs arrive through `user_config`, so `reconfigure` can swap in a new engine process
without restarting the replica. Serve config files name `app_builder` (`args.IMPORT_PATH`).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import AsyncIterator

import aiohttp
from ray import serve
from ray.serve import Application
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from vibeserve_ray.candidate import load_candidate
from vibeserve_ray.deploy.args import API_KEY_ENV_VAR, DEPLOYMENT_NAME, ServeArgs, parse_args
from vibeserve_ray.deploy.ingress import CountRequests, Metrics, error_response, http_error, relay, replica_schema
from vibeserve_ray.engine.space import family_of
from vibeserve_ray.runner import CandidateFailed, CandidateFailure, CandidateProcess, Limits, start_candidate
from vibeserve_ray.seed import materialise_seed
from vibeserve_ray.serve.worker import STATS_PATH

METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE"]


def _api_key() -> str | None:
    """The key from the variable the config names, which then leaves this process's
    environment (the engine process's holds only the sandbox's allow-list in any case)."""
    name = os.environ.get(API_KEY_ENV_VAR)
    key = os.environ.pop(name, None) if name else None
    if name and not key:
        raise RuntimeError(f"{API_KEY_ENV_VAR} names {name}, which is not set on this node: refusing to serve without the key")
    return key


class _Engine:
    """One engine process (the evaluator's sandboxed worker) and the requests in flight on
    it, so a replaced one is stopped only once it is idle."""

    def __init__(self, proc: CandidateProcess, knobs: dict, generation: int):
        self.proc, self.knobs, self.generation, self.active = proc, knobs, generation, 0
        self.idle = asyncio.Event()
        self.idle.set()

    def enter(self) -> None:
        self.active += 1
        self.idle.clear()

    def leave(self) -> None:
        self.active -= 1
        if not self.active:
            self.idle.set()

    async def retire(self, engines: set) -> None:
        await self.idle.wait()
        await asyncio.to_thread(self.proc.stop)
        engines.discard(self)


@serve.deployment(name=DEPLOYMENT_NAME, user_config={"knobs": {}}, max_constructor_retry_count=2, health_check_period_s=5)
@serve.ingress()
class VibeServer:
    """One replica: the candidate's engine in its own sandboxed process, behind a relay.

    The engine process is the evaluator's (`runner.start_candidate`: the shared front,
    allow-listed environment, memory watchdog, scratch space of its own), so the replica
    runs no candidate code and serves exactly the process that was measured. The replica
    checks the API key, relays bytes, counts requests and exports the engine's TTFT and
    tokens/s. The engine is started by the first `reconfigure` (Serve calls it before the
    replica takes traffic; the default user_config makes sure it does), with the config's
    knobs; a dead or over-limit engine fails `check_health`, and Serve replaces the replica.
    """

    def __init__(self, args: dict | ServeArgs):
        self.args = parse_args(args)
        self.api_key = _api_key()
        self.model_dir, self.tokenizer_dir = self.args.model_dirs()
        self.sandbox = Path(tempfile.mkdtemp(prefix="vibeserve-replica-"))
        candidate = self.args.candidate
        if candidate == "seed":
            candidate = materialise_seed(self.sandbox / "seed", family=family_of(self.model_dir))
        self.spec = load_candidate(candidate)
        # A server runs for days: no CPU-time limit; the rest of the sandbox as evaluated.
        self.limits = Limits(startup_timeout_s=self.args.startup_timeout_s, memory_mb=self.args.memory_mb, sandbox=self.args.sandbox, cpu_time_s=None)
        self.metrics = Metrics(serve.get_replica_context().deployment)
        self.engine: _Engine | None = None
        self._engines: set[_Engine] = set()  # the current one and those retiring
        # Engine processes die with the thread that started them (PR_SET_PDEATHSIG), so
        # they are started from one thread that lives as long as the replica.
        self._starter = ThreadPoolExecutor(1, thread_name_prefix="engine-starter")
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task] = set()

    def __serve_build_asgi_app__(self):
        schema = replica_schema(bool(self.api_key))

        async def openapi(request: Request) -> JSONResponse:
            return JSONResponse(schema)

        # every method goes to the engine's front, which answers 404/405 (with its Allow) for what it does not serve
        routes = [Route("/health", self._health), Route("/openapi.json", openapi), Route("/v1/{path:path}", self._forward, methods=METHODS)]
        app = Starlette(routes=routes, exception_handlers={HTTPException: http_error})
        app.add_middleware(CountRequests, metrics=self.metrics)
        return app

    async def reconfigure(self, user_config: dict) -> None:
        """New knobs start a new engine process; requests in flight finish on the old one,
        which is stopped once idle. Unknown knobs, or an engine that does not start, fail
        the update and leave the running engine as it was."""
        knobs = dict((user_config or {}).get("knobs") or {})
        unknown = sorted(set(knobs) - set(self.spec.knobs))
        if unknown:
            raise ValueError(f"user_config.knobs.{unknown[0]}: unknown knob (the candidate has {', '.join(sorted(self.spec.knobs))})")
        wanted = {**self.spec.knobs, **knobs}
        if self.engine is not None and wanted == self.engine.knobs:
            return
        generation = self.engine.generation + 1 if self.engine else 1
        try:
            proc = await asyncio.get_running_loop().run_in_executor(
                self._starter, start_candidate, self.spec, self.model_dir, self.tokenizer_dir, self.args.served_name, self.args.device,
                self.limits, self.sandbox / f"engine-{generation}", wanted)
        except CandidateFailed as exc:
            raise RuntimeError(f"the engine did not start: {exc.failure.describe()}") from None
        old, self.engine = self.engine, _Engine(proc, wanted, generation)
        self._engines.add(self.engine)
        if old is None:
            self._spawn(self._export_stats())
        else:
            self._spawn(old.retire(self._engines))

    def check_health(self) -> None:
        """A dead or over-limit engine process fails the replica, and Serve replaces it."""
        failure = self._failure()
        if failure:
            raise RuntimeError(failure.describe())

    def _failure(self) -> CandidateFailure | None:
        return self.engine.proc.failure() if self.engine else None

    async def describe(self) -> dict:
        """What this replica runs (through a handle: `handle.describe.remote()`)."""
        e = self.engine
        return {"pid": os.getpid(), "engine_pid": e.proc.proc.pid if e else None, "candidate": str(self.spec.path),
                "design": self.spec.design, "knobs": e.knobs if e else None, "engine_generation": e.generation if e else 0,
                "served_name": self.args.served_name}

    # --- the relay ---------------------------------------------------------------------

    async def _health(self, request: Request) -> Response:
        failure = self._failure()
        if self.engine is None or failure:
            return error_response(503, "engine " + (f"failed: {failure.reason}" if failure else "not started"), "server_error")
        return JSONResponse({"status": "ok"})

    async def _forward(self, request: Request) -> Response:
        if self.api_key and request.headers.get("authorization", "") != f"Bearer {self.api_key}":
            return error_response(401, "Invalid or missing API key", "authentication_error")
        engine, body = self.engine, await request.body()
        if engine is None:
            return error_response(503, "engine not started", "server_error")
        engine.enter()
        try:
            resp = await self._client().request(request.method, engine.proc.base_url + request.url.path, params=request.query_params,
                                                data=body, headers={"Content-Type": request.headers.get("content-type", "application/json")})
        except aiohttp.ClientError as exc:
            engine.leave()
            failure = engine.proc.failure()
            return error_response(503, f"engine unavailable: {failure.reason if failure else exc}", "server_error")
        if resp.content_type != "text/event-stream":
            try:
                allow = {"Allow": resp.headers["Allow"]} if "Allow" in resp.headers else None
                return Response(await resp.read(), resp.status, headers=allow, media_type=resp.content_type)
            except aiohttp.ClientError as exc:
                return error_response(503, f"engine unavailable: {exc}", "server_error")
            finally:
                resp.release()
                engine.leave()
        return StreamingResponse(self._relay(resp, engine), resp.status, media_type="text/event-stream")

    async def _relay(self, resp: aiohttp.ClientResponse, engine: _Engine) -> AsyncIterator[bytes]:
        try:
            async for chunk in relay(resp, self.args.stream_interval_ms / 1000):
                yield chunk
        finally:
            engine.leave()

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:  # made on the loop that serves requests
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=None, connect=5))
        return self._session

    async def _export_stats(self, period_s: float = 1.0) -> None:
        """Drains the engine process's per-request TTFT and tokens/s into Ray metrics."""
        while True:
            await asyncio.sleep(period_s)
            engine = self.engine
            try:
                async with self._client().get(engine.proc.base_url + STATS_PATH) as r:
                    stats = await r.json()
            except (aiohttp.ClientError, ValueError):
                continue  # a dead engine is check_health's business
            for v in stats["ttft_ms"]:
                self.metrics.ttft_ms.observe(v)
            for v in stats["tokens_per_s"]:
                self.metrics.tokens_per_s.observe(v)

    def _spawn(self, coro) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def __del__(self):
        for task in list(self._tasks):
            task.cancel()
        if self._session is not None:
            await self._session.close()
        # stopped off the event loop: a stop waits up to 3 s for SIGTERM to take
        await asyncio.gather(*(asyncio.to_thread(engine.proc.stop) for engine in list(self._engines)))
        self._starter.shutdown(wait=False)
        shutil.rmtree(self.sandbox, ignore_errors=True)


def build(args: dict | ServeArgs, options: dict | None = None) -> Application:
    """The application for `args`, with deployment `options` (as in a Serve config's
    `deployments` entry) applied in code."""
    parsed = parse_args(args)
    deployment = VibeServer.options(**options) if options else VibeServer
    return deployment.bind(parsed.model_dump())


def app_builder(args: dict) -> Application:
    """Serve's import path for config files (`serve deploy`, RayService): options come
    from the config's `deployments` entry."""
    return build(args)
