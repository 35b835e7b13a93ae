"""What Ray Serve costs: the same candidate, the same workload, served two ways.

Direct: the evaluator's path, the candidate's sandboxed engine process behind the shared
front (uvicorn), alone on the node. Serve: `vibeserve deploy`'s path, a Serve replica
holding the target's resources that relays to the same kind of engine process, on a
local Ray started as `deploy` starts one (its dashboard, and Serve's HAProxy ingress in
front of the replica's own HTTP server); `--ingress proxy` adds turns through Serve's
Python proxy actor instead (Ray's default ingress), for comparison. A local Ray is
started for each Serve turn and stopped after it. Turns alternate (direct, serve, ...),
each with the target's warm-up and benchmark (`bench_running`), every response held to
the target's accuracy contract; the figures are medians over the repeats and the figure of merit
is Serve's output throughput over the direct one (goal >= 0.9).

It also accounts the CPU each of this benchmark's processes used during each benchmark,
warm-up excluded (the engine's front and worker processes, Serve's replica, ingress and
controller, the rest of Ray, the load generator), per 1,000 output tokens: on a node
whose cores the engine already fills, Serve's share comes out of the engine's. Other
people's processes on a shared machine are not counted (the load average is reported).
With `--profile`, each path then serves the workload once more under py-spy
(benchmarks/pyspy_profile.py): per process, the busy cores and the share of each part.

    python benchmarks/serve_overhead.py [--candidate seed|PATH] [--knobs K=V ...] [--repeats N] [--num-requests N]
                                        [--ingress haproxy proxy] [--variant NAME:VAR=VALUE[,VAR=VALUE]] ...
                                        [--max-ongoing-requests N] [--profile] [--side-load]

`--variant` adds a Serve turn (HAProxy ingress) per repeat whose Ray starts with those
variables (a Serve setting, or PYTHONPATH=<another checkout> to measure a change of the
replica's code against this tree's) and deploy's options named in lower case
(stream_interval_ms=100), interleaved in the same run.
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
from typing import Callable, Iterator

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.pyspy_profile import profiling  # noqa: E402
from benchmarks.served import serve_processes, serve_role  # noqa: E402
from vibeserve_ray import raycluster  # noqa: E402
from vibeserve_ray.deploy import launch  # noqa: E402
from vibeserve_ray.deploy.choice import choose, with_knobs  # noqa: E402
from vibeserve_ray.deploy.config import Chosen, ServeOptions, base_url, serve_config  # noqa: E402
from vibeserve_ray.inner.evaluate import Endpoint, bench_running, warm_up  # noqa: E402
from vibeserve_ray.inner.judge.responses import check_responses  # noqa: E402
from vibeserve_ray.inner.workload import target_workload  # noqa: E402
from vibeserve_ray.runner import Limits, start_candidate  # noqa: E402
from vibeserve_ray.seed import resolve_candidate  # noqa: E402
from vibeserve_ray.target import load_target  # noqa: E402

TARGET = Path(__file__).resolve().parent.parent / "targets" / "tiny-llama-cpu"
FIGURES = ("output_throughput", "request_throughput", "median_ttft_ms", "p99_ttft_ms", "median_tpot_ms", "completed", "failed")
INGRESSES = ("haproxy", "proxy")  # Serve's HAProxy ingress (what deploy starts), Serve's Python proxy actor (Ray's default)


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--candidate", default="seed")
    parser.add_argument("--target", default=str(TARGET))
    parser.add_argument("--knobs", nargs="+", default=[], metavar="KNOB=VALUE", help="knob overrides, the same for both paths")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--ingress", nargs="+", choices=INGRESSES, default=["haproxy"],
                        help="Serve's ingress for the serve turns, each its own turn per repeat (default: haproxy, what deploy serves)")
    parser.add_argument("--variant", action="append", default=[], type=_variant, metavar="NAME:VAR=VALUE[,VAR=VALUE]",
                        help="one more Serve turn per repeat (HAProxy ingress), named serve_NAME, its Ray started with these variables")
    parser.add_argument("--max-ongoing-requests", type=int, help="Serve's per-replica limit (default: deploy's)")
    parser.add_argument("--profile", action="store_true", help="after the timed rounds, one more turn per path under py-spy")
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
    # the first ingress is "serve"; each path: its ingress and the variables its Ray starts with
    ingress_of = {("serve" if i == 0 else f"serve_{x}"): (x, {}) for i, x in enumerate(args.ingress)}
    ingress_of |= {f"serve_{name}": ("haproxy", env) for name, env in args.variant}
    serve_paths = list(ingress_of)
    out: dict = {"target": target.name, "candidate": args.candidate, "knobs": chosen.knobs, "node_cpus": psutil.cpu_count(),
                 "workload": {"num_requests": len(requests), "concurrency": b.concurrency, "request_rate": str(b.request_rate)},
                 "repeats": args.repeats,
                 "ingress": {p: x for p, (x, _) in ingress_of.items()}, "variants": {p: env for p, (_, env) in ingress_of.items() if env},
                 "load_average": {"start": _load()}}
    runs: dict[str, list[dict]] = {"direct": []} | {p: [] for p in serve_paths} | ({"direct_side_load": []} if args.side_load else {})
    profiles: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="vibeserve-overhead-") as tmp, contextlib.redirect_stdout(sys.stderr):
        spec = resolve_candidate(args.candidate, Path(tmp), "llama")
        say("direct: the evaluator's engine process and front")
        with start_candidate(spec, target.model_dir(), target.tokenizer_dir(), target.served_name, target.spec.hardware.device, limits,
                             Path(tmp) / "direct", knobs=chosen.knobs) as proc:
            direct_pid = proc.proc.pid
            for i in range(args.repeats):
                say(f"repeat {i + 1}/{args.repeats}: direct (load {_load()[0]})")
                runs["direct"].append(_measure(proc, target, requests, direct_pid))
                if args.side_load:
                    say(f"repeat {i + 1}/{args.repeats}: direct beside a side load")
                    with _side_load():
                        runs["direct_side_load"].append(_measure(proc, target, requests, direct_pid))
                # Ray runs only for the Serve turn: its idle processes alone cost an engine
                # that fills the node's cores several percent.
                for path, (ingress, env) in ingress_of.items():
                    with _serve_app(target, chosen, limits, args.max_ongoing_requests, ingress, env) as endpoint:
                        say(f"repeat {i + 1}/{args.repeats}: {path} ({ingress}, load {_load()[0]})")
                        runs[path].append(_measure(endpoint, target, requests, direct_pid))
            _summarise(out, runs, serve_paths)
            if args.profile:
                out["profiles"] = profiles
                say("profile: direct under py-spy")
                profiles["direct"] = _profiled(proc, lambda: [direct_pid], target, requests, Path(tmp) / "profiles" / "direct.txt")
                for path, (ingress, env) in ingress_of.items():
                    with _serve_app(target, chosen, limits, args.max_ongoing_requests, ingress, env) as endpoint:
                        say(f"profile: {path} ({ingress}) under py-spy")
                        profiles[path] = _profiled(endpoint, lambda: list(serve_processes(os.getpid())), target, requests, Path(tmp) / "profiles" / f"{path}.txt")
    out["load_average"]["end"] = _load()
    print(json.dumps(out, indent=2))


def _summarise(out: dict, runs: dict[str, list[dict]], serve_paths: list[str]) -> None:
    """Medians over the repeats and Serve's ratios to the direct path, into `out`."""
    for name, rs in runs.items():
        out[name] = {k: _round(statistics.median(r[k] for r in rs)) for k in FIGURES}
        out[name]["accuracy"] = {"passed": all(r["accuracy"]["passed"] for r in rs),
                                 "failures": [r["accuracy"]["failure"] for r in rs if not r["accuracy"]["passed"]],
                                 "accurate_responses": [r["accuracy"]["accurate_responses"] for r in rs],
                                 "exact_responses": [r["accuracy"]["exact_responses"] for r in rs]}
        groups = sorted({g for r in rs for g in r["cpu_s_per_1k_tokens"]})
        out[name]["cpu_s_per_1k_tokens"] = {g: _round(statistics.median(r["cpu_s_per_1k_tokens"].get(g, 0.0) for r in rs)) for g in groups}
    d = out["direct"]
    for path in serve_paths:
        s, suffix = out[path], path[len("serve"):]
        out[f"throughput_ratio{suffix}"] = round(s["output_throughput"] / d["output_throughput"], 3)
        out[f"throughput_ratio{suffix}_per_repeat"] = [round(rs["output_throughput"] / rd["output_throughput"], 3)
                                                       for rd, rs in zip(runs["direct"], runs[path])]
        out[f"p50_ttft_ratio{suffix}"] = round(s["median_ttft_ms"] / d["median_ttft_ms"], 3)
        out[f"p99_ttft_ratio{suffix}"] = round(s["p99_ttft_ms"] / d["p99_ttft_ms"], 3)
    if "direct_side_load" in out:
        out["side_load_throughput_ratio"] = round(out["direct_side_load"]["output_throughput"] / d["output_throughput"], 3)
    out["goal_throughput_ratio"] = 0.9
    # a served figure counts only where both paths' responses met the target's contract in every round
    out["goal_met"] = out["throughput_ratio"] >= 0.9 and d["accuracy"]["passed"] and out["serve"]["accuracy"]["passed"]
    say(json.dumps({k: v for k, v in out.items() if "ratio" in k}))  # the timed figures, before any profiling


