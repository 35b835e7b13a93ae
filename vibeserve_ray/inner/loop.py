"""The inner loop: implement -> judge -> evaluate, for one candidate, anywhere in the cluster.

Runs as one Ray task holding the target's resources. The candidate tree arrives as tar
bytes through the object store and leaves the same way (no shared filesystem); the
driver alone writes git and the results table. Whatever the candidate does, this
returns an `InnerResult` with a verdict: failures are results, not exceptions.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from vibeserve_ray.candidate import load_candidate
from vibeserve_ray.errors import BadInput
from vibeserve_ray.inner.hints import Hint
from vibeserve_ray.inner.implement import apply_design
from vibeserve_ray.search.propose import Proposal
from vibeserve_ray.search.state import extract_tree, pack_dir
from vibeserve_ray.target import load_target

if TYPE_CHECKING:  # the judge and the evaluator are imported where they run: a worker that only
    from vibeserve_ray.inner.evaluate import Trial  # starts an inner loop should not pay for optuna's import


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
    hints: list[Hint] = field(default_factory=list)
    trials: list[Trial] = field(default_factory=list)
    started_at: float = 0.0
    finished_at: float = 0.0
    implement_s: float = 0.0
    judge_s: float = 0.0
    evaluate_s: float = 0.0
    node: str = ""
    attempt: int = 0
    implementer: str = "offline"


InnerLoop = Callable[[InnerTask], InnerResult]


def _ray_context() -> tuple[str, int]:
    try:
        import ray

        ctx = ray.get_runtime_context()
        # Ray keeps the attempt number on the core worker only (no public accessor in 2.60).
        attempt = getattr(ray._private.worker.global_worker.core_worker, "get_current_task_attempt_number", lambda: 0)()
        return ctx.get_node_id() or "", int(attempt or 0)
    except Exception:  # noqa: BLE001 - outside Ray (tests, benchmarks) there is no context
        return "", 0


class Workspace:
    """The inner loop's scratch: the parent and the candidate unpacked side by side."""

    def __init__(self, task: InnerTask):
        self.task = task
        self.root = Path(tempfile.mkdtemp(prefix=f"vibeserve-inner-{task.eval_id[:8]}-"))
        self.parent = extract_tree(task.parent_tree, self.root / "parent")
        self.candidate = extract_tree(task.parent_tree, self.root / "candidate")
        self.started = time.time()
        self.node, self.attempt = _ray_context()
        self.timings = {"implement_s": 0.0, "judge_s": 0.0, "evaluate_s": 0.0}

    def result(self, verdict: str, message: str, **kw: Any) -> InnerResult:
        """The candidate as it now stands, with its verdict; the workspace is removed."""
        t = self.task
        try:
            spec = load_candidate(self.candidate)
            design, knobs = spec.design, spec.knobs
        except BadInput:  # an implementer broke candidate.toml: still a result, with the tree as it was left
            design, knobs = {}, {}
        out = InnerResult(eval_id=t.eval_id, island=t.island, round=t.round, parent=t.parent, tree=pack_dir(self.candidate), message=message,
                          design=design, knobs=knobs, verdict=verdict, started_at=self.started, finished_at=time.time(),
                          node=self.node, attempt=self.attempt, implementer=t.implementer, **self.timings, **kw)
        shutil.rmtree(self.root, ignore_errors=True)
        return out


def run_inner_loop(task: InnerTask) -> InnerResult:
    """One candidate's whole inner loop; never raises for what the candidate does."""
    from vibeserve_ray.design_space import load_space
    from vibeserve_ray.inner.evaluate import EXACT_GATE, evaluate
    from vibeserve_ray.inner.judge.gates import judge

    say = lambda line: print(f"[{task.eval_id[:8]} island {task.island}] {line}", flush=True)  # noqa: E731
    ws = Workspace(task)
    message = "seed"
    try:
        target = load_target(task.target_path)
        space = load_space(task.space_path)
        t0 = time.time()
        if task.proposal is not None:
            message = apply_design(task.proposal, ws.candidate)
        ws.timings["implement_s"] = time.time() - t0
        spec = load_candidate(ws.candidate)
        problems = space.validate(spec.design, spec.knobs, target.spec.hardware.device)
        if problems:
            return ws.result("rejected", message, failure_phase="design", failure_reason="; ".join(problems))

        t0 = time.time()
        say(f"judge: {message}")
        verdict = judge(target, spec, None if task.proposal is None else ws.parent, ws.root / "judge", say=say)
        ws.timings["judge_s"] = time.time() - t0
        if not verdict.passed:
            return ws.result(verdict.verdict, message, failure_phase=verdict.gate, failure_reason=verdict.reason)

        t0 = time.time()
        outcome = evaluate(target, spec, ws.root / "eval", space.active_knobs(spec.design), task.warm_knobs, task.n_trials, say=say)
        ws.timings["evaluate_s"] = time.time() - t0
        if outcome.best is None:
            f = outcome.failure
            verdict_name = "rejected" if f and f.phase == EXACT_GATE else "failed"
            return ws.result(verdict_name, message, failure_phase=f.phase if f else "evaluate", failure_reason=f.reason if f else "no trial finished",
                             trials=outcome.trials)
        b = outcome.best
        return ws.result("validated", message, headline_name=target.spec.benchmark.headline, headline_value=b.value, slo_passed=b.slo_passed,
                         metrics=b.metrics, hints=outcome.hints, trials=outcome.trials)
    except BadInput as exc:
        return ws.result("rejected", "bad candidate", failure_phase="contract", failure_reason=str(exc))
    except Exception as exc:  # noqa: BLE001 - a bug must be a recorded result, not a crashed search
        tb = traceback.format_exc(limit=5)
        return ws.result("failed", "inner loop error", failure_phase="inner-loop", failure_reason=f"{type(exc).__name__}: {exc}\n{tb}")


def inner_loop_options(num_cpus: float, num_gpus: float, accelerator_type: str | None) -> dict[str, Any]:
    """Ray options that hold the target's resources; system failures (a lost node) retry."""
    opts: dict[str, Any] = {"num_cpus": num_cpus, "num_gpus": num_gpus, "max_retries": 3, "retry_exceptions": False}
    if accelerator_type:
        opts["accelerator_type"] = accelerator_type
    env = {"PYTHONDONTWRITEBYTECODE": "1"}
    if os.environ.get("VIBESERVE_CACHE"):
        env["VIBESERVE_CACHE"] = os.environ["VIBESERVE_CACHE"]
    opts["runtime_env"] = {"env_vars": env}
    return opts
