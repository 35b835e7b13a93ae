"""What Ray Serve costs: the same candidate, the same workload, served two ways.

Direct: the evaluator's path, the candidate's sandboxed engine process behind the shared
front (uvicorn), alone on the node. Serve: `vibeserve deploy`'s path, a Serve replica
holding the target's resources that relays to the same kind of engine process, requests
through Serve's HTTP proxy; a local Ray is started for each Serve turn and stopped after
it. Turns alternate (direct, serve, direct, ...), each with the target's warm-up and
benchmark (`measure.bench_running`); the figures are medians over the repeats and the
figure of merit is Serve's output throughput over the direct one (goal >= 0.9).

It also accounts the CPU every process on the node used during each benchmark, warm-up
excluded (engine, Serve's proxy/replica/controller, the rest of Ray, the load generator),
per 1,000 output tokens: on a node whose cores the engine already fills, Serve's share
comes out of the engine's.

    python benchmarks/serve_overhead.py [--candidate seed|PATH] [--knobs K=V ...] [--repeats N] [--num-requests N]
                                        [--max-ongoing-requests N] [--side-load]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Iterator

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vibeserve_ray.deploy import launch  # noqa: E402
from vibeserve_ray.deploy.choice import choose, with_knobs  # noqa: E402
from vibeserve_ray.deploy.config import Chosen, ServeOptions, base_url, serve_config  # noqa: E402
from vibeserve_ray.inner.evaluate import Endpoint, bench_running, warm_up  # noqa: E402
from vibeserve_ray.inner.workload import target_workload  # noqa: E402
from vibeserve_ray.runner import Limits, start_candidate  # noqa: E402
from vibeserve_ray.seed import resolve_candidate  # noqa: E402
from vibeserve_ray.target import load_target  # noqa: E402

TARGET = Path(__file__).resolve().parent.parent / "targets" / "tiny-llama-cpu"
FIGURES = ("output_throughput", "request_throughput", "median_ttft_ms", "p99_ttft_ms", "median_tpot_ms", "completed", "failed")
SERVE_STACK = ("ray::ProxyActor", "ray::ServeReplica", "ray::ServeController")


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--candidate", default="seed")
    parser.add_argument("--target", default=str(TARGET))
    parser.add_argument("--knobs", nargs="+", default=[], metavar="KNOB=VALUE", help="knob overrides, the same for both paths")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-ongoing-requests", type=int, help="Serve's per-replica limit (default: deploy's)")
    parser.add_argument("--side-load", action="store_true",
                        help="add a direct turn beside two nice-19 spinning processes (~0.3 cores): how much any co-running work costs the engine")
    parser.add_argument("--num-requests", type=int)
    args = parser.parse_args()
    target = load_target(args.target)
    requests = target_workload(target, args.num_requests)
    limits = Limits(**target.spec.limits.model_dump())
    b = target.spec.benchmark
    chosen = choose(None, None, args.candidate, str(target.dir))
    if args.knobs:
        chosen = with_knobs(chosen, args.knobs)
    out: dict = {"target": target.name, "candidate": args.candidate, "knobs": chosen.knobs, "node_cpus": psutil.cpu_count(),
                 "workload": {"num_requests": len(requests), "concurrency": b.concurrency, "request_rate": str(b.request_rate)},
                 "repeats": args.repeats}
    runs: dict[str, list[dict]] = {"direct": [], "serve": []} | ({"direct_side_load": []} if args.side_load else {})
    with tempfile.TemporaryDirectory(prefix="vibeserve-overhead-") as tmp, contextlib.redirect_stdout(sys.stderr):
        spec = resolve_candidate(args.candidate, Path(tmp), "llama")
        say("direct: the evaluator's engine process and front")
        with start_candidate(spec, target.model_dir(), target.tokenizer_dir(), target.served_name, target.spec.hardware.device, limits,
                             Path(tmp) / "direct", knobs=chosen.knobs) as proc:
            direct_pid = proc.proc.pid
            for i in range(args.repeats):
                say(f"repeat {i + 1}/{args.repeats}: direct")
                runs["direct"].append(_measure(proc, target, requests, direct_pid))
                if args.side_load:
                    say(f"repeat {i + 1}/{args.repeats}: direct beside a side load")
                    with _side_load():
                        runs["direct_side_load"].append(_measure(proc, target, requests, direct_pid))
                # Ray runs only for the Serve turn: its idle processes alone cost an engine
                # that fills the node's cores several percent.
                with _serve_app(target, chosen, limits, args.max_ongoing_requests) as endpoint:
                    say(f"repeat {i + 1}/{args.repeats}: serve")
                    runs["serve"].append(_measure(endpoint, target, requests, direct_pid))
    for name, rs in runs.items():
        out[name] = {k: _round(statistics.median(r[k] for r in rs)) for k in FIGURES}
        groups = sorted({g for r in rs for g in r["cpu_s_per_1k_tokens"]})
        out[name]["cpu_s_per_1k_tokens"] = {g: _round(statistics.median(r["cpu_s_per_1k_tokens"].get(g, 0.0) for r in rs)) for g in groups}
    d, s = out["direct"], out["serve"]
    out["throughput_ratio"] = round(s["output_throughput"] / d["output_throughput"], 3)
    out["throughput_ratio_per_repeat"] = [round(rs["output_throughput"] / rd["output_throughput"], 3)
                                          for rd, rs in zip(runs["direct"], runs["serve"])]
    out["p50_ttft_ratio"] = round(s["median_ttft_ms"] / d["median_ttft_ms"], 3)
    out["p99_ttft_ratio"] = round(s["p99_ttft_ms"] / d["p99_ttft_ms"], 3)
    if args.side_load:
        out["side_load_throughput_ratio"] = round(out["direct_side_load"]["output_throughput"] / d["output_throughput"], 3)
    out["goal_throughput_ratio"] = 0.9
    out["goal_met"] = out["throughput_ratio"] >= 0.9
    print(json.dumps(out, indent=2))


def _measure(endpoint, target, requests, direct_pid: int) -> dict:
    asyncio.run(warm_up(endpoint, target, requests, say))  # outside the CPU window: per 1k measured tokens
    with _cpu_seconds(direct_pid) as cpu:
        report = asyncio.run(bench_running(endpoint, target, requests, say, warm=False))
    m = report.metrics.to_dict()
    tokens = max(m["total_output_tokens"], 1)
    return {k: m[k] for k in FIGURES} | {"cpu_s_per_1k_tokens": {k: v * 1000 / tokens for k, v in cpu.items()}}


@contextlib.contextmanager
def _serve_app(target, chosen: Chosen, limits: Limits, max_ongoing: int | None) -> Iterator[Endpoint]:
    import ray
    from ray import serve

    say("serve: a Serve replica relaying to its own engine process, through Serve's proxy")
    ray.init(address="local", num_cpus=max(2, int(target.spec.hardware.num_cpus)), include_dashboard=False, log_to_driver=False)
    try:
        config = serve_config(chosen, ServeOptions(port=_free_port(), max_ongoing_requests=max_ongoing))
        if launch.run(config, detach=True, say=say) != 0:
            raise SystemExit("serve: the application did not become healthy")
        yield Endpoint(base_url(config), target.served_name, limits)
    finally:
        serve.shutdown()
        ray.shutdown()


SPIN = """# vibeserve side load
import time
while True:
    end = time.perf_counter() + 0.0004
    while time.perf_counter() < end:
        pass
    time.sleep(0.0022)
