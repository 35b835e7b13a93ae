"""What Ray Serve costs: the same candidate, the same workload, served two ways.

Direct: the evaluator's path, the candidate's sandboxed subprocess behind the shared
front (uvicorn). Serve: `vibeserve deploy`'s path, the same front as the ingress of a
Serve replica holding the target's resources, requests through Serve's HTTP proxy. Both
get the target's warm-up and benchmark (`measure.bench_running`), one run each; the
figure of merit is Serve's output throughput over the direct one (goal >= 0.9).

    python benchmarks/serve_overhead.py [--candidate seed|PATH] [--num-requests N]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vibeserve_ray import deploy  # noqa: E402
from vibeserve_ray.candidate import resolve_candidate  # noqa: E402
from vibeserve_ray.measure import bench_running, target_workload  # noqa: E402
from vibeserve_ray.runner import Limits, start_candidate  # noqa: E402
from vibeserve_ray.target import load_target  # noqa: E402

TARGET = Path(__file__).resolve().parent.parent / "targets" / "tiny-llama-cpu"
FIGURES = ("output_throughput", "request_throughput", "median_ttft_ms", "p99_ttft_ms", "median_tpot_ms", "completed", "failed")


@dataclass(frozen=True)
class Endpoint:
    """The parts of a running candidate that `bench_running` reads, for a Serve URL."""

    base_url: str
    served_name: str
    limits: Limits


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--candidate", default="seed")
    parser.add_argument("--target", default=str(TARGET))
    parser.add_argument("--num-requests", type=int)
    args = parser.parse_args()
    target = load_target(args.target)
    requests = target_workload(target, args.num_requests)
    limits = Limits(**target.spec.limits.model_dump())
    b = target.spec.benchmark
    out: dict = {"target": target.name, "candidate": args.candidate,
                 "workload": {"num_requests": len(requests), "concurrency": b.concurrency, "request_rate": str(b.request_rate)}}
    with tempfile.TemporaryDirectory(prefix="vibeserve-overhead-") as tmp:
        spec = resolve_candidate(args.candidate, Path(tmp))
        say("direct: the evaluator's subprocess front")
        with start_candidate(spec, target.model_dir(), target.tokenizer_dir(), target.served_name, target.spec.hardware.device, limits,
                             Path(tmp) / "direct") as proc:
            out["direct"] = _figures(asyncio.run(bench_running(proc, target, requests, say)))
        with contextlib.redirect_stdout(sys.stderr):  # stdout is for the JSON alone (URL line, Ray's log lines)
            out["serve"] = _figures(_bench_serve(target, str(spec.path), requests, limits))
    d, s = out["direct"], out["serve"]
    out["throughput_ratio"] = round(s["output_throughput"] / d["output_throughput"], 3)
    out["p50_ttft_ratio"] = round(s["median_ttft_ms"] / d["median_ttft_ms"], 3)
    out["p99_ttft_ratio"] = round(s["p99_ttft_ms"] / d["p99_ttft_ms"], 3)
    out["goal_throughput_ratio"] = 0.9
    out["goal_met"] = out["throughput_ratio"] >= 0.9
    print(json.dumps(out, indent=2))


def _bench_serve(target, candidate: str, requests, limits: Limits):
    import ray
    from ray import serve

    say("serve: the same front as a Ray Serve replica, through Serve's proxy")
    ray.init(address="local", num_cpus=max(2, int(target.spec.hardware.num_cpus)), include_dashboard=False, log_to_driver=False)
    try:
        chosen = deploy.choose(None, None, candidate, str(target.dir))
        config = deploy.serve_config(chosen, deploy.ServeOptions(port=_free_port()))
        if deploy.deploy(config, detach=True, say=say) != 0:
            raise SystemExit("serve: the application did not become healthy")
        endpoint = Endpoint(deploy.base_url(config), target.served_name, limits)
        return asyncio.run(bench_running(endpoint, target, requests, say))
    finally:
        serve.shutdown()
        ray.shutdown()


def _figures(report) -> dict:
    m = report.metrics.to_dict()
    return {k: round(m[k], 2) if isinstance(m[k], float) else m[k] for k in FIGURES}


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


if __name__ == "__main__":
    main()
