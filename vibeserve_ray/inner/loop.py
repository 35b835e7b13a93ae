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
from pathlib import Path
from typing import Any, Callable

from vibeserve_ray.agents.session import SessionResult
from vibeserve_ray.agents.transport import via_actor
from vibeserve_ray.candidate import load_candidate
from vibeserve_ray.design_space import DesignSpace, load_space
from vibeserve_ray.errors import BadInput
from vibeserve_ray.inner.evaluate import ACCURACY_GATE, Evaluated, evaluate
from vibeserve_ray.inner.hints import Hint
from vibeserve_ray.inner.implement import apply_design, candidate_tools, implement_hypothesis, skill_knobs
from vibeserve_ray.inner.judge.gates import JudgeVerdict, judge
from vibeserve_ray.inner.judge.review import REVIEW_GATE, review_diff, tree_diff
from vibeserve_ray.inner.read import read_measurement
from vibeserve_ray.inner.result import InnerResult
from vibeserve_ray.inner.task import AgentTask, InnerTask
from vibeserve_ray.inner.tune import knob_moves
from vibeserve_ray.skills import applicable
from vibeserve_ray.target import Target, load_target
from vibeserve_ray.trees import extract_tree, pack_dir

InnerLoop = Callable[[InnerTask], InnerResult]


def _ray_context() -> tuple[str, int]:
    try:
        import ray  # ray: an inner loop also runs outside Ray (tests, benchmarks), where there is no context

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
        self.transcripts: dict[str, str] = {}
        self.session_s: dict[str, float] = {}
        self.judged: dict[str, Any] = {}  # the judge's gates and sandbox warning, once it has run

    def transcript_path(self, role: str) -> Path:
        return self.root / "transcripts" / f"{role}.json"  # outside the candidate tree

    def note(self, session: SessionResult) -> None:
        """Keeps an agent session's transcript and time for the result."""
        self.transcripts[session.transcript.role] = session.transcript.to_json()
        self.session_s[session.transcript.role] = session.seconds

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
                          node=self.node, attempt=self.attempt, implementer=t.implementer, transcripts=self.transcripts, session_s=self.session_s,
                          **self.timings, **self.judged, **kw)
        shutil.rmtree(self.root, ignore_errors=True)
        return out


def run_inner_loop(task: InnerTask) -> InnerResult:
    """One candidate's whole inner loop; never raises for what the candidate does."""
    say = lambda line: print(f"[{task.eval_id[:8]} island {task.island}] {line}", flush=True)  # noqa: E731
    ws = Workspace(task)
    message = "seed"
    try:
        target = load_target(task.target_path)
        space = load_space(task.space_path).under(target.lowest_precision)
        if task.tune:
            return _tune(task, ws, target, space, say)
        t0 = time.time()
        agents = task.agents
        if task.proposal is not None and agents is not None and task.proposal.hypothesis is not None:
            done = implement_hypothesis(task.proposal, agents, target, space, ws.candidate, ws.root / "agent-runs", task.eval_id,
                                        ws.transcript_path("implementer"), say)
            ws.note(done.session)
            message = done.message
            if done.verdict:  # disproven, blocked, or the session ended without a result
                ws.timings["implement_s"] = time.time() - t0
                return ws.result(done.verdict, message, failure_phase="implement", failure_reason=done.reason)
        elif task.proposal is not None:
            message = apply_design(task.proposal, ws.candidate, skill_knobs(task.proposal, target, space))
        ws.timings["implement_s"] = time.time() - t0
        spec = load_candidate(ws.candidate)
        problems = space.validate(spec.design, spec.knobs, target.spec.hardware.device)
        if problems:
            return ws.result("rejected", message, failure_phase="design", failure_reason="; ".join(problems))

        t0 = time.time()
        say(f"judge: {message}")
        verdict = judge(target, spec, None if task.proposal is None else ws.parent, ws.root / "judge", say=say)
        ws.judged = {"judge_gates": tuple({"gate": g.gate, "verdict": g.verdict, "seconds": round(g.seconds, 2)} for g in verdict.gates),
                     "sandbox_warning": verdict.sandbox_warning}
        if verdict.passed and agents is not None and task.proposal is not None:
            verdict = _review(agents, ws, message, say)
        ws.timings["judge_s"] = time.time() - t0
        if not verdict.passed:
            return ws.result(verdict.verdict, message, failure_phase=verdict.gate, failure_reason=verdict.reason)

        t0 = time.time()
        outcome = evaluate(target, spec, ws.root / "eval", space.active_knobs(spec.design), task.warm_knobs, task.n_trials, say=say,
                           deadline=task.deadline)
        ws.timings["evaluate_s"] = time.time() - t0
        read = None if agents is None else (lambda metrics: _read(agents, ws, target, space, spec.design, metrics, say))
        return _measured(ws, target, message, outcome, read)
    except BadInput as exc:
        return ws.result("rejected", "bad candidate", failure_phase="contract", failure_reason=str(exc))
    except Exception as exc:  # noqa: BLE001 - a bug must be a recorded result, not a crashed search
        tb = traceback.format_exc(limit=5)
        return ws.result("failed", "inner loop error", failure_phase="inner-loop", failure_reason=f"{type(exc).__name__}: {exc}\n{tb}")


