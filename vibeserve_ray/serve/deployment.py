"""The Ray Serve deployment: a candidate's engine behind the front the evaluator measured.

One replica holds one engine with the target's resources; its ingress is the shared
FastAPI app (`build_app`), so routes, validation, errors and streaming are exactly the
ones measured in evaluation. Knobs arrive through `user_config`, so `reconfigure` can
swap in a re-built engine without restarting the replica. Serve config files name
`vibeserve_ray.serve.deployment:app_builder` as their import path.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from pathlib import Path
from typing import Any, AsyncIterator, Literal

from pydantic import BaseModel, ConfigDict, ValidationError
from ray import serve
from ray.serve import Application

from vibeserve_ray.candidate import GenerationRequest, TokenOut, import_entrypoint, load_candidate, materialise_seed
from vibeserve_ray.errors import BadInput

DEPLOYMENT_NAME = "vibeserve"
IMPORT_PATH = "vibeserve_ray.serve.deployment:app_builder"
# Names the environment variable that holds the API key: configs carry the name, never the key.
API_KEY_ENV_VAR = "VIBESERVE_API_KEY_ENV"
ROUTES = ("/health", "/v1/models", "/v1/completions", "/v1/chat/completions")


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


class _MeteredEngine:
    """The candidate's engine, timed from the outside (its internals are its own), and
    counting live streams so a replaced engine is closed only once it is idle."""

    def __init__(self, engine: Any, metrics: _Metrics):
        self.engine, self.metrics, self.active = engine, metrics, 0
        self.idle = asyncio.Event()
        self.idle.set()

    async def generate(self, request: GenerationRequest) -> AsyncIterator[TokenOut]:
        self.active += 1
        self.idle.clear()
        start, first, n = time.perf_counter(), None, 0
        try:
            async for out in self.engine.generate(request):
                if first is None:
                    first = time.perf_counter()
                    self.metrics.ttft_ms.observe((first - start) * 1000)
                n += 1
                yield out
        finally:
            self.active -= 1
            if not self.active:
                self.idle.set()
            if n:
                self.metrics.tokens_per_s.observe(n / max(time.perf_counter() - start, 1e-6))

    async def close(self) -> None:
        await self.idle.wait()
        await self.engine.close()


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
    """The key from the variable the config names; then secrets leave the environment,
    so the candidate's code, which runs in this process, cannot read them."""
    from vibeserve_ray.runner import SECRET_ENV

    name = os.environ.get(API_KEY_ENV_VAR)
    key = os.environ.get(name) if name else None
    if name and not key:
        raise RuntimeError(f"{API_KEY_ENV_VAR} names {name}, which is not set on this node: refusing to serve without the key")
    for var in [v for v in os.environ if SECRET_ENV.search(v) and not v.startswith("RAY_")]:
        del os.environ[var]
    return key


@serve.deployment(name=DEPLOYMENT_NAME, user_config={"knobs": {}}, max_constructor_retry_count=2, health_check_period_s=5)
@serve.ingress()
class VibeServer:
    """One replica: the candidate's engine, the shared front, knobs via `reconfigure`.

    The engine is built by the first `reconfigure` (Serve calls it before the replica
    takes traffic; the default user_config makes sure it does), so it is built once,
    with the knobs the config names.
    """

    def __init__(self, args: dict | ServeArgs):
        from vibeserve_ray.serve.front import OpenAIFront

        self.args = parse_args(args)
        api_key = _api_key()  # before any candidate code is imported
        self.model_dir, tokenizer_dir = self.args.model_dirs()
        candidate = self.args.candidate
        if candidate == "seed":
            candidate = materialise_seed(Path(tempfile.mkdtemp(prefix="vibeserve-seed-")) / "seed")
        self.spec = load_candidate(candidate)
        self.create_engine = import_entrypoint(self.spec)
        self.metrics = _Metrics(serve.get_replica_context().deployment)
        self.knobs: dict | None = None
        self.generation = 0
        self.front = OpenAIFront(None, tokenizer_dir, self.args.served_name, api_key=api_key)

    def __serve_build_asgi_app__(self):
        from vibeserve_ray.serve.app import build_app

        app = build_app(self.front)
        app.add_middleware(_CountRequests, metrics=self.metrics)
        return app

    async def reconfigure(self, user_config: dict) -> None:
        """New knobs build a new engine; requests in flight finish on the old one, which
        is closed once idle. Unknown knobs fail the update and leave the engine as it was."""
        knobs = dict((user_config or {}).get("knobs") or {})
        unknown = sorted(set(knobs) - set(self.spec.knobs))
        if unknown:
            raise ValueError(f"user_config.knobs.{unknown[0]}: unknown knob (the candidate has {', '.join(sorted(self.spec.knobs))})")
        wanted = {**self.spec.knobs, **knobs}
        if wanted == self.knobs:
            return
        # Built on the event loop's thread, as the evaluator's worker builds it: an engine
        # may bind to the running loop in its constructor.
        engine = self.create_engine(str(self.model_dir), self.args.device, dict(wanted))
        old, self.front.engine = self.front.engine, _MeteredEngine(engine, self.metrics)
        self.knobs, self.generation = wanted, self.generation + 1
        if old is not None:
            self._retiring = asyncio.create_task(old.close())

    async def describe(self) -> dict:
        """What this replica runs (through a handle: `handle.describe.remote()`)."""
        return {"pid": os.getpid(), "candidate": str(self.spec.path), "design": self.spec.design, "knobs": self.knobs,
                "engine_generation": self.generation, "served_name": self.args.served_name}

    async def __del__(self):
        engine = getattr(getattr(self, "front", None), "engine", None)
        if engine is not None:
            await engine.close()


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
