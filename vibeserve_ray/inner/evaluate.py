"""The Performance Evaluator: measure a validated candidate, tune its knobs, leave hints.

A measurement starts the candidate and runs the target's benchmark through the same
HTTP front it is served with, then holds the benchmark's own responses to the target's
accuracy contract (all of them on CPU targets). Tuning runs one measurement per Optuna
trial (TPE, warm-started from the parent's best knobs, SLOs as constraints); a trial whose
responses fail the contract rejects the candidate.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import urllib.parse
import zlib

import aiohttp
import optuna

from vibeserve_ray.bench import OPENAI, BenchReport, Dialect, Request, run_benchmark_async, served_models
from vibeserve_ray.candidate import CandidateSpec, load_candidate, write_candidate_toml
from vibeserve_ray.errors import BadInput
from vibeserve_ray.inner.hints import Hint, hints_for
from vibeserve_ray.inner.judge.verdict import Accuracy
from vibeserve_ray.inner.judge.responses import check_responses
from vibeserve_ray.inner.tune import Climb
from vibeserve_ray.inner.workload import target_workload
from vibeserve_ray.runner import CandidateFailed, CandidateFailure, CandidateProcess, Limits, start_candidate
from vibeserve_ray.target import Target

ACCURACY_GATE = "accurate-responses"  # the failure phase of a measurement whose responses fail the accuracy contract


# --- one measurement -------------------------------------------------------------------


@dataclass(frozen=True)
class Endpoint:
    """A server to send the benchmark to: what `bench_running` reads of a running candidate,
    for a server this project did not start (vLLM, SGLang, llama.cpp, a Serve deployment)."""

    base_url: str
    served_name: str
    limits: Limits
    dialect: Dialect = OPENAI  # how it is asked for token ids (llama.cpp's server: LLAMA_CPP)


def _dialect(proc: CandidateProcess | Endpoint) -> Dialect:
    return proc.dialect if isinstance(proc, Endpoint) else OPENAI  # every candidate runs behind our OpenAI front


@dataclass(frozen=True)
class Measurement:
    """A benchmark run and how its responses meet the target's accuracy contract."""

    report: BenchReport
    accuracy: Accuracy


async def warm_up(proc: CandidateProcess | Endpoint, target: Target, requests: list[Request], say: Callable[[str], None]) -> None:
    """The target's warm-up requests, not measured."""
    b = target.spec.benchmark
    if b.warmup_requests:
        say(f"bench: {b.warmup_requests} warm-up requests")
        # One alone, then the rest together: a compiled step sees both a lone one-token decode and a
        # batch before the clock starts (torch.compile recompiled for the lone step inside the measured window).
        for batch in (requests[:1], requests[1: b.warmup_requests]):
            if batch:
                await run_benchmark_async(proc.base_url, proc.served_name, batch, b.concurrency, float("inf"),
                                          b.seed, proc.limits.request_timeout_s, b.headline, {}, progress=lambda line: None,
                                          dialect=_dialect(proc))


async def bench_running(proc: CandidateProcess | Endpoint, target: Target, requests: list[Request], say: Callable[[str], None],
                        warm: bool = True) -> BenchReport:
    """Warm-up requests (unless `warm` is False: the caller did them), then the benchmark proper."""
    b = target.spec.benchmark
    if warm:
        await warm_up(proc, target, requests, say)
    say(f"bench: {len(requests)} requests, concurrency {b.concurrency}, rate {b.request_rate:g}/s")
    return await run_benchmark_async(proc.base_url, proc.served_name, requests, b.concurrency, b.request_rate, b.seed,
                                     proc.limits.request_timeout_s, b.headline, dict(b.slo), progress=say, goodput=b.goodput,
                                     dialect=_dialect(proc))


