"""Every measured response against the reference: a candidate cannot be right while
checked and cut corners while measured.

The benchmark's own responses (of every trial, the final re-measure and `vibeserve
bench`, of a candidate or of any server) are held to the target's accuracy contract:
under `mode = "exact"` compared token by token with the reference's greedy output,
near-ties forgiven as in the checker; under `mode = "tolerance"` scored by the reference
teacher-forced on the server's own tokens, pooled (`vibeserve_ray.accuracy`). Where the
reference is cheap (CPU targets) every response is checked; elsewhere a random sample,
chosen after the run so the server cannot know which responses count.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from vibeserve_ray.accuracy.score import Response
from vibeserve_ray.inner.judge.verdict import Accuracy, tolerance_check
from vibeserve_ray.bench import Request, RequestResult
from vibeserve_ray.inner.judge.checker import Completion, compare, expected_length
from vibeserve_ray.reference import reference_outputs
from vibeserve_ray.target import Target
from vibeserve_ray.tinymodel import cache_dir

SAMPLE_FRACTION = 0.25  # of the responses, where the reference is expensive (accelerator targets)


def check_fraction(target: Target) -> float:
    """Share of responses checked: all of them where the reference runs on the CPU cheaply."""
    return 1.0 if target.spec.hardware.device == "cpu" else SAMPLE_FRACTION


def check_responses(target: Target, requests: Sequence[Request], results: Sequence[RequestResult], fraction: float | None = None) -> Accuracy:
    """Holds the successful responses (all, or a secret sample of `fraction`) to the target's contract."""
    fraction = check_fraction(target) if fraction is None else fraction
    done = [i for i, r in enumerate(results) if r.success]
    if fraction < 1.0:
        done = sorted(random.SystemRandom().sample(done, max(1, round(len(done) * fraction)) if done else 0))
    if not done:
        return Accuracy(target.accuracy.mode, 0, 0, 0)
    if target.accuracy.tolerant:
        responses = [Response(f"benchmark request {i}", list(requests[i].prompt_token_ids), list(results[i].output_token_ids), requests[i].max_tokens,
                              response_format=requests[i].response_format) for i in done]
        return tolerance_check(target, target.model_dir(), responses)
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
    return Accuracy("exact", len(done), exact, exact, first)
