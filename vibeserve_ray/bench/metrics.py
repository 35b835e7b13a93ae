"""Benchmark metrics under the names `vllm bench serve` reports, so numbers compare across tools."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from vibeserve_ray.bench.loadgen import RequestResult


@dataclass(frozen=True)
class BenchMetrics:
    """Throughputs over the whole run; latencies (ms) over completed requests only."""

    completed: int
    failed: int
    duration_s: float
    total_input_tokens: int
    total_output_tokens: int
    request_throughput: float
    output_throughput: float
    total_token_throughput: float
    mean_ttft_ms: float
    median_ttft_ms: float
    p99_ttft_ms: float
    mean_tpot_ms: float
    median_tpot_ms: float
    p99_tpot_ms: float
    mean_itl_ms: float
    median_itl_ms: float
    p99_itl_ms: float
    mean_e2el_ms: float
    median_e2el_ms: float
    p99_e2el_ms: float
    request_goodput: float  # completed requests/s that met every per-request bound (request_throughput when there are none)

    def to_dict(self) -> dict[str, float | int]:
        return dataclasses.asdict(self)


METRIC_NAMES: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(BenchMetrics))
GOODPUT_BOUNDS = ("ttft_ms", "tpot_ms", "e2el_ms")  # per-request bounds a good request meets (vLLM's --goodput)


def request_tpot_s(r: RequestResult) -> float:
    """(e2el - ttft) / (output_tokens - 1); 0 for a one-token answer, as vLLM counts it for goodput."""
    return (r.e2el_s - r.ttft_s) / (r.output_tokens - 1) if r.output_tokens > 1 else 0.0


def is_good(r: RequestResult, goodput: Mapping[str, float]) -> bool:
    """Completed, and within every per-request bound of `goodput` (ms, keyed by GOODPUT_BOUNDS)."""
    values_ms = {"ttft_ms": r.ttft_s * 1000, "tpot_ms": request_tpot_s(r) * 1000, "e2el_ms": r.e2el_s * 1000}
    return r.success and all(values_ms[name] <= bound for name, bound in goodput.items())


def compute_metrics(results: Sequence[RequestResult], duration_s: float, goodput: Mapping[str, float] | None = None) -> BenchMetrics:
    """Aggregate per-request results of a run that took `duration_s` seconds.

    As in vLLM: tokens count completed requests only; tpot is (e2el - ttft) / (output_tokens - 1)
    over requests with more than one output token; itl pools every gap of every completed request;
    a statistic over no samples is 0; goodput counts the completed requests whose own TTFT, TPOT
    and e2e latency meet the `goodput` bounds (ms, keys from GOODPUT_BOUNDS), per second.
    """
    if duration_s <= 0:
        raise ValueError(f"duration_s must be > 0, got {duration_s}")
    goodput = dict(goodput or {})
    if unknown := set(goodput) - set(GOODPUT_BOUNDS):
        raise ValueError(f"unknown goodput bound {sorted(unknown)[0]!r}; expected one of {', '.join(GOODPUT_BOUNDS)}")
    ok = [r for r in results if r.success]
    input_tokens = sum(r.prompt_len for r in ok)
    output_tokens = sum(r.output_tokens for r in ok)
    tpot = [request_tpot_s(r) for r in ok if r.output_tokens > 1]
    itl = [gap for r in ok for gap in r.itl_s]
    return BenchMetrics(
        completed=len(ok),
        failed=len(results) - len(ok),
        duration_s=duration_s,
        total_input_tokens=input_tokens,
        total_output_tokens=output_tokens,
        request_throughput=len(ok) / duration_s,
        output_throughput=output_tokens / duration_s,
        total_token_throughput=(input_tokens + output_tokens) / duration_s,
        **_summary("ttft", [r.ttft_s for r in ok]),
        **_summary("tpot", tpot),
        **_summary("itl", itl),
        **_summary("e2el", [r.e2el_s for r in ok]),
        request_goodput=sum(is_good(r, goodput) for r in ok) / duration_s,
    )


def _summary(name: str, seconds: list[float]) -> dict[str, float]:
    ms = np.asarray(seconds, dtype=np.float64) * 1000.0
    if ms.size == 0:
        return {f"mean_{name}_ms": 0.0, f"median_{name}_ms": 0.0, f"p99_{name}_ms": 0.0}
    return {
        f"mean_{name}_ms": float(np.mean(ms)),
        f"median_{name}_ms": float(np.median(ms)),
        f"p99_{name}_ms": float(np.percentile(ms, 99)),  # linear interpolation, as vLLM
    }
