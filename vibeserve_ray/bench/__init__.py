"""Serving benchmark, like `vllm bench serve`: build a workload, stream it at a server, report and judge.

    requests = synthetic(64, seed=0, vocab_size=4096, input_len=(64, 256), output_len=(32, 128))
    report = run_benchmark(url, "tiny", requests, concurrency=16, request_rate=math.inf, seed=0,
                           timeout_s=60, headline_metric="output_throughput", slos={"p99_ttft_ms": 2000})
    print(format_table(report))
"""

from vibeserve_ray.bench.loadgen import LLAMA_CPP, OPENAI, Dialect, RequestResult, arrival_times, run_load, served_models
from vibeserve_ray.bench.metrics import METRIC_NAMES, BenchMetrics, compute_metrics
from vibeserve_ray.bench.run import BenchReport, format_table, run_benchmark, run_benchmark_async
from vibeserve_ray.bench.slo import SloViolation, bound_kind, headline, slo_verdict
from vibeserve_ray.bench.workload import Request, from_jsonl, synthetic

__all__ = [
    "LLAMA_CPP",
    "METRIC_NAMES",
    "OPENAI",
    "BenchMetrics",
    "BenchReport",
    "Dialect",
    "Request",
    "RequestResult",
    "SloViolation",
    "arrival_times",
    "bound_kind",
    "compute_metrics",
    "format_table",
    "from_jsonl",
    "headline",
    "run_benchmark",
    "run_benchmark_async",
    "run_load",
    "served_models",
    "slo_verdict",
    "synthetic",
]
