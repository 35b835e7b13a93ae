"""What one inner loop ends with: the candidate, its verdict and its measurement.

`Outcome` is the one definition of the fields a result shares with the row the driver
records for it (`search.results.Evaluation` extends it with the commit, the speedup over
the seed and the agents' spend). Everything is typed in memory: design, knobs and
metrics are dicts, hints are `Hint`s; JSON appears only where the results table and the
git notes store them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

from vibeserve_ray.inner.hints import Hint

if TYPE_CHECKING:  # the evaluator imports optuna: a driver that only reads results should not pay for it
    from vibeserve_ray.inner.evaluate import Trial


@dataclass(frozen=True, kw_only=True)
class Outcome:
    eval_id: str
    island: int
    round: int
    parent: str  # the commit the candidate came from ("" for the seed's row)
    implementer: str = "offline"  # offline / anthropic:<model> / seed / tune
    design: dict[str, str]
    knobs: dict[str, Any]
    verdict: str  # validated | rejected | failed | timeout
    failure_phase: str = ""
    failure_reason: str = ""
    headline_name: str = ""
    headline_value: float = math.nan
    slo_passed: bool = False
    metrics: dict[str, Any] = field(default_factory=dict)  # every benchmark metric of the best trial
    hints: tuple[Hint, ...] = ()  # what the measurement suggests trying next
    started_at: float = 0.0
    finished_at: float = 0.0
    implement_s: float = 0.0
    judge_s: float = 0.0
    evaluate_s: float = 0.0
    node: str = ""  # the Ray node that ran it
    attempt: int = 0  # Ray's attempt number
    judge_gates: tuple[dict[str, Any], ...] = ()  # each gate the judge ran: {"gate", "verdict", "seconds"}
    sandbox_warning: str = ""  # set when candidate code ran unconfined ([limits] sandbox = "best-effort")

    @property
    def validated(self) -> bool:
        return self.verdict == "validated"

    def outcome(self) -> dict[str, Any]:
        """The shared fields as keyword arguments (shallow: hints stay `Hint`s)."""
        return {f.name: getattr(self, f.name) for f in fields(Outcome)}


@dataclass(frozen=True, kw_only=True)
class InnerResult(Outcome):
    """An inner loop's return value: failures are results too, never exceptions."""

    tree: bytes  # the candidate as implemented and tuned, as tar bytes
    message: str  # the commit message: what the implementer changed
    trials: list[Trial] = field(default_factory=list)
    transcripts: dict[str, str] = field(default_factory=dict)  # role -> its session's transcript (JSON), committed beside the candidate
    session_s: dict[str, float] = field(default_factory=dict)  # role -> wall time of its agent session