"""


@contextlib.contextmanager
def _side_load(processes: int = 2) -> Iterator[None]:
    """Work beside the engine at the lowest priority, waking ~400 times a second each like
    a proxy relaying tokens: 0.4 ms of spinning every 2.6 ms (~0.15 cores each)."""
    import subprocess

    procs = [subprocess.Popen(["nice", "-n", "19", sys.executable, "-c", SPIN]) for _ in range(processes)]
    try:
        yield
    finally:
        for p in procs:
            p.kill()
            p.wait()


@contextlib.contextmanager
def _cpu_seconds(direct_pid: int) -> Iterator[dict[str, float]]:
    """CPU seconds each group of the node's processes used inside the block: the direct
    path's engine, Serve's engine, Serve's stack, the rest of Ray, the load generator."""
    me = os.getpid()

    def group(p: psutil.Process) -> str | None:
        if p.pid == direct_pid:
            return "engine_direct"
        if p.pid == me:
            return "load_generator"
        cmd = " ".join(p.cmdline())
        if "# vibeserve side load" in cmd:
            return "side_load"
        if "vibeserve_ray.serve.worker" in cmd:
            return "engine_serve"
        if any(cmd.startswith(s) for s in SERVE_STACK):
            return "serve_stack"
        return "ray_other" if "ray" in cmd else None

    def snapshot() -> dict[int, tuple[str, float]]:
        snap = {}
        for p in psutil.process_iter():
            try:
                g = group(p)
                if g:
                    t = p.cpu_times()
                    snap[p.pid] = (g, t.user + t.system)
            except psutil.Error:
                pass
        return snap

    used: dict[str, float] = {}
    before = snapshot()
    yield used
    for pid, (g, t) in snapshot().items():
        used[g] = used.get(g, 0.0) + t - before.get(pid, (g, 0.0))[1]


def _round(x):
    return round(x, 2) if isinstance(x, float) else x


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


if __name__ == "__main__":
    main()
