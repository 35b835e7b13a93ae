"""Recording results: commit, tag, note, table row, in that order, so a crash loses nothing.

The git note is written before the table row: on restart `reconcile` re-adds any row
the notes have and the table lacks, so results.parquet and git always agree.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from pathlib import Path

from vibeserve_ray.agents.ledger import ApiUsage
from vibeserve_ray.candidate import load_candidate
from vibeserve_ray.design_space import DesignSpace
from vibeserve_ray.inner.implement import apply_design, skill_knobs
from vibeserve_ray.inner.result import InnerResult
from vibeserve_ray.inner.task import InnerTask
from vibeserve_ray.search.islands import Member
from vibeserve_ray.search.results import (RESULTS_FILE, Evaluation, ResultsUnreadable, append_result, read_results, rebuild_from_notes,
                                          set_aside)
from vibeserve_ray.search.state import TRANSCRIPTS_BRANCH, RunRepo
from vibeserve_ray.search.studies import rebuild_studies, save_study, study_name
from vibeserve_ray.target import Objective, Target
from vibeserve_ray.trees import extract_tree, pack_dir

RUNNING_FILE = "running.json"


def reconcile(run_dir: Path, repo: RunRepo) -> list[Evaluation]:
    """The evaluations as git's notes say; the table is rebuilt when it disagrees (or
    cannot be read: it is set aside)."""
    try:
        rows = read_results(run_dir)
    except ResultsUnreadable:
        set_aside(run_dir / RESULTS_FILE)
        rows = []
    notes = repo.all_notes()
    noted = {rec["eval_id"] for recs in notes.values() for rec in recs}
    if noted != {r.eval_id for r in rows}:
        rows = rebuild_from_notes(run_dir, notes)
    return rows


def keep_candidates(repo: RunRepo, rows: list[Evaluation]) -> None:
    """Tags every recorded candidate's commit that has no tag yet: a run recorded before
    each candidate was tagged keeps its commits from `git gc` once resumed. The driver's
    alone (a reader tagging at the same moment could fail the driver's tag)."""
    tagged = repo.candidate_tags()
    missing = {r.eval_id: r.commit for r in rows if r.eval_id not in tagged}
    if missing:
        repo.tag_candidates(missing)


def member(row: Evaluation) -> Member:
    return Member(row.commit, row.design, row.knobs, row.verdict, row.headline_value, row.hints, row.failure_phase)


TUNE = "tune"  # the implementer of the finalist's tuning pass


def best(rows: list[Evaluation], objective: Objective) -> Evaluation | None:
    """The best validated candidate by its headline. A tuning pass that found knobs faster
    than its parent's own, both measured in the pass, supersedes the parent: its figure may
    sit below the parent's older one when the machine slowed between them, but the
    comparison within the pass is the fair one."""
    valid = [r for r in rows if r.validated and not math.isnan(r.headline_value)]
    knobs = {r.commit: r.knobs for r in valid}
    superseded = {r.parent for r in valid if r.implementer == TUNE and r.parent in knobs and r.knobs != knobs[r.parent]}
    valid = [r for r in valid if r.commit not in superseded]
    if not valid:
        return None
    return max(valid, key=lambda r: objective.score(r.headline_value))


def record_result(run_dir: Path, repo: RunRepo, result: InnerResult, rows: list[Evaluation], target: Target,
                  commit_override: str | None = None, usage: dict[str, ApiUsage] | None = None) -> Evaluation:
    """Commits the candidate (parent = where it came from), tags it, commits its agents'
    transcripts, notes the evaluation, appends the row. `usage`: what its agents' calls cost, by role (the gateway's ledger)."""
    with tempfile.TemporaryDirectory() as tmp:
        tree_dir = extract_tree(result.tree, Path(tmp) / "c")
        if commit_override:
            commit = commit_override
        else:
            message = f"{result.message}\n\nverdict: {result.verdict}" + (f" ({result.failure_phase}: {result.failure_reason[:200]})" if result.failure_phase else "")
            commit = repo.commit_candidate(tree_dir, result.parent, message, branch=f"island-{result.island}")
    repo.tag_candidates({result.eval_id: commit})  # kept from `git gc` whatever becomes of its branch
    if result.transcripts:
        repo.write_files(TRANSCRIPTS_BRANCH, {f"{commit}/{role}.json": text for role, text in result.transcripts.items()},
                         f"transcripts of {commit[:12]}")
    objective = target.spec.benchmark.objective
    seed = next((r for r in rows if r.implementer == "seed"), None)
    seed_value = seed.headline_value if seed else result.headline_value
    row = Evaluation(**result.outcome() | dict(
        commit=commit, tree=repo.tree_id(commit), parent=result.parent if not commit_override else "",
        implementer="seed" if commit_override else result.implementer,
        failure_reason=result.failure_reason[:2000], headline_value=float(result.headline_value),
        speedup=objective.speedup(result.headline_value, seed_value),
    ) | _agent_columns(usage or {}, result.session_s))
    trials = [t.to_dict() for t in result.trials]
    repo.add_note(commit, row.to_record() | {"trials": trials})
    if not append_result(run_dir, row, known=len(rows)):  # the table was lost or damaged: the notes have every row, this one too
        rebuild_from_notes(run_dir, repo.all_notes())
    if trials and not save_study(run_dir, study_name(row.island, commit), objective.direction, trials):
        rebuild_studies(run_dir, repo.all_notes(), objective.direction)  # optuna.db was no database: set aside, made again
    return row


def _agent_columns(usage: dict[str, ApiUsage], session_s: dict[str, float]) -> dict:
    total = sum(usage.values(), ApiUsage())
    per_role = {role: u.to_dict() | {"session_s": round(session_s.get(role, 0.0), 3)} for role, u in sorted(usage.items())}
    return dict(agent_calls=total.calls, agent_input_tokens=total.input_tokens, agent_cache_write_tokens=total.cache_write_tokens,
                agent_cache_read_tokens=total.cache_read_tokens, agent_output_tokens=total.output_tokens, agent_cost_usd=total.cost_usd,
                agent_s=sum(session_s.values()), agent_usage=per_role)


def lost_result(repo: RunRepo, task: InnerTask, target: Target, space: DesignSpace, reason: str, verdict: str = "failed") -> InnerResult:
    """A result for an inner loop that never returned (timed out, or its retries ran out):
    the proposal applied to the parent, so what was attempted is still in git."""
    with tempfile.TemporaryDirectory() as tmp:
        cand = extract_tree(task.parent_tree, Path(tmp) / "c")
        if task.tune:
            message = f"tune: knob moves over {task.parent[:12]}'s"
        elif task.proposal is None:
            message = "seed"
        elif task.proposal.hypothesis is not None:  # what the agent wrote is lost with its worker: the parent's tree, and the hypothesis
            message = f"{task.implementer}: {task.proposal.hypothesis.brief()}"
        else:  # as the offline implementer wrote it, the knobs its skills set included
            message = apply_design(task.proposal, cand, skill_knobs(task.proposal, target, space))
        spec = load_candidate(cand)
        now = time.time()
        return InnerResult(eval_id=task.eval_id, island=task.island, round=task.round, parent=task.parent, tree=pack_dir(cand),
                           message=message, design=spec.design, knobs=spec.knobs, verdict=verdict, failure_phase="inner-loop",
                           failure_reason=reason, started_at=now, finished_at=now, implementer=task.implementer)


def write_running(run_dir: Path, running: list[dict]) -> None:
    tmp = run_dir / (RUNNING_FILE + ".tmp")
    tmp.write_text(json.dumps(running, indent=2))
    tmp.replace(run_dir / RUNNING_FILE)


def revert_if_slower(repo: RunRepo, rnd: int, results: list[Evaluation], overall: Evaluation | None, objective: Objective,
                     n_islands: int) -> list[str]:
    """A round that was correct but slower moves its island back to the best checkpoint."""
    notes = []
    if overall is None:
        return notes
    for island in range(n_islands):
        mine = [r for r in results if r.island == island and r.validated]
        if not mine or any(r.commit == overall.commit for r in mine):
            continue
        round_best = best(mine, objective)
        assert round_best is not None
        repo.set_branch(f"island-{island}", overall.commit)
        notes.append(f"round {rnd}: island {island} was correct but slower ({round_best.headline_value:.2f} vs best "
                     f"{overall.headline_value:.2f}): reverted island-{island} to {overall.commit[:12]}")
    return notes


def progress_line(rnd: int, rounds: int, results: list[Evaluation], overall: Evaluation | None, rows: list[Evaluation], elapsed: float) -> str:
    counts = {v: sum(r.verdict == v for r in results) for v in ("validated", "rejected", "failed", "timeout")}
    parts = ", ".join(f"{n} {v}" for v, n in counts.items() if n)
    head = f"round {rnd}/{rounds}: {len(results)} evaluated ({parts or 'none'})"
    if overall is not None:
        head += f"; best {overall.headline_name} {overall.headline_value:.2f} ({overall.speedup:.2f}x seed) at {overall.commit[:12]}"
    return head + f"; {len(rows)} evaluations in all, {elapsed / 60:.1f} min elapsed"
