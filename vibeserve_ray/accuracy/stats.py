"""Statistics of scored responses, and whether they meet a tolerance contract.

Greedy responses (`greedy_stats`), from the deficit of each position (`score.py`):

1. the mean deficit over every position, pooled: the log-likelihood a server gives up
   per token against the reference's own choice. It is self-weighting (a flip at a
   near-tie costs its tiny gap) and scales with precision: float16 ~1e-5, bfloat16
   1-2e-3, int8 weight-only 2-7e-3 on the models measured, cheats >= 0.1;
2. gross errors, positions where the reference prefers its own token by more than
   `gross_deficit` nats: precision noise moves logits by tenths of a nat (the largest
   deficit of any bfloat16 or int8 weight-only engine in 8,832 positions: 0.57), a
   skipped layer or a truncated vocabulary does this at 2-100% of positions, so at most
   `gross_rate` of the positions (never fewer than one) may;
3. every single response's mean deficit: a cheat taken on some requests only (above a
   concurrency, for some prompt lengths) hides in the pool;
4. where the server reports logprobs, their mean distance from the reference's.

Top-1 agreement at decisive positions is reported, not gated: on SmolLM2 int8 weight-only
scored 0.970 and a truncated vocabulary 0.965.

Seeded responses (`sampled_stats`): a score test. With s_t the reference's tempered
logprob of the sampled token and q_t the distribution the request asked for (given the
server's own prefix), Z = sum_t (s_t - E_q[s_t]) / sqrt(sum_t Var_q[s_t]) is ~N(0, 1) for
a server that samples from q (the terms are martingale differences): strongly negative
for one too hot (temperature or top_p ignored, another model), strongly positive for one
too cold (greedy). Plus samples far outside the reference's nucleus (in the far half of
the excluded tail, which no boundary shift from reduced precision reaches).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from vibeserve_ray.accuracy.contract import AccuracySpec
from vibeserve_ray.accuracy.score import DECISIVE_GAP, Response, Scored


@dataclass(frozen=True)
class GreedyStats:
    responses: int
    positions: int
    accurate: int  # responses meeting rule 3 with no forbidden token
    exact: int  # responses whose every token is the reference's choice
    mean_deficit: float
    max_deficit: float
    gross: int
    gross_allowed: int
    worst_response_deficit: float
    worst_response: str  # its label
    agree_decisive: float  # top-1 agreement where the reference's top-2 gap > DECISIVE_GAP
    logprob_error: float | None = None  # mean |reported - reference| logprob, where reported
    forbidden: str = ""  # the first token a response format forbids, by response and position


@dataclass(frozen=True)
class SampledStats:
    responses: int
    positions: int
    z: float
    mean_loglik: float  # of the sampled tokens under the reference's tempered distribution...
    expected_loglik: float  # ...and what a correct sampler's would be on average
    outside_nucleus: int
    far_outside: int
    far_allowed: int
    logprob_error: float | None = None


def allowance(rate: float, positions: int) -> int:
    return max(1, int(rate * positions))


def greedy_stats(pairs: list[tuple[Response, Scored]], spec: AccuracySpec) -> GreedyStats:
    deficits = [d for _, s in pairs for d in s.deficit]
    per_response = [(sum(s.deficit) / len(s.deficit) if s.deficit else 0.0, r.label) for r, s in pairs]
    decisive = [d == 0 for _, s in pairs for d, g in zip(s.deficit, s.gap) if g > DECISIVE_GAP]
    forbidden = next((f"{r.label}, token {i}" for r, s in pairs for i, d in enumerate(s.deficit) if math.isinf(d)), "")
    worst = max(per_response, default=(0.0, ""))
    return GreedyStats(
        responses=len(pairs), positions=len(deficits),
        accurate=sum(m <= spec.response_mean_deficit for m, _ in per_response),
        exact=sum(all(d == 0 for d in s.deficit) for _, s in pairs),
        mean_deficit=sum(deficits) / len(deficits) if deficits else 0.0, max_deficit=max(deficits, default=0.0),
        gross=sum(d > spec.gross_deficit for d in deficits), gross_allowed=allowance(spec.gross_rate, len(deficits)),
        worst_response_deficit=worst[0], worst_response=worst[1],
        agree_decisive=sum(decisive) / len(decisive) if decisive else 1.0,
        logprob_error=_logprob_error(pairs), forbidden=forbidden)


def greedy_failure(st: GreedyStats, spec: AccuracySpec) -> str:
    """'' when the greedy responses meet the contract, else every rule they break."""
    why = []
    if st.forbidden:
        why.append(f"{st.forbidden} is one its response format forbids")
    if st.mean_deficit > spec.mean_deficit:
        why.append(f"mean deficit {st.mean_deficit:.3g} > {spec.mean_deficit:g} over {st.positions} positions")
    if st.gross > st.gross_allowed:
        why.append(f"{st.gross} of {st.positions} positions with deficit > {spec.gross_deficit:g} nats (gross errors; at most {st.gross_allowed})")
    if st.worst_response_deficit > spec.response_mean_deficit:
        why.append(f"{st.worst_response}: mean deficit {st.worst_response_deficit:.3g} > {spec.response_mean_deficit:g}")
    return "; ".join(why + _logprob_failure(st.logprob_error, spec))


def sampled_stats(pairs: list[tuple[Response, Scored]], spec: AccuracySpec) -> SampledStats:
    scores = [x for _, s in pairs for x in s.score]
    total_var = sum(v for _, s in pairs for v in s.var)
    centred = sum(x - m for _, s in pairs for x, m in zip(s.score, s.mean))
    outside = sum(nucleus_misses(r, s)[0] for r, s in pairs)
    far = sum(nucleus_misses(r, s)[1] for r, s in pairs)
    n = len(scores)
    return SampledStats(
        responses=len(pairs), positions=n, z=centred / math.sqrt(total_var) if total_var > 0 else 0.0,
        mean_loglik=sum(scores) / n if n else 0.0, expected_loglik=sum(m for _, s in pairs for m in s.mean) / n if n else 0.0,
        outside_nucleus=outside, far_outside=far, far_allowed=allowance(spec.far_outside_rate, n), logprob_error=_logprob_error(pairs))


def sampled_failure(st: SampledStats, spec: AccuracySpec) -> str:
    why = []
    if abs(st.z) > spec.max_abs_z:
        side = "too cold: likelier tokens than the temperature allows" if st.z > 0 else "too hot, or another distribution"
        why.append(f"sampling score test Z = {st.z:+.1f} beyond +-{spec.max_abs_z:g} over {st.positions} positions ({side})")
    if st.far_outside > st.far_allowed:
        why.append(f"{st.far_outside} samples far outside the reference's top-p nucleus (at most {st.far_allowed})")
    return "; ".join(why + _logprob_failure(st.logprob_error, spec))


def _logprob_failure(error: float | None, spec: AccuracySpec) -> list[str]:
    if error is None or error <= spec.logprob_error:
        return []
    return [f"reported logprobs off the reference's by {error:.3g} on average > {spec.logprob_error:g}"]


def nucleus_misses(r: Response, s: Scored) -> tuple[int, int]:
    """(samples outside the reference's top-p nucleus, those far outside it) of one response."""
    if r.top_p >= 1.0:
        return 0, 0
    far = r.top_p + (1.0 - r.top_p) / 2
    return sum(b >= r.top_p for b in s.mass_before), sum(b >= far for b in s.mass_before)


def _logprob_error(pairs: list[tuple[Response, Scored]]) -> float | None:
    errors = [abs(got - want) for r, s in pairs if r.logprobs for got, want in zip(r.logprobs, s.logprob) if got is not None]
    return sum(errors) / len(errors) if errors else None


def json_safe(stats: GreedyStats | SampledStats | None) -> dict | None:
    """As JSON may carry them: floats rounded, an infinite deficit (a forbidden token) as "inf"."""
    if stats is None:
        return None
    return {k: ("inf" if isinstance(v, float) and math.isinf(v) else round(v, 6) if isinstance(v, float) else v) for k, v in asdict(stats).items()}
