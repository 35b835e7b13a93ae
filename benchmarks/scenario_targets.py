"""The scenario targets' seed against their best designs, and what JSON mode costs, in one run.

1. targets/tiny-llama-json (output tokens/s; every request asks for JSON under its own
   schema): the seed; continuous batching + slab; the same with jump-forward drafts
   (`speculation = jump_forward`); and the cost of masking: continuous + slab on the SAME
   answers (the same prompts and answer lengths, `ignore_eos`) without `response_format`.
2. targets/tiny-llama-chat (goodput: requests/s within per-request TTFT and TPOT bounds,
   Poisson arrivals): the seed against continuous batching + slab.

Each candidate runs as `vibeserve bench` runs it (a sandboxed process behind the HTTP
front, warm-up, then the load); constrained responses are compared with the constrained
reference (`--skip-check` leaves that out). Runs of one comparison are interleaved,
`--repeats` times, and medians reported: the 2-core machine is shared. Progress on
stderr; one JSON on stdout.

    python benchmarks/scenario_targets.py [--repeats 3] [--skip-check] [--only json|chat]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from vibeserve_ray.bench import BenchReport, Request  # noqa: E402
from vibeserve_ray.candidate import load_candidate  # noqa: E402
from vibeserve_ray.design_space import default_space_path, load_space, materialise  # noqa: E402
from vibeserve_ray.inner.evaluate import bench_running  # noqa: E402
from vibeserve_ray.inner.judge.responses import check_responses  # noqa: E402
from vibeserve_ray.inner.workload import target_workload  # noqa: E402
from vibeserve_ray.runner import Limits, start_candidate  # noqa: E402
from vibeserve_ray.target import Target, load_target  # noqa: E402

CONTINUOUS = {"scheduler": "continuous", "kv_cache": "slab"}
JUMP_FORWARD = {**CONTINUOUS, "speculation": "jump_forward"}
JUMP_KNOBS = {"spec_k": 8}  # 8-token drafts kept 4.4 tokens per step on this target's answers, 4-token ones 3.3


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def measure(target: Target, cand: Path, requests: list[Request], work: Path, check: bool) -> tuple[BenchReport, str]:
    """One benchmark of `requests` on the candidate, and (when `check`) its accuracy summary."""
    limits = Limits(**target.spec.limits.model_dump())
    spec = load_candidate(cand)
    with start_candidate(spec, target.model_dir(), target.tokenizer_dir(), target.served_name, "cpu", limits, work) as proc:
        report = asyncio.run(bench_running(proc, target, requests, lambda s: None))
    exact = check_responses(target, requests, report.results).summary() if check else "not checked"
    return report, exact


def rounds(target: Target, configs: dict[str, tuple[Path, list[Request], bool]], repeats: int, work: Path) -> dict[str, list[BenchReport]]:
    runs: dict[str, list[BenchReport]] = {name: [] for name in configs}
    for rep in range(repeats):
        for name, (cand, requests, check) in configs.items():
            report, exact = measure(target, cand, requests, work / f"{name}-{rep}", check and rep == 0)
            runs[name].append(report)
            say(f"  {target.name} round {rep + 1}/{repeats}: {name}: {report.headline_name} = {report.headline_value:.2f}, "
                f"failed {report.metrics.failed}, {exact} (load {os.getloadavg()[0]:.1f})")
            if exact.startswith("accurate_responses") and exact.endswith(")"):  # the failure, in parentheses
                raise SystemExit(f"{name} differs from the reference: {exact}")
    return runs


def median(reports: list[BenchReport], metric: str) -> float:
    return statistics.median(getattr(r.metrics, metric) for r in reports)


def json_target(repeats: int, check: bool, work: Path, space) -> dict:
    target = load_target(ROOT / "targets" / "tiny-llama-json")
    requests = target_workload(target)
    cands = {name: materialise(space, work / name, design, knobs, source=name)
             for name, (design, knobs) in {"seed": ({}, {}), "continuous": (CONTINUOUS, {}), "jump_forward": (JUMP_FORWARD, JUMP_KNOBS)}.items()}
    say("tiny-llama-json: the answers' lengths, for the same work without masks")
    lengths, _ = measure(target, cands["continuous"], requests, work / "lengths", False)
    unmasked = [Request(r.prompt_token_ids, res.output_tokens) for r, res in zip(requests, lengths.results)]
    configs = {"seed": (cands["seed"], requests, check), "continuous": (cands["continuous"], requests, check),
               "continuous_without_masks": (cands["continuous"], unmasked, False), "jump_forward": (cands["jump_forward"], requests, check)}
    runs = rounds(target, configs, repeats, work)
    tok_s = {name: median(reports, "output_throughput") for name, reports in runs.items()}
    return {
        "output_throughput": {k: round(v, 1) for k, v in tok_s.items()},
        "runs": {k: [round(r.headline_value, 1) for r in v] for k, v in runs.items()},
        "best_design": {"design": JUMP_FORWARD, "knobs": JUMP_KNOBS},
        "best_vs_seed": round(tok_s["jump_forward"] / tok_s["seed"], 3),
        "continuous_vs_seed": round(tok_s["continuous"] / tok_s["seed"], 3),
        "jump_forward_vs_continuous": round(tok_s["jump_forward"] / tok_s["continuous"], 3),
        "masked_vs_unmasked": round(tok_s["continuous"] / tok_s["continuous_without_masks"], 3),  # < 1: what masking costs
    }


def chat_target(repeats: int, check: bool, work: Path, space) -> dict:
    target = load_target(ROOT / "targets" / "tiny-llama-chat")
    requests = target_workload(target)
    configs = {name: (materialise(space, work / name, design, {}, source=name), requests, check)
               for name, design in {"seed": {}, "continuous": CONTINUOUS}.items()}
    runs = rounds(target, configs, repeats, work)
    out = {m: {name: round(median(r, m), 3) for name, r in runs.items()}
           for m in ("request_goodput", "request_throughput", "mean_ttft_ms", "p99_ttft_ms", "mean_tpot_ms", "p99_tpot_ms")}
    seed_goodput = out["request_goodput"]["seed"]
    return {**out, "request_rate": target.spec.benchmark.request_rate, "goodput_bounds_ms": target.spec.benchmark.goodput,
            "best_vs_seed": round(out["request_goodput"]["continuous"] / seed_goodput, 3) if seed_goodput else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--skip-check", action="store_true", help="leave out the comparison with the reference")
    ap.add_argument("--only", choices=["json", "chat"])
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="scenario-targets-"))
    space = load_space(default_space_path())
    say(f"scenario_targets: work dir {work}; {os.cpu_count()} cpus; load {os.getloadavg()[0]:.1f}")
    result = {"benchmark": "scenario_targets", "cpus": os.cpu_count(), "load_at_start": round(os.getloadavg()[0], 1), "repeats": args.repeats}
    if args.only in (None, "json"):
        result["tiny-llama-json"] = json_target(args.repeats, not args.skip_check, work, space)
    if args.only in (None, "chat"):
        result["tiny-llama-chat"] = chat_target(args.repeats, not args.skip_check, work, space)
    result["load_at_end"] = round(os.getloadavg()[0], 1)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
