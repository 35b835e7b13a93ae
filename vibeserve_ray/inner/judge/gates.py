"""The Accuracy Judge: every gate a candidate must pass before it is measured.

Cheapest first: protected files, the bypass scan, the checker against the reference
(alone and under load, greedy and sampled), then the weight-swap test on a second
checkpoint. A gate's "no" is a `rejected` verdict; a candidate that crashes or hangs
on the way is `failed`. Both carry their reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from vibeserve_ray.candidate import CandidateSpec
from vibeserve_ray.inner.judge.checker import CheckVerdict, check_candidate
from vibeserve_ray.inner.judge.scan import protected_changes, scan_for_bypass
from vibeserve_ray.runner import CandidateFailure
from vibeserve_ray.target import Target


@dataclass(frozen=True)
class JudgeVerdict:
    passed: bool
    gate: str = ""  # the gate that said no
    reason: str = ""
    failure: CandidateFailure | None = None  # set when the candidate itself broke

    @property
    def verdict(self) -> str:
        return "validated" if self.passed else ("failed" if self.failure else "rejected")


def _from_check(gate: str, check: CheckVerdict) -> JudgeVerdict | None:
    if check.passed:
        return None
    if check.failure:
        return JudgeVerdict(False, gate, check.failure.reason, check.failure)
    m = check.mismatch
    assert m is not None
    return JudgeVerdict(False, gate, f"{m.phase}, prompt #{m.prompt_index}, token {m.step}: {m.reason}")


def judge(target: Target, spec: CandidateSpec, parent_dir: Path | None, workdir: Path,
          say: Callable[[str], None] = lambda s: None) -> JudgeVerdict:
    """Runs the gates in order and stops at the first that fails."""
    if parent_dir is not None:
        changed = protected_changes(spec.path, parent_dir)
        if changed:
            return JudgeVerdict(False, "protected", f"protected files changed: {', '.join(changed)}")
    findings = scan_for_bypass(spec.path, parent_dir)
    if findings:
        return JudgeVerdict(False, "bypass-scan", "; ".join(f.describe() for f in findings[:3]))
    say("judge: checker against the reference")
    verdict = _from_check("checker", check_candidate(target, spec, workdir / "check", say=say))
    if verdict:
        return verdict
    say("judge: weight-swap test on the second checkpoint")
    swapped = check_candidate(target, spec, workdir / "swap", swap=True, phases=("concurrent",), say=say)
    return _from_check("weight-swap", swapped) or JudgeVerdict(True)
