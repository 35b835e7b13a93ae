"""Measuring a candidate on its target's benchmark, through the same HTTP front it is served with."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Callable

from vibeserve_ray.bench import BenchReport, Request, from_jsonl, run_benchmark_async, synthetic
from vibeserve_ray.candidate import CandidateSpec
from vibeserve_ray.runner import CandidateFailed, CandidateFailure, CandidateProcess, Limits, start_candidate
from vibeserve_ray.target import Target


def target_workload(target: Target, num_requests: int | None = None) -> list[Request]:
    """The target's benchmark requests: its JSONL dataset or its seeded synthetic recipe."""
    b = target.spec.benchmark
    n = num_requests or b.num_requests
    if b.dataset is not None:
        return from_jsonl(target.path(b.dataset), n, b.seed)
    config = json.loads((target.model_dir() / "config.json").read_text())
    special = _special_token_ids(target.tokenizer_dir())
    s = b.synthetic
    assert s is not None
    return synthetic(n, s.seed, int(config["vocab_size"]), tuple(s.input_len), tuple(s.output_len), s.shared_prefix_len, special)


def _special_token_ids(tokenizer_dir: Path) -> list[int]:
    tok_file = tokenizer_dir / "tokenizer.json"
    if not tok_file.is_file():
        return []
    return [t["id"] for t in json.loads(tok_file.read_text()).get("added_tokens", []) if t.get("special")]


async def warm_up(proc: CandidateProcess, target: Target, requests: list[Request], say: Callable[[str], None]) -> None:
    """The target's warm-up requests, not measured."""
    b = target.spec.benchmark
    if b.warmup_requests:
        say(f"bench: {b.warmup_requests} warm-up requests")
        await run_benchmark_async(proc.base_url, proc.served_name, requests[: b.warmup_requests], b.concurrency, float("inf"),
                                  b.seed, proc.limits.request_timeout_s, b.headline, {}, progress=lambda line: None)


async def bench_running(proc: CandidateProcess, target: Target, requests: list[Request], say: Callable[[str], None],
                        warm: bool = True) -> BenchReport:
    """Warm-up requests (unless `warm` is False: the caller did them), then the benchmark proper."""
    b = target.spec.benchmark
    if warm:
        await warm_up(proc, target, requests, say)
    say(f"bench: {len(requests)} requests, concurrency {b.concurrency}, rate {b.request_rate:g}/s")
    return await run_benchmark_async(proc.base_url, proc.served_name, requests, b.concurrency, b.request_rate, b.seed,
                                     proc.limits.request_timeout_s, b.headline, dict(b.slo), progress=say)


def bench_candidate(target: Target, spec: CandidateSpec, workdir: Path, *, num_requests: int | None = None,
                    limits: Limits | None = None, say: Callable[[str], None] = lambda s: None) -> BenchReport | CandidateFailure:
    """Starts the candidate, benchmarks it, stops it; a failure is returned, not raised."""
    requests = target_workload(target, num_requests)
    limits = limits or Limits(**target.spec.limits.model_dump())
    try:
        with start_candidate(spec, target.model_dir(), target.tokenizer_dir(), target.served_name, target.spec.hardware.device,
                             limits, workdir) as proc:
            report = asyncio.run(bench_running(proc, target, requests, say))
            if report.metrics.completed == 0:
                return proc.explain("bench", "no request completed")
            return report
    except CandidateFailed as exc:
        return exc.failure