def _measure(endpoint, target, requests, direct_pid: int) -> dict:
    asyncio.run(warm_up(endpoint, target, requests, say))  # outside the CPU window: per 1k measured tokens
    with _cpu_seconds(direct_pid) as cpu:
        report = asyncio.run(bench_running(endpoint, target, requests, say, warm=False))
    m = report.metrics.to_dict()
    tokens = max(m["total_output_tokens"], 1)
    acc = check_responses(target, requests, report.results)
    say(f"  {m['output_throughput']:.1f} tok/s, {'PASS' if acc.ok else 'FAIL'} {acc.summary()}")
    return {k: m[k] for k in FIGURES} | {"cpu_s_per_1k_tokens": {k: v * 1000 / tokens for k, v in cpu.items()},
                                         "accuracy": acc.to_dict()}


def _profiled(endpoint, pids: Callable[[], list[int]], target, requests, out: Path) -> dict:
    """The workload once more, with py-spy on `pids()` (and their children); a profiler that
    fails is recorded, not raised: the timed rounds are already done."""
    asyncio.run(warm_up(endpoint, target, requests, say))
    try:
        with profiling(pids(), out) as summary:
            asyncio.run(bench_running(endpoint, target, requests, say, warm=False))
    except Exception as exc:  # noqa: BLE001 - reported in the JSON beside the timed figures
        return {"error": f"{type(exc).__name__}: {exc}"}
    return summary


