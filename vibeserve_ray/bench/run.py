"""One benchmark run end to end: send the load, compute metrics, judge them, render the result."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from vibeserve_ray.bench.loadgen import OPENAI, Dialect, Progress, RequestResult, run_load, served_models
from vibeserve_ray.bench.metrics import METRIC_NAMES, BenchMetrics, compute_metrics
from vibeserve_ray.bench.slo import SloViolation, bound_kind, headline, slo_verdict
from vibeserve_ray.bench.workload import Request


@dataclass(frozen=True)
class BenchReport:
    """A judged run. `results` keeps every response (token ids included) for later comparison."""

    metrics: BenchMetrics
    headline_name: str
    headline_value: float
    slo_passed: bool
    slo_violations: tuple[SloViolation, ...]
    results: tuple[RequestResult, ...] = field(repr=False)

    def to_json(self) -> dict:
        """All metric fields at top level, plus "headline" and "slo"; per-request results are left out."""
        return {
            **self.metrics.to_dict(),
            "headline": {"name": self.headline_name, "value": self.headline_value},
            "slo": {"passed": self.slo_passed, "violations": [v.to_dict() for v in self.slo_violations]},
        }


async def run_benchmark_async(
    base_url: str,
    model: str | None,
    requests: Sequence[Request],
    concurrency: int | None,
    request_rate: float,
    seed: int,
    timeout_s: float,
    headline_metric: str,
    slos: Mapping[str, float],
    *,
    temperature: float = 0.0,
    progress: Progress | None = None,
    goodput: Mapping[str, float] | None = None,
    dialect: Dialect = OPENAI,
) -> BenchReport:
    """Run the load against `base_url` and judge it; `model=None` uses the first model the server lists.
    `goodput` holds the per-request bounds (ms) of request_goodput; `dialect` how the server is asked."""
    if headline_metric not in METRIC_NAMES:  # fail before sending load, not after
        raise ValueError(f"unknown headline metric {headline_metric!r}; expected one of {', '.join(METRIC_NAMES)}")
    for name in slos:
        bound_kind(name)
    if model is None:
        models = await served_models(base_url)
        if not models:
            raise ValueError(f"{base_url}/v1/models lists no model")
        model = models[0]
    start = time.perf_counter()
    results = await run_load(
        base_url, model, requests, concurrency=concurrency, request_rate=request_rate,
        seed=seed, timeout_s=timeout_s, temperature=temperature, progress=progress, dialect=dialect,
    )
    metrics = compute_metrics(results, time.perf_counter() - start, goodput)
    passed, violations = slo_verdict(metrics, slos)
    value = headline(metrics, headline_metric)
    return BenchReport(metrics, headline_metric, value, passed, tuple(violations), tuple(results))


def run_benchmark(
    base_url: str,
    model: str | None,
    requests: Sequence[Request],
    concurrency: int | None,
    request_rate: float,
    seed: int,
    timeout_s: float,
    headline_metric: str,
    slos: Mapping[str, float],
    *,
    temperature: float = 0.0,
    progress: Progress | None = None,
    goodput: Mapping[str, float] | None = None,
) -> BenchReport:
    """Blocking `run_benchmark_async`, for callers without an event loop (use the async one inside one)."""
    return asyncio.run(run_benchmark_async(
        base_url, model, requests, concurrency, request_rate, seed, timeout_s, headline_metric, slos,
        temperature=temperature, progress=progress, goodput=goodput,
    ))


_SECTIONS = (("ttft", "Time to First Token", "TTFT"), ("tpot", "Time per Output Token (excl. 1st token)", "TPOT"),
             ("itl", "Inter-token Latency", "ITL"), ("e2el", "End-to-end Latency", "E2EL"))


def format_table(report: BenchReport) -> str:
    """The run as a text block laid out like vLLM's `Serving Benchmark Result`."""
    m = report.metrics
    lines = ["{s:{c}^{n}}".format(s=" Serving Benchmark Result ", n=50, c="=")]

    def row(label: str, value: float | int | str) -> None:
        text = f"{value:.2f}" if isinstance(value, float) else str(value)
        lines.append(f"{label:<40}{text:>10}")

    row("Successful requests:", m.completed)
    row("Failed requests:", m.failed)
    row("Benchmark duration (s):", m.duration_s)
    row("Total input tokens:", m.total_input_tokens)
    row("Total generated tokens:", m.total_output_tokens)
    row("Request throughput (req/s):", m.request_throughput)
    row("Output token throughput (tok/s):", m.output_throughput)
    row("Total Token throughput (tok/s):", m.total_token_throughput)
    row("Request goodput (req/s):", m.request_goodput)
    for key, title, short in _SECTIONS:
        lines.append("{s:{c}^{n}}".format(s=title, n=50, c="-"))
        for stat in ("mean", "median", "p99"):
            row(f"{stat.capitalize() if stat != 'p99' else 'P99'} {short} (ms):", getattr(m, f"{stat}_{key}_ms"))
    lines.append("{s:{c}^{n}}".format(s="Verdict", n=50, c="-"))
    row(f"Headline ({report.headline_name}):", report.headline_value)
    row("SLOs:", "passed" if report.slo_passed else "FAILED")
    lines += [f"  violated: {v}" for v in report.slo_violations]
    lines.append("=" * 50)
    return "\n".join(lines)
