"""Every measured response against the reference: a candidate cannot be right while
checked and cut corners while measured.

The benchmark's own responses (of every trial, the final re-measure and `vibeserve
bench`) are compared token by token with the reference's greedy output, near-ties
forgiven as in the checker. Where the reference is cheap (CPU targets) every response
is compared; elsewhere a random sample, chosen after the run so the candidate cannot
know which responses count.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from vibeserve_ray.bench import Request, RequestResult
from vibeserve_ray.inner.judge.checker import Completion, compare, expected_length
from vibeserve_ray.reference import reference_outputs
from vibeserve_ray.target import Target
from vibeserve_ray.tinymodel import cache_dir

SAMPLE_FRACTION = 0.25  # of the responses, where the reference is expensive (accelerator targets)


@dataclass(frozen=True)
class Exactness:
    exact: int  # responses equal to the reference (near-ties forgiven)
    checked: int  # responses compared
    mismatch: str = ""  # the first difference, "" when there is none

    @property
    def ok(self) -> bool:
        return not self.mismatch

    def summary(self) -> str:
        return f"exact_responses: {self.exact}/{self.checked}" + (f" ({self.mismatch})" if self.mismatch else "")


def check_fraction(target: Target) -> float:
    """Share of responses compared: all of them where the reference runs on the CPU cheaply."""
    return 1.0 if target.spec.hardware.device == "cpu" else SAMPLE_FRACTION


def check_responses(target: Target, requests: Sequence[Request], results: Sequence[RequestResult], fraction: float | None = None) -> Exactness:
    """Compares the successful responses (all, or a secret sample of `fraction`) with the reference."""
    fraction = check_fraction(target) if fraction is None else fraction
    done = [i for i, r in enumerate(results) if r.success]
    if fraction < 1.0:
        done = sorted(random.SystemRandom().sample(done, max(1, round(len(done) * fraction)) if done else 0))
    if not done:
        return Exactness(0, 0)
    c, ref = target.spec.checker, target.spec.reference
    # Cached on disk per prompt, so every trial of every candidate on this workload reuses them;
    # a constrained request is compared with the reference under the same grammar.
    refs = reference_outputs(ref.kind, target.model_dir(), ref.dtype, [list(requests[i].prompt_token_ids) for i in done],
                             [requests[i].max_tokens for i in done], cache_root=cache_dir(),
                             response_formats=[requests[i].response_format for i in done])
    exact, first = 0, ""
    for i, expected in zip(done, refs):
        got = list(results[i].output_token_ids)
        status, step, reason = compare(expected, Completion(got, []), c.tolerance, c.logprob_tolerance)
        want = expected_length(expected, requests[i].max_tokens)
        if status == "ok" and len(got) != want:
            status, step, reason = "mismatch", len(got), f"{len(got)} tokens where the reference has {want}"
        if status == "mismatch":
            first = first or f"benchmark request {i} differs from the reference at token {step}: {reason}"
        else:
            exact += 1
    return Exactness(exact, len(done), first)
