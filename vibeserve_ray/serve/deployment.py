"""The Ray Serve deployment: a candidate's engine behind the front the evaluator measured.

One replica holds the target's resources and runs the candidate exactly as the evaluator
did: the same sandboxed engine process behind the same front (`runner.start_candidate`),
so routes, validation, errors and streaming are the ones measured in evaluation. The
replica's ingress checks the API key and relays requests to that process over loopback.
Knobs arrive through `user_config`, so `reconfigure` can swap in a new engine process
without restarting the replica. Serve config files name
`vibeserve_ray.serve.deployment:app_builder` as their import path.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Annotated, Any, AsyncIterator, Literal

import aiohttp
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from ray import serve
from ray.serve import Application
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from vibeserve_ray.candidate import load_candidate, materialise_seed
from vibeserve_ray.errors import BadInput
from vibeserve_ray.runner import CandidateFailed, CandidateFailure, CandidateProcess, Limits, start_candidate
from vibeserve_ray.serve.app import build_app, error_type
from vibeserve_ray.serve.protocol import error_body
from vibeserve_ray.serve.worker import STATS_PATH

DEPLOYMENT_NAME = "vibeserve"
IMPORT_PATH = "vibeserve_ray.serve.deployment:app_builder"
# Names the environment variable that holds the API key: configs carry the name, never the key.
API_KEY_ENV_VAR = "VIBESERVE_API_KEY_ENV"
ROUTES = ("/health", "/openapi.json", "/v1/models", "/v1/completions", "/v1/chat/completions")
METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE"]


class ServeArgs(BaseModel):
    """What to serve (the `args` of a Serve config): portable values, no secrets.

    `candidate` is a directory (relative ones resolve in the replica's working_dir, where
    the config's runtime_env puts the candidate tree) or `seed`. The model is an HF
    directory on every node, or a generator recipe made on the node on first use.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    candidate: str = "."
    served_name: str
    device: Literal["cpu", "cuda"] = "cpu"
    model_path: str | None = None
    tokenizer_path: str | None = None
    generator: Literal["tiny-llama"] | None = None
    generator_seed: int = 0
    memory_mb: int = Limits.memory_mb  # the engine process's limit (the target's [limits])
    startup_timeout_s: float = Limits.startup_timeout_s
    sandbox: Literal["required", "best-effort"] = "required"  # the target's [limits] sandbox
    # Streamed tokens are relayed in batches at most this often (0: every chunk at once).
    stream_interval_ms: Annotated[float, Field(ge=0, le=1000)] = 50.0

    def model_dirs(self) -> tuple[Path, Path]:
        if self.generator == "tiny-llama":
            from vibeserve_ray.tinymodel import make_tiny

            model = make_tiny(self.generator_seed)
        elif self.model_path:
            model = Path(self.model_path)
        else:
            raise BadInput("serve config", "args.model_path", "give model_path or generator")
        return model, Path(self.tokenizer_path) if self.tokenizer_path else model


def parse_args(args: dict | ServeArgs) -> ServeArgs:
    if isinstance(args, ServeArgs):
        return args
    try:
        return ServeArgs.model_validate(args)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise BadInput("serve config", "args." + ".".join(str(p) for p in err["loc"]), err["msg"]) from None


# --- metrics -----------------------------------------------------------------------------


class _Metrics:
    """Per-deployment request counts, TTFT and tokens/s, exported to the Ray dashboard."""

    def __init__(self, deployment: str):
        from ray.util.metrics import Counter, Histogram

        self.requests = Counter("vibeserve_serve_requests", "HTTP requests by route and status", tag_keys=("deployment", "route", "status"))
        self.ttft_ms = Histogram("vibeserve_serve_ttft_ms", "time to first token (ms)",
                                 boundaries=[5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000], tag_keys=("deployment",))
        self.tokens_per_s = Histogram("vibeserve_serve_output_tokens_per_s", "output tokens/s of one request",
                                      boundaries=[1, 5, 10, 25, 50, 100, 250, 500, 1000], tag_keys=("deployment",))
        for m in (self.requests, self.ttft_ms, self.tokens_per_s):
            m.set_default_tags({"deployment": deployment})


class _CountRequests:
    """Pure ASGI middleware (no buffering of SSE streams) counting responses by status."""

    def __init__(self, app: Any, metrics: _Metrics):
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


# --- the deployment ----------------------------------------------------------------------


def _api_key() -> str | None:
    """The key from the variable the config names, which then leaves this process's
    environment: the engine process's is made from it (`runner.scrubbed_env` drops the
    rest of what looks secret, but not a variable of any name the user picked)."""
    name = os.environ.get(API_KEY_ENV_VAR)
    key = os.environ.pop(name, None) if name else None
    if name and not key:
        raise RuntimeError(f"{API_KEY_ENV_VAR} names {name}, which is not set on this node: refusing to serve without the key")
    return key


async def relay(resp: aiohttp.ClientResponse, interval_s: float) -> AsyncIterator[bytes]:
    """The engine's SSE bytes, gathered: the first two chunks go at once (a chat stream's
    role chunk, then its first token: TTFT is never held back), later ones at most once
    per `interval_s` (what is left goes when the stream ends), so Serve's per-message cost (replica, proxy) is paid a few dozen
    times a second, not once per token. A client that goes away closes the connection,
    which aborts the request inside the engine."""
    loop = asyncio.get_running_loop()
    read, pending, due, sent, done = resp.content.readany, b"", 0.0, 0, False
    try:
        while True:
            if pending:  # wait for more, at most until it is due
                try:
                    chunk = await asyncio.wait_for(read(), due - loop.time())
                except asyncio.TimeoutError:
                    yield pending
                    pending, due, sent = b"", loop.time() + interval_s, sent + 1
                    continue
            else:
                chunk = await read()
            if not chunk:
                break
            pending += chunk
            if sent < 2 or loop.time() >= due:
                yield pending
                pending, due, sent = b"", loop.time() + interval_s, sent + 1
        if pending:
            yield pending
        done = True
    except aiohttp.ClientError as exc:
        yield f"data: {json.dumps(error_body(f'engine unavailable: {exc}', 'server_error', 503))}\n\n".encode()
    finally:
        resp.release() if done else resp.close()


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


def _error(status: int, message: str, type_: str) -> JSONResponse:
    return JSONResponse(error_body(message, type_, status), status_code=status)


async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
    """The replica's own 404/405 in OpenAI's error shape, like the front's."""
    return JSONResponse(error_body(str(exc.detail), error_type(exc.status_code), exc.status_code), exc.status_code, headers=exc.headers)


def openapi_schema(api_key: bool) -> dict:
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


@serve.deployment(name=DEPLOYMENT_NAME, user_config={"knobs": {}}, max_constructor_retry_count=2, health_check_period_s=5)
@serve.ingress()
class VibeServer:
    """One replica: the candidate's engine in its own sandboxed process, behind a proxy.

    The engine process is the evaluator's (`runner.start_candidate`: the shared front,
    scrubbed environment, memory watchdog, scratch space of its own), so the replica runs
    no candidate code and serves exactly the process that was measured. The replica
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
            candidate = materialise_seed(self.sandbox / "seed")
        self.spec = load_candidate(candidate)
        # A server runs for days: no CPU-time limit; the rest of the sandbox as evaluated.
        self.limits = Limits(startup_timeout_s=self.args.startup_timeout_s, memory_mb=self.args.memory_mb, sandbox=self.args.sandbox, cpu_time_s=None)
        self.metrics = _Metrics(serve.get_replica_context().deployment)
        self.engine: _Engine | None = None
        self._engines: set[_Engine] = set()  # the current one and those retiring
        # Engine processes die with the thread that started them (PR_SET_PDEATHSIG), so
        # they are started from one thread that lives as long as the replica.
        self._starter = ThreadPoolExecutor(1, thread_name_prefix="engine-starter")
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task] = set()

    def __serve_build_asgi_app__(self):
        schema = openapi_schema(bool(self.api_key))

        async def openapi(request: Request) -> JSONResponse:
            return JSONResponse(schema)

        # every method goes to the engine's front, which answers 404/405 (with its Allow) for what it does not serve
        routes = [Route("/health", self._health), Route("/openapi.json", openapi), Route("/v1/{path:path}", self._forward, methods=METHODS)]
        app = Starlette(routes=routes, exception_handlers={HTTPException: _http_error})
        app.add_middleware(_CountRequests, metrics=self.metrics)
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

    # --- the proxy ---------------------------------------------------------------------

    async def _health(self, request: Request) -> Response:
        failure = self._failure()
        if self.engine is None or failure:
            return _error(503, "engine " + (f"failed: {failure.reason}" if failure else "not started"), "server_error")
        return JSONResponse({"status": "ok"})

    async def _forward(self, request: Request) -> Response:
        if self.api_key and request.headers.get("authorization", "") != f"Bearer {self.api_key}":
            return _error(401, "Invalid or missing API key", "authentication_error")
        engine, body = self.engine, await request.body()
        if engine is None:
            return _error(503, "engine not started", "server_error")
        engine.enter()
        try:
            resp = await self._client().request(request.method, engine.proc.base_url + request.url.path, params=request.query_params,
                                                data=body, headers={"Content-Type": request.headers.get("content-type", "application/json")})
        except aiohttp.ClientError as exc:
            engine.leave()
            failure = engine.proc.failure()
            return _error(503, f"engine unavailable: {failure.reason if failure else exc}", "server_error")
        if resp.content_type != "text/event-stream":
            try:
                allow = {"Allow": resp.headers["Allow"]} if "Allow" in resp.headers else None
                return Response(await resp.read(), resp.status, headers=allow, media_type=resp.content_type)
            except aiohttp.ClientError as exc:
                return _error(503, f"engine unavailable: {exc}", "server_error")
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
        for engine in list(self._engines):
            engine.proc.stop()
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