def bench_candidate(target: Target, spec: CandidateSpec, workdir: Path, *, num_requests: int | None = None,
                    limits: Limits | None = None, knobs: dict | None = None, say: Callable[[str], None] = lambda s: None) -> Measurement | CandidateFailure:
    """Starts the candidate (`knobs` over its own), benchmarks it, stops it, and checks its
    responses against the reference; a failure is returned, not raised (responses that fail
    the accuracy contract are not a failure: the caller decides what they mean)."""
    requests = target_workload(target, num_requests)
    limits = limits or Limits(**target.spec.limits.model_dump())
    try:
        with start_candidate(spec, target.model_dir(), target.tokenizer_dir(), target.served_name, target.spec.hardware.device,
                             limits, workdir, knobs=knobs) as proc:
            report = asyncio.run(bench_running(proc, target, requests, say))
            if report.metrics.completed == 0:
                return proc.explain("bench", "no request completed")
            if report.metrics.failed and (died := proc.explain("bench", "")).phase != "bench":
                return died  # the engine died (or was killed) mid-run: a failed measurement, not a slow one
    except CandidateFailed as exc:
        return exc.failure
    say("bench: comparing the responses with the reference")
    return Measurement(report, check_responses(target, requests, report.results))


def bench_url(target: Target, url: str, model: str | None = None, *, num_requests: int | None = None,
              say: Callable[[str], None] = lambda s: None) -> Measurement:
    """The target's benchmark against an OpenAI-compatible server at `url`, its responses
    held to the target's accuracy contract as a candidate's are (the server must return
    token ids, as vLLM does with `return_token_ids`). An unreachable server or an unknown
    model is BadInput."""
    base = _base_url(url)
    try:
        models = asyncio.run(served_models(base))
    except (aiohttp.ClientError, OSError, asyncio.TimeoutError, ValueError, KeyError, TypeError) as exc:
        raise BadInput("command line", "--url", f"cannot list models at {base}/v1/models: {type(exc).__name__}: {exc}") from None
    if model is None and not models:
        raise BadInput("command line", "--url", f"{base}/v1/models lists no model")
    if model is not None and model not in models:
        raise BadInput("command line", "--model", f"{model!r} is not served at {base} (it serves: {', '.join(models)})")
    endpoint = Endpoint(base, model or models[0], Limits(**target.spec.limits.model_dump()))
    say(f"bench: {endpoint.base_url}, model {endpoint.served_name}")
    requests = target_workload(target, num_requests)
    report = asyncio.run(bench_running(endpoint, target, requests, say))
    say("bench: comparing the responses with the reference")
    return Measurement(report, check_responses(target, requests, report.results))


def _base_url(url: str) -> str:
    """`http://host:port`, also from the `.../v1` form OpenAI clients take."""
    parts = urllib.parse.urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise BadInput("command line", "--url", f"{url!r} is not an http(s) URL like http://127.0.0.1:8000")
    path = parts.path.rstrip("/")
    path = path[:-3] if path.endswith("/v1") else path
    return f"{parts.scheme}://{parts.netloc}{path}"


# --- tuning --------------------------------------------------------------------------


@dataclass(frozen=True)
class Trial:
    knobs: dict[str, Any]
    value: float  # the headline; nan when the trial failed
    slo_passed: bool = False
    metrics: dict[str, Any] = field(default_factory=dict)
    failure: CandidateFailure | None = None
    distributions: dict[str, str] = field(default_factory=dict)  # Optuna's JSON, so the driver can store the study

    def to_dict(self) -> dict[str, Any]:
        """As stored in the candidate's git note (and read back into its Optuna study)."""
        out = {"knobs": self.knobs, "value": self.value, "slo_passed": self.slo_passed, "distributions": self.distributions}
        return out | ({"failure": f"{self.failure.phase}: {self.failure.reason[:300]}"} if self.failure else {})


@dataclass(frozen=True)
class Evaluated:
    """What the evaluate step ends with: the best trial, every trial, and the hints."""

    best: Trial | None
    trials: list[Trial]
    hints: list[Hint]
    failure: CandidateFailure | None = None  # set when no trial produced a sound measurement


def _suggest(trial: optuna.Trial, knob, cores: int) -> Any:
    if knob.kind == "categorical":
        return trial.suggest_categorical(knob.name, list(knob.choices))
    if knob.kind == "int":
        return trial.suggest_int(knob.name, int(knob.low), int(knob.upper(cores)), log=knob.log)
    return trial.suggest_float(knob.name, float(knob.low), float(knob.high), log=knob.log)


def sampler_seed(design: dict[str, str], warm_knobs: dict[str, Any]) -> int:
    """Deterministic per candidate (its design and the knobs it starts from)."""
    return zlib.crc32(json.dumps([design, warm_knobs], sort_keys=True, default=str).encode())


