"""The inner loop: implement -> judge -> evaluate, for one candidate, anywhere in the cluster.

Runs as one Ray task holding the target's resources. The candidate tree arrives as tar
bytes through the object store and leaves the same way (no shared filesystem); the
driver alone writes git and the results table. Whatever the candidate does, this
returns an `InnerResult` with a verdict: failures are results, not exceptions.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vibeserve_ray.agents.offline import OfflineImplementer, Proposal
from vibeserve_ray.candidate import load_candidate
from vibeserve_ray.errors import BadInput
from vibeserve_ray.search.state import extract_tree, pack_dir
from vibeserve_ray.target import load_target


@dataclass(frozen=True)
class InnerTask:
    eval_id: str
    island: int
    round: int
    parent: str  # commit the candidate starts from
    parent_tree: bytes
    proposal: Proposal | None  # None: evaluate the parent as it is (the seed)
    warm_knobs: dict[str, Any]
    target_path: str
    space_path: str
    n_trials: int
    implementer: str = "offline"
    noop_seconds: float | None = None  # a no-op judge+evaluator that takes this long: orchestration tests and overhead benchmarks


@dataclass(frozen=True)
class InnerResult:
    eval_id: str
    island: int
    round: int
    parent: str
    tree: bytes  # the candidate as implemented and tuned
    message: str
    design: dict[str, str]
    knobs: dict[str, Any]
    verdict: str  # validated | rejected | failed
    failure_phase: str = ""
    failure_reason: str = ""
    headline_name: str = ""
    headline_value: float = float("nan")
    slo_passed: bool = False
    metrics: dict[str, Any] = field(default_factory=dict)
    hints: list[dict] = field(default_factory=list)
    trials: list[dict] = field(default_factory=list)
    started_at: float = 0.0
    finished_at: float = 0.0
    implement_s: float = 0.0
    judge_s: float = 0.0
    evaluate_s: float = 0.0
    node: str = ""
    attempt: int = 0
    implementer: str = "offline"


def _ray_context() -> tuple[str, int]:
    try:
        import ray

        ctx = ray.get_runtime_context()
        # Ray keeps the attempt number on the core worker only (no public accessor in 2.60).
        attempt = getattr(ray._private.worker.global_worker.core_worker, "get_current_task_attempt_number", lambda: 0)()
        return ctx.get_node_id() or "", int(attempt or 0)
    except Exception:  # noqa: BLE001 - outside Ray (tests, benchmarks) there is no context
        return "", 0


def run_inner_loop(task: InnerTask) -> InnerResult:
    """One candidate's whole inner loop; never raises for what the candidate does."""
    from vibeserve_ray.design_space import load_space
    from vibeserve_ray.judge.judge import judge
    from vibeserve_ray.search.evaluator import evaluate

    started = time.time()
    node, attempt = _ray_context()
    say = lambda line: print(f"[{task.eval_id[:8]} island {task.island}] {line}", flush=True)  # noqa: E731
    work = Path(tempfile.mkdtemp(prefix=f"vibeserve-inner-{task.eval_id[:8]}-"))
    parent_dir = extract_tree(task.parent_tree, work / "parent")
    cand_dir = extract_tree(task.parent_tree, work / "candidate")
    base = dict(eval_id=task.eval_id, island=task.island, round=task.round, parent=task.parent, started_at=started, node=node, attempt=attempt,
                implementer=task.implementer)
    timings = {"implement_s": 0.0, "judge_s": 0.0, "evaluate_s": 0.0}

    def result(verdict: str, message: str, **kw: Any) -> InnerResult:
        spec = load_candidate(cand_dir)
        out = InnerResult(**base, tree=pack_dir(cand_dir), message=message, design=spec.design, knobs=spec.knobs, verdict=verdict,
                          finished_at=time.time(), **timings, **kw)
        shutil.rmtree(work, ignore_errors=True)
        return out

    try:
        target = load_target(task.target_path)
        space = load_space(task.space_path)
        t0 = time.time()
        message = "seed" if task.proposal is None else OfflineImplementer([]).implement(task.proposal, cand_dir)
        timings["implement_s"] = time.time() - t0
        spec = load_candidate(cand_dir)
        problems = space.validate(spec.design, spec.knobs, target.spec.hardware.device)
        if problems:
            return result("rejected", message, failure_phase="design", failure_reason="; ".join(problems))
        if task.noop_seconds is not None:
            time.sleep(task.noop_seconds)
            value = 1.0 + len(json.dumps(spec.design, sort_keys=True)) % 7  # deterministic, distinct per design
            return result("validated", message, headline_name=target.spec.benchmark.headline, headline_value=value, slo_passed=True)
        t0 = time.time()
        say(f"judge: {message}")
        verdict = judge(target, spec, None if task.proposal is None else parent_dir, work / "judge", say=say)
        timings["judge_s"] = time.time() - t0
        if not verdict.passed:
            return result(verdict.verdict, message, failure_phase=verdict.gate, failure_reason=verdict.reason)
        t0 = time.time()
        outcome = evaluate(target, spec, work / "eval", space.active_knobs(spec.design), task.warm_knobs, task.n_trials, say=say)
        timings["evaluate_s"] = time.time() - t0
        trials = [{"knobs": t.knobs, "value": t.value, "slo_passed": t.slo_passed, "distributions": t.distributions} for t in outcome.trials]
        if outcome.best is None:
            f = outcome.failure
            return result("failed" if f and f.phase != "evaluate-sample" else "rejected", message, failure_phase=f.phase if f else "evaluate",
                          failure_reason=f.reason if f else "no trial finished", trials=trials)
        b = outcome.best
        return result("validated", message, headline_name=target.spec.benchmark.headline, headline_value=b.value, slo_passed=b.slo_passed,
                      metrics=b.metrics, hints=outcome.hints, trials=trials)
    except BadInput as exc:
        return result("rejected", "bad candidate", failure_phase="contract", failure_reason=str(exc))
    except Exception as exc:  # noqa: BLE001 - a bug must be a recorded result, not a crashed search
        tb = traceback.format_exc(limit=5)
        return result("failed", "inner loop error", failure_phase="inner-loop", failure_reason=f"{type(exc).__name__}: {exc}\n{tb}")


def inner_loop_options(num_cpus: float, num_gpus: float, accelerator_type: str | None) -> dict[str, Any]:
    """Ray options that hold the target's resources; system failures (a lost node) retry."""
    opts: dict[str, Any] = {"num_cpus": num_cpus, "num_gpus": num_gpus, "max_retries": 3, "retry_exceptions": False}
    if accelerator_type:
        opts["accelerator_type"] = accelerator_type
    opts["runtime_env"] = {"env_vars": {"PYTHONDONTWRITEBYTECODE": "1", "VIBESERVE_CACHE": os.environ.get("VIBESERVE_CACHE", "")}} \
        if os.environ.get("VIBESERVE_CACHE") else {"env_vars": {"PYTHONDONTWRITEBYTECODE": "1"}}
    return opts
