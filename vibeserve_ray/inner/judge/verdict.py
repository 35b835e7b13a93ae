"""Whether a set of responses meets the target's accuracy contract, with the statistics why.

`Accuracy` is what every check of responses against the reference returns, in either
mode: the judge's checker phases, load honesty and weight swap, the evaluator's check of
every benchmark response, `vibeserve bench` (of a candidate or any server) and the peer
benchmarks. In exact mode it counts responses equal to the reference's; in tolerance
mode (`tolerance_check`) it holds the pooled statistics of `stats.py` and every rule
they break.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vibeserve_ray.accuracy.score import Response, Scored, reference_scores
from vibeserve_ray.accuracy.stats import (
    GreedyStats,
    SampledStats,
    greedy_failure,
    greedy_stats,
    json_safe,
    nucleus_misses,
    sampled_failure,
    sampled_stats,
)
from vibeserve_ray.target import Target
from vibeserve_ray.tinymodel import cache_dir


@dataclass(frozen=True)
class Accuracy:
    mode: str  # the contract's: "exact" | "tolerance"
    checked: int  # responses compared
    accurate: int  # exact: equal to the reference's (near-ties forgiven); tolerance: greedy within the per-response
    # bound, seeded with no sample far outside the nucleus
    exact: int  # equal to the reference's greedy choice at every token (tolerance: as teacher-forced)
    failure: str = ""  # why the responses do not meet the contract ("" when they do)
    greedy: GreedyStats | None = None  # tolerance mode
    sampled: SampledStats | None = None

    @property
    def ok(self) -> bool:
        return not self.failure

    def summary(self) -> str:
        """One line: `accurate_responses: n/m`, the statistics that gate, and the failure."""
        parts = [f"accurate_responses: {self.accurate}/{self.checked}"]
        if self.greedy is not None and self.greedy.positions:
            g = self.greedy
            parts.append(f"mean deficit {g.mean_deficit:.2g}, {g.gross} gross of {g.positions} positions, worst response {g.worst_response_deficit:.2g}")
        if self.sampled is not None and self.sampled.positions:
            parts.append(f"sampling Z {self.sampled.z:+.1f}, {self.sampled.far_outside} far outside the nucleus")
        if self.mode == "exact" or (self.greedy and self.greedy.positions):
            parts.append(f"exact {self.exact}/{self.checked}")
        return ", ".join(parts) + (f" ({self.failure})" if self.failure else "")

    def to_dict(self) -> dict:
        """The `accuracy` entry of a benchmark's JSON."""
        return {"mode": self.mode, "passed": self.ok, "failure": self.failure, "accurate_responses": f"{self.accurate}/{self.checked}",
                "exact_responses": f"{self.exact}/{self.checked}", "greedy": json_safe(self.greedy), "sampled": json_safe(self.sampled)}


def length_problem(r: Response, s: Scored) -> str:
    """'' when the response is as long as asked (ignore_eos), or its document ended there."""
    n = len(r.tokens)
    if n == r.max_tokens or (r.response_format is not None and s.finished and n < r.max_tokens):
        return ""
    unfinished = " and its document is unfinished" if r.response_format is not None else ""
    return f"{r.label}: {n} tokens where {r.max_tokens} were asked{unfinished}"


def tolerance_check(target: Target, model_dir: Path, responses: list[Response], cache: bool = True) -> Accuracy:
    """The responses (greedy and seeded alike) scored by the target's reference on the
    weights in `model_dir` and held to its tolerance contract, pooled."""
    spec, ref = target.accuracy, target.spec.reference
    scores = reference_scores(ref.kind, model_dir, ref.dtype, responses, cache_dir() if cache else None)
    pairs = list(zip(responses, scores))
    greedy = [(r, s) for r, s in pairs if r.temperature <= 0]
    sampled = [(r, s) for r, s in pairs if r.temperature > 0]
    g = greedy_stats(greedy, spec) if greedy else None
    smp = sampled_stats(sampled, spec) if sampled else None
    failures = [why for r, s in pairs if (why := length_problem(r, s))][:1]
    failures += [f for f in (g and greedy_failure(g, spec), smp and sampled_failure(smp, spec)) if f]
    accurate = (g.accurate if g else 0) + sum(nucleus_misses(r, s)[1] == 0 for r, s in sampled)  # a sample's Z is the pool's
    return Accuracy("tolerance", len(responses), accurate, g.exact if g else 0, "; ".join(failures), g, smp)