def evaluate(target: Target, spec: CandidateSpec, workdir: Path, active_knobs: list, warm_knobs: dict[str, Any], n_trials: int,
             say: Callable[[str], None] = lambda s: None, moves: list[dict[str, Any]] | None = None, deadline: float = math.inf) -> Evaluated:
    """Tunes the candidate's active knobs with `n_trials` measurements; the best is written
    back into its candidate.toml. A trial whose responses fail the accuracy contract ends it.
    With `moves` (the finalist's tuning pass), the trials measure `warm_knobs` again, then
    each move over the best knobs so far, then TPE's.
    No trial starts that would end past `deadline` (unix time) at the pace of the slowest so far."""
    b = target.spec.benchmark
    objective = b.objective
    names = {k.name for k in active_knobs}
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # reads each trial's constraints (set_constraint): SLOs. Seeded by the candidate, so
    # candidates do not all draw the same first random knobs (one seed for all did).
    sampler = optuna.samplers.TPESampler(seed=sampler_seed(spec.design, warm_knobs))
    study = optuna.create_study(direction=objective.direction, sampler=sampler)
    for start in (warm_knobs, spec.knobs) if moves is None else ():
        enqueue = {k: v for k, v in start.items() if k in names}
        if enqueue:
            study.enqueue_trial(enqueue, skip_if_exists=True)
    trials: list[Trial] = []
    climb = Climb(warm_knobs, objective, list(moves), names) if moves is not None else None
    slowest, started = 0.0, time.time()
    for n in range(max(1, n_trials)):
        slowest = max(slowest, time.time() - started) if n else 0.0
        if n and time.time() + slowest > deadline:
            say(f"evaluate: {n} trials; another would end past the deadline")
            break
        started = time.time()
        if climb is not None and (point := climb.next_point(trials)) is not None:
            study.enqueue_trial(point)
        ot = study.ask()
        knobs = {**spec.knobs, **{k.name: _suggest(ot, k, int(target.spec.hardware.num_cpus)) for k in active_knobs}}
        dists = {k: optuna.distributions.distribution_to_json(d) for k, d in ot.distributions.items()}
        write_candidate_toml(spec.path, spec.entrypoint, spec.design, knobs)
        say(f"evaluate: trial {n + 1}/{n_trials} knobs {({k: knobs[k] for k in sorted(names)})}")
        result = bench_candidate(target, load_candidate(spec.path), workdir / f"trial{n}", say=lambda s: None)
        if isinstance(result, CandidateFailure):
            ot.set_constraint("failed", 1.0)
            study.tell(ot, state=optuna.trial.TrialState.FAIL)
            trials.append(Trial(knobs, math.nan, failure=result, distributions=dists))
            say(f"evaluate: trial {n + 1} failed ({result.phase}): {result.reason}")
            continue
        report = result.report
        if not result.accuracy.ok:
            study.tell(ot, state=optuna.trial.TrialState.FAIL)
            trials.append(Trial(knobs, math.nan, distributions=dists))
            write_candidate_toml(spec.path, spec.entrypoint, spec.design, spec.knobs)
            return Evaluated(None, trials, [], CandidateFailure(ACCURACY_GATE, f"trial {n + 1}: {result.accuracy.summary()}"))
        violations = [v.value / v.bound - 1 if v.kind == "max" else 1 - v.value / v.bound for v in report.slo_violations]
        ot.set_constraint("slo", max(violations, default=0.0))  # > 0: infeasible, by how far the worst SLO is missed
        study.tell(ot, report.headline_value)
        trials.append(Trial(knobs, report.headline_value, report.slo_passed, report.metrics.to_dict(), distributions=dists))
        say(f"evaluate: trial {n + 1}: {report.headline_name} = {report.headline_value:.2f}, slo {'ok' if report.slo_passed else 'missed'}, "
            f"{result.accuracy.summary()}")
    measured = [t for t in trials if t.failure is None]
    if not measured:
        write_candidate_toml(spec.path, spec.entrypoint, spec.design, spec.knobs)
        return Evaluated(None, trials, [], trials[-1].failure)
    best = max(measured, key=lambda t: (t.slo_passed, objective.score(t.value)))
    write_candidate_toml(spec.path, spec.entrypoint, spec.design, best.knobs)
    return Evaluated(best, trials, hints_for(target, spec.design, best.metrics, target_workload(target)))