@contextlib.contextmanager
def _serve_app(target, chosen: Chosen, limits: Limits, max_ongoing: int | None, ingress: str, env: dict[str, str]) -> Iterator[Endpoint]:
    from ray import serve

    say(f"serve: a Serve replica relaying to its own engine process, behind Serve's {ingress}" + (f", with {env}" if env else ""))
    # What deploy's own Ray gets (raycluster.RAY_ENV), or Ray's default proxy, and the
    # variant's variables; the Ray started next hands this process's environment to every
    # Serve process (and the replica to its engine process).
    saved = dict(os.environ)
    os.environ.update({"RAY_SERVE_ENABLE_HA_PROXY": "1" if ingress == "haproxy" else "0", **{k: v for k, v in env.items() if not k.islower()}})
    try:
        raycluster.start_local(num_cpus=max(2, int(target.spec.hardware.num_cpus)), log_to_driver=False)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    try:
        # a variant's lower-case names are deploy's options (stream_interval_ms=100), the rest Ray's environment
        options = {k: float(v) for k, v in env.items() if k.islower()}
        config = serve_config(chosen, ServeOptions(port=raycluster.listen_port(), max_ongoing_requests=max_ongoing, **options))
        if launch.run(config, detach=True, say=say) != 0:
            raise SystemExit("serve: the application did not become healthy")
        yield Endpoint(base_url(config), target.served_name, limits)
    finally:
        serve.shutdown()
        raycluster.shutdown()


def _variant(text: str) -> tuple[str, dict[str, str]]:
    name, _, assignments = text.partition(":")
    env = dict(a.split("=", 1) for a in assignments.split(",") if "=" in a)
    if not name.isidentifier() or not env:
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME:VAR=VALUE[,VAR=VALUE]")
    return name, env


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
    """CPU seconds each group of this benchmark's processes (this one and its descendants)
    used inside the block: each engine's front and its worker processes (the idle one's
    under `idle_engine`), Serve's replica, ingress (proxy actor, or HAProxy and its
    manager) and controller, the rest of Ray, the side load, the load generator."""
    me = psutil.Process()

    def groups() -> dict[int, str]:
        direct = {p.pid for p in _tree(direct_pid)}
        out = {me.pid: "load_generator"}
        for p in me.children(recursive=True):
            role = serve_role(p)
            if role is not None:
                out.setdefault(p.pid, role)
            if role == "serve_replica":
                out.update({c.pid: _engine_part(c) for c in p.children(recursive=True)})
        for p in _tree(direct_pid):
            out[p.pid] = _engine_part(p)
        for p in me.children(recursive=True):
            out.setdefault(p.pid, "side_load" if "# vibeserve side load" in _cmd(p) else "ray_other")
        serving = any(g == "serve_replica" for g in out.values())
        if serving:  # the direct engine idles while Serve's is measured
            out.update({pid: "idle_engine" for pid in direct})
        return out

    def snapshot(owners: dict[int, str]) -> dict[int, tuple[str, float]]:
        snap = {}
        for pid, g in owners.items():
            try:
                t = psutil.Process(pid).cpu_times()
                snap[pid] = (g, t.user + t.system)
            except psutil.Error:
                pass
        return snap

    owners = groups()
    used: dict[str, float] = {}
    before = snapshot(owners)
    yield used
    for pid, (g, t) in snapshot(owners | groups()).items():
        used[g] = used.get(g, 0.0) + t - before.get(pid, (g, 0.0))[1]


def _tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def _engine_part(p: psutil.Process) -> str:
    """The sandbox's front process (and bwrap around it), or one of the engine's own processes."""
    cmd = _cmd(p)
    return "engine_front" if "vibeserve_ray.serve.worker" in cmd or "bwrap" in cmd or not cmd else "engine_workers"


def _cmd(p: psutil.Process) -> str:
    try:
        return " ".join(p.cmdline())
    except psutil.Error:
        return ""


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _round(x):
    return round(x, 2) if isinstance(x, float) else x


if __name__ == "__main__":
    main()
