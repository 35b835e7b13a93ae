"""The Performance Evaluator: measure a validated candidate, tune its knobs, leave hints.

Each Optuna trial starts the candidate with one knob setting and runs the target's
benchmark through the HTTP front (TPE, warm-started from the parent's best knobs,
SLOs as constraints). The best trial's responses are then compared, on a secretly
chosen sample, with the reference: a candidate cannot be right while checked and
cut corners while measured.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import optuna

from vibeserve_ray.bench import BenchReport
from vibeserve_ray.candidate import CandidateSpec, load_candidate, write_candidate_toml
from vibeserve_ray.judge.checker import Completion, compare
from vibeserve_ray.measure import bench_candidate, target_workload
from vibeserve_ray.reference import reference_outputs
from vibeserve_ray.runner import CandidateFailure
from vibeserve_ray.target import Target
from vibeserve_ray.tinymodel import cache_dir

SECRET_SAMPLE = 4


@dataclass(frozen=True)
class Trial:
    knobs: dict[str, Any]
    value: float  # the headline; nan when the trial failed
    slo_passed: bool = False
    metrics: dict[str, Any] = field(default_factory=dict)
    failure: CandidateFailure | None = None
    report: BenchReport | None = field(default=None, repr=False, compare=False)
    distributions: dict[str, str] = field(default_factory=dict)  # Optuna's JSON, so the driver can store the study


@dataclass(frozen=True)
class Outcome:
    best: Trial | None
    trials: list[Trial]
    hints: list[dict]
    failure: CandidateFailure | None = None  # set when no trial produced a sound measurement


def _better(a: float, b: float, direction: str) -> bool:
    return a > b if direction == "maximize" else a < b


def sample_matches_reference(target: Target, report: BenchReport) -> str:
    """'' when a secret sample of the benchmark's responses equals the reference's greedy
    tokens (near-ties forgiven as in the checker), else why not."""
    c = target.spec.checker
    requests = target_workload(target)
    done = [(i, r) for i, r in enumerate(report.results) if r.success]
    picked = random.SystemRandom().sample(done, min(SECRET_SAMPLE, len(done)))
    for i, result in picked:
        req = requests[i]
        [ref] = reference_outputs(target.spec.reference.kind, target.model_dir(), target.spec.reference.dtype, [req.prompt_token_ids],
                                  req.max_tokens, cache_root=cache_dir())
        status, step, reason = compare(ref, Completion(list(result.output_token_ids), []), c.tolerance, c.logprob_tolerance)
        if status == "mismatch":
            return f"benchmark request {i} differs from the reference at token {step}: {reason}"
    return ""


def _suggest(trial: optuna.Trial, knob) -> Any:
    if knob.kind == "categorical":
        return trial.suggest_categorical(knob.name, list(knob.choices))
    if knob.kind == "int":
        return trial.suggest_int(knob.name, int(knob.low), int(knob.high), log=knob.log)
    return trial.suggest_float(knob.name, float(knob.low), float(knob.high), log=knob.log)


def evaluate(target: Target, spec: CandidateSpec, workdir: Path, active_knobs: list, warm_knobs: dict[str, Any], n_trials: int,
             say: Callable[[str], None] = lambda s: None) -> Outcome:
    """Tunes the candidate's active knobs with `n_trials` benchmark runs; the best is
    written back into its candidate.toml."""
    b = target.spec.benchmark
    names = {k.name for k in active_knobs}
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = optuna.samplers.TPESampler(seed=0)  # reads each trial's constraints (set_constraint): SLOs
    study = optuna.create_study(direction=b.direction, sampler=sampler)
    for start in (warm_knobs, spec.knobs):
        enqueue = {k: v for k, v in start.items() if k in names}
        if enqueue:
            study.enqueue_trial(enqueue, skip_if_exists=True)
    trials: list[Trial] = []
    for n in range(max(1, n_trials)):
        ot = study.ask()
        knobs = {**spec.knobs, **{k.name: _suggest(ot, k) for k in active_knobs}}
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
        violations = [v.value / v.bound - 1 if v.kind == "max" else 1 - v.value / v.bound for v in result.slo_violations]
        ot.set_constraint("slo", max(violations, default=0.0))  # > 0: infeasible, by how far the worst SLO is missed
        study.tell(ot, result.headline_value)
        trials.append(Trial(knobs, result.headline_value, result.slo_passed, result.metrics.to_dict(), report=result, distributions=dists))
        say(f"evaluate: trial {n + 1}: {result.headline_name} = {result.headline_value:.2f}, slo {'ok' if result.slo_passed else 'missed'}")
    measured = [t for t in trials if t.report is not None]
    if not measured:
        write_candidate_toml(spec.path, spec.entrypoint, spec.design, spec.knobs)
        return Outcome(None, trials, [], trials[-1].failure)
    best = max(measured, key=lambda t: (t.slo_passed, t.value if b.direction == "maximize" else -t.value))
    write_candidate_toml(spec.path, spec.entrypoint, spec.design, best.knobs)
    assert best.report is not None
    problem = sample_matches_reference(target, best.report)
    if problem:
        return Outcome(None, trials, [], CandidateFailure("evaluate-sample", problem))
    return Outcome(best, trials, hints_for(target, spec.design, best))


def hints_for(target: Target, design: dict[str, str], best: Trial) -> list[dict]:
    """What the measurement suggests trying next, each with the design change it points at."""
    m, b = best.metrics, target.spec.benchmark
    hints = []
    if design.get("scheduler") == "serial" and b.concurrency > 1:
        wait = m.get("mean_ttft_ms", 0) / max(m.get("mean_e2el_ms", 1), 1e-9)
        hints.append({"text": f"requests queue behind each other (TTFT is {wait:.0%} of e2e latency at concurrency {b.concurrency}): batch them",
                      "suggest": {"scheduler": "continuous"}, "weight": 3.0})
    if design.get("kv_cache") == "dynamic":
        hints.append({"text": "the KV cache grows by concatenation every step: preallocate it", "suggest": {"kv_cache": "slab"}, "weight": 1.0})
    synthetic = b.synthetic
    if synthetic is not None and synthetic.shared_prefix_len > 0 and design.get("prefix_cache") != "on":
        hints.append({"text": f"every prompt shares a {synthetic.shared_prefix_len}-token prefix that is prefilled again each time",
                      "suggest": {"kv_cache": "paged", "prefix_cache": "on"}, "weight": 3.0})
    if b.dataset is not None and design.get("speculation") == "off":
        if any(r.prediction for r in target_workload(target)[:8]):
            hints.append({"text": "requests carry a predicted output: verify it instead of decoding token by token",
                          "suggest": {"speculation": "prompt_lookup"}, "weight": 3.0})
    if m.get("mean_tpot_ms", 0) > 0 and design.get("compile") == "off":
        hints.append({"text": f"decode step costs {m['mean_tpot_ms']:.1f} ms/token; fewer, fused ops may help", "suggest": {"compile": "on"}, "weight": 0.5})
    return hints