def _tune(task: InnerTask, ws: Workspace, target: Target, space: DesignSpace, say: Callable[[str], None]) -> InnerResult:
    """The tuning pass: no change to judge (the parent passed the judge as it is), knob
    moves measured with every response checked against the reference."""
    spec = load_candidate(ws.candidate)
    active = space.active_knobs(spec.design)
    cores = int(target.spec.hardware.num_cpus)
    moves = knob_moves(spec.design, spec.knobs, active, cores, applicable(target))
    message = f"tune: {task.n_trials} knob moves over {task.parent[:12]}'s"
    say(f"evaluate: {message} ({len(moves)} moves)")
    t0 = time.time()
    outcome = evaluate(target, spec, ws.root / "eval", active, spec.knobs, task.n_trials, say=say, moves=moves,
                       deadline=task.deadline)
    ws.timings["evaluate_s"] = time.time() - t0
    return _measured(ws, target, message, outcome)


def _measured(ws: Workspace, target: Target, message: str, outcome: Evaluated, read: Callable[[dict], list[Hint]] | None = None) -> InnerResult:
    """The evaluator's outcome as the result: its best trial, or why none counts (a response
    that fails the accuracy contract rejects the candidate). `read`: the Evaluator agent's hints."""
    if outcome.best is None:
        f = outcome.failure
        return ws.result("rejected" if f and f.phase == ACCURACY_GATE else "failed", message, failure_phase=f.phase if f else "evaluate",
                         failure_reason=f.reason if f else "no trial finished", trials=outcome.trials)
    b = outcome.best
    hints = (read(b.metrics) if read else None) or outcome.hints
    return ws.result("validated", message, headline_name=target.spec.benchmark.headline, headline_value=b.value, slo_passed=b.slo_passed,
                     metrics=b.metrics, hints=tuple(hints), trials=outcome.trials)


def _review(agents: AgentTask, ws: Workspace, message: str, say: Callable[[str], None]) -> JudgeVerdict:
    """The Judge's review of the diff, after the deterministic gates passed."""
    say("judge: the Judge reviews the diff")
    review = review_diff(tree_diff(ws.parent, ws.candidate), message, ws.candidate, agents.roles["judge"], via_actor(agents.gateway),
                         ws.task.eval_id, ws.transcript_path("judge"), say)
    ws.note(review.session)
    return JudgeVerdict(True) if review.passed else JudgeVerdict(False, REVIEW_GATE, review.reason)


def _read(agents: AgentTask, ws: Workspace, target: Target, space: DesignSpace, design: dict[str, str], metrics: dict[str, Any],
          say: Callable[[str], None]) -> list[Hint]:
    """The Evaluator's hints on the measurement ([] when it gave none); it may profile the candidate."""
    say("evaluate: the Evaluator reads the measurement")
    [profile] = [t for t in candidate_tools(target, space, ws.candidate, ws.root / "agent-runs", say) if t.name == "profile"]
    choices = {name: c.options for name, c in space.choices.items()}
    reading = read_measurement(metrics, agents.parent_metrics, design, choices, ws.candidate, agents.roles["evaluator"],
                               via_actor(agents.gateway), ws.task.eval_id, profile, ws.transcript_path("evaluator"), say)
    ws.note(reading.session)
    return reading.hints


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
