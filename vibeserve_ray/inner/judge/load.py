"""Load honesty and streaming honesty: the benchmark's own kind of traffic, checked.

The judge sends requests shaped exactly as the benchmark's (its prompt and output
lengths, `max_tokens`, greedy sampling, `prediction`, shared prefix; the same load
generator, streaming), one alone, then at the benchmark's concurrency and at twice it, so a
candidate cannot tell the judge's traffic from the benchmark's and behave only while
judged. Every response must meet the target's accuracy contract (a sample where the
reference is expensive; under a tolerance contract pooled over the three phases, and the
phase named where they fail), and every stream must arrive as it is generated: an answer
buffered and sent at the end, or in a few bursts, is not streaming.

The requests are drawn once per machine and target from a secret seed kept outside
every sandbox (the cache directory) and sent in a new random order each judging, so
their reference outputs (cached per prompt) are computed once, not per judging: a
fresh draw each time would cost as much reference decoding as the candidate's own.
"""

from __future__ import annotations

import random
import secrets
from dataclasses import dataclass

from vibeserve_ray.bench import Request
from vibeserve_ray.bench.loadgen import RequestResult, run_load
from vibeserve_ray.inner.judge.responses import check_responses
from vibeserve_ray.inner.workload import target_workload
from vibeserve_ray.runner import CandidateProcess
from vibeserve_ray.target import Target
from vibeserve_ray.tinymodel import cache_dir

BURST_GAP_S = 0.001  # chunks closer than this arrived together
MAX_TOKENS_PER_STEP = 16  # what an honest engine may emit at once (speculation accepts a few)
MIN_STREAMED_TOKENS = 8  # shorter streams say too little to judge


@dataclass(frozen=True)
class LoadRun:
    """One phase of the load: its name, the requests and what came back."""

    phase: str
    requests: list[Request]
    results: list[RequestResult]


def _secret_seed() -> int:
    """This machine's seed for the judge's pools, created on first use (never in a sandbox's view)."""
    file = cache_dir() / "judge" / "secret-seed"
    if not file.is_file():
        file.parent.mkdir(parents=True, exist_ok=True)
        tmp = file.with_suffix(f".{secrets.token_hex(4)}.tmp")
        tmp.write_text(str(secrets.randbits(62)))
        tmp.chmod(0o600)
        tmp.replace(file)
    return int(file.read_text())


def honesty_requests(target: Target, count: int, rng: random.Random) -> list[Request]:
    """`count` distinct requests of the benchmark's shapes (from the secret seed), in `rng`'s order."""
    requests = target_workload(target, count, _secret_seed())
    rng.shuffle(requests)
    return requests


async def run_honesty_load(proc: CandidateProcess, target: Target, requests: list[Request]) -> list[LoadRun]:
    """Alone (1 request), at the benchmark's concurrency, and at twice it; each phase's
    requests are new to the candidate. `requests`: 1 + 3 x concurrency of them. Twice the
    requests in flight queue twice as long: that phase's timeout is twice the target's."""
    c, timeout = target.spec.benchmark.concurrency, proc.limits.request_timeout_s
    plan = [("alone", 1, requests[:1]), (f"at concurrency {c}", c, requests[1: 1 + c]), (f"at concurrency {2 * c}", 2 * c, requests[1 + c:])]
    runs = []
    for phase, concurrency, batch in plan:
        results = await run_load(proc.base_url, proc.served_name, batch, concurrency=concurrency, seed=0,
                                 timeout_s=timeout * max(1, concurrency // c), progress=lambda line: None)
        runs.append(LoadRun(phase, batch, results))
    return runs


def load_verdict(target: Target, runs: list[LoadRun]) -> str:
    """'' when every request succeeded and the responses meet the accuracy contract, else why not."""
    for run in runs:
        failed = [(i, r) for i, r in enumerate(run.results) if not r.success]
        if failed:
            i, r = failed[0]
            return f"{run.phase}: {len(failed)} of {len(run.results)} requests failed (request {i}: {r.error})"
    pooled = check_responses(target, [q for run in runs for q in run.requests], [r for run in runs for r in run.results])
    if pooled.ok:
        return ""
    for run in runs:  # which phase: every reference (and score) is cached now, so this costs no decoding
        if not (phase := check_responses(target, run.requests, run.results)).ok:
            return f"{run.phase}: {phase.summary()}"
    return f"the three phases pooled: {pooled.summary()}"


def bursts(result: RequestResult) -> int:
    """How many separate moments the stream's tokens arrived at."""
    return 1 + sum(gap > BURST_GAP_S for gap in result.itl_s)


def streaming_verdict(runs: list[LoadRun]) -> str:
    """'' when the streams arrived as generated; else the share that came in bursts, with an
    example. A stream is bunched when its tokens arrived at fewer moments than an honest
    engine could produce them in (MAX_TOKENS_PER_STEP at once); more than half bunched
    fails (one stream may be bunched by the client falling behind, not all of them)."""
    judged, bunched = 0, []
    for run in runs:
        for i, r in enumerate(run.results):
            if not r.success or r.output_tokens < MIN_STREAMED_TOKENS:
                continue
            judged += 1
            if bursts(r) < max(2, -(-r.output_tokens // MAX_TOKENS_PER_STEP)):
                bunched.append((run.phase, i, r))
    if not judged or len(bunched) * 2 <= judged:
        return ""
    phase, i, r = bunched[0]
    spread_ms = sum(r.itl_s) * 1000
    return (f"{len(bunched)} of {judged} streams arrived in bursts, not as generated ({phase}, request {i}: {r.output_tokens} tokens "
            f"at {bursts(r)} moment(s) within {spread_ms:.1f} ms, the first {r.ttft_s * 1000:.0f} ms after the request)")


def honesty_count(target: Target) -> int:
    return 1 + 3 * target.spec.benchmark.concurrency
