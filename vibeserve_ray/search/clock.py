"""The search's time: its budget, how long work takes here, and what each part may spend.

One object answers every question of time the outer loop asks: may another inner loop
start, when must a candidate's trials end, is there room for the finalist's tuning pass,
is a running task overdue. Its figures come from the results as they arrive (how long
inner loops took, how long the best's trials take), so a slow machine or a slow design
shifts them without a setting.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

from vibeserve_ray.search.record import TUNE, best
from vibeserve_ray.search.results import Evaluation
from vibeserve_ray.target import Objective, Target

TRIAL_STARTUP_S = 10.0  # a trial's time outside its benchmark: the engine's start-up, the warm-up, the exactness check (CPU targets)
TUNING_MARGIN_S = 5.0  # the tuning pass's trials stop this early; the driver cancels at the limit


@dataclass(frozen=True)
class SearchBudget:
    """What a search may spend: the target's [search] budgets, after the command line."""

    rounds: int
    time_limit_s: float
    max_candidates: int | None
    candidate_time_limit_s: float
    n_trials: int
    finalist_trials: int = 0

    @classmethod
    def of(cls, target: Target, rounds: int | None = None, time_limit_s: float | None = None, max_candidates: int | None = None,
           n_trials: int | None = None) -> "SearchBudget":
        """The target's [search] budgets, each overridable (command-line flags)."""
        s = target.spec.search
        return cls(rounds=s.rounds if rounds is None else rounds, time_limit_s=time_limit_s or s.time_limit_s,
                   max_candidates=max_candidates or s.max_candidates, candidate_time_limit_s=s.candidate_time_limit_s, n_trials=n_trials or s.trials,
                   finalist_trials=s.finalist_trials)


def expected_inner_s(rows: list[Evaluation]) -> float:
    """How long an inner loop takes here: the median of the candidates finished, the seed's
    before the first (0 before that). The serial seed is the slowest design there is (a
    JSON seed's took 300 s beside its batched child's 100 s): counted among two, its time
    stopped a search that had room for two more evaluations."""
    finished = [r for r in rows if r.finished_at > r.started_at and r.implementer != TUNE]
    candidates = [r for r in finished if r.implementer != "seed"] or finished
    times = sorted(r.finished_at - r.started_at for r in candidates)
    return times[len(times) // 2] if times else 0.0


class SearchClock:
    """The search's time as it is spent. `rows` is the search's own list of results, read
    as it grows (the clock never writes it)."""

    def __init__(self, budget: SearchBudget, objective: Objective, rows: list[Evaluation], agent_session_s: float = 0.0):
        """`agent_session_s`: the wall time an inner loop's agent sessions may add to its limit."""
        self.budget, self.objective, self.rows = budget, objective, rows
        self.task_limit_s = budget.candidate_time_limit_s + agent_session_s
        self.started = time.monotonic()

    def elapsed_s(self) -> float:
        return time.monotonic() - self.started

    def left_s(self) -> float:
        """Seconds of the search's time limit left (negative once past it)."""
        return self.budget.time_limit_s - self.elapsed_s()

    def why_stop(self, agents_stop: Callable[[], str]) -> str:
        """Why the search stops now ('' to go on): its time limit, the agents' budget
        (`agents_stop`, asked only within the time limit), or its candidate budget."""
        if self.elapsed_s() > self.budget.time_limit_s:
            return "time limit"
        if spent := agents_stop():
            return spent
        if self.candidates_left() == 0:
            return "max candidates"
        return ""

    def candidates_left(self) -> int | None:
        """How many more candidates the budget allows (None: no cap)."""
        if self.budget.max_candidates is None:
            return None
        return max(0, self.budget.max_candidates - sum(r.implementer != "seed" for r in self.rows))

    # --- the evolution ---------------------------------------------------------------------

    def why_not_start(self) -> str:
        """'' while an inner loop started now would end within the evolution's share of the
        time limit (judging by how long inner loops have taken); else why not."""
        reserve, expected = self.reserve_s(), expected_inner_s(self.rows)
        left = self.left_s() - reserve
        if left < expected:
            kept = f" (and {reserve:.0f}s kept for tuning the best)" if reserve else ""
            return f"time limit: {max(left, 0):.0f}s left{kept}, an inner loop takes ~{expected:.0f}s"
        return ""

    def candidate_deadline(self) -> float:
        """Unix time a candidate starting now must end its trials by: where the evolution's
        share ends, as it stands now."""
        return time.time() + self.left_s() - self.reserve_s()

    def overdue(self, since: float) -> str:
        """'' while a task started at `since` (time.monotonic()) may run on; else why it is cancelled."""
        if self.elapsed_s() > self.budget.time_limit_s:
            return f"cancelled at the search's time limit ({self.budget.time_limit_s:g}s)"
        if time.monotonic() - since > self.task_limit_s:
            return f"no result within {self.task_limit_s:g}s"
        return ""

    # --- the finalist's tuning pass -----------------------------------------------------

    def trial_s(self) -> float:
        """How long one of the tuning pass's measurements takes: one of the best's own (a
        serial seed's or a poor design's say nothing of the winner's), at most its best
        trial's benchmark plus a start-up (a trial with oversubscribed threads took 90 s
        beside the best's 15)."""
        top = best(self.rows, self.objective)
        if top is None:
            return 0.0
        trials = {"seed": 1, TUNE: self.budget.finalist_trials}.get(top.implementer, self.budget.n_trials)
        bench_s = top.metrics.get("duration_s")
        per = top.evaluate_s / max(1, trials)
        return min(per, bench_s + TRIAL_STARTUP_S) if bench_s else per

    def reserve_s(self) -> float:
        """Time the evolution leaves for the tuning pass: its trials at the best's pace, at
        most a quarter of the search. None while the seed is the best: a first candidate is
        worth more than the seed's knobs (a slow serial seed's reserve plus one inner loop at
        its pace can exceed what is left of the limit, and the evolution never starts)."""
        top = best(self.rows, self.objective)
        if top is None or top.implementer == "seed":
            return 0.0
        return min(self.budget.finalist_trials * self.trial_s(), self.budget.time_limit_s / 4)

    def why_not_tune(self) -> str:
        """'' while one of the tuning pass's trials still fits in the time left; else why not."""
        left, trial_s = self.left_s(), self.trial_s()
        if left < trial_s:
            return f"no time left to tune the best's knobs ({max(left, 0):.0f}s left, a trial takes ~{trial_s:.0f}s)"
        return ""

    def tuning_deadline(self) -> float:
        """Unix time the tuning pass's trials end by: the limit, less a margin to record them."""
        return time.time() + self.left_s() - TUNING_MARGIN_S
