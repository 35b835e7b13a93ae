"""Is the offline implementer a directed search? Compare it with random sampling.

Both run the real search (real judge, real benchmark, Optuna off: one trial per
candidate, so only the design choice differs) on a copy of `targets/tiny-llama-cpu`,
with the same budget of candidates and the same workload, each with `--seeds` different
seeds (one lucky draw decides little in a small space). We report each run's best
validated headline metric (as a speed-up over that run's own seed measurement, so
machine noise between runs cancels), the best-so-far after every evaluation, how many
candidates were rejected, and: the ratio of the median speed-ups offline/random (> 1:
the directed search found a better system within the budget) and of the mean
best-so-far curves (> 1: it got there sooner). The random baseline samples uniformly
from every valid design of the space (`--implementer random`).

    python benchmarks/implementer_vs_random.py [--candidates 8] [--num-requests 24] [--seeds 3]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from vibeserve_ray.search.results import read_results  # noqa: E402

TARGET = ROOT / "targets" / "tiny-llama-cpu"


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def budget_target(tmp: Path, candidates: int, num_requests: int) -> Path:
    """The tiny target with one island, `candidates` candidates after the seed, a shorter benchmark."""
    dest = tmp / "target"
    shutil.copytree(TARGET, dest)
    text = (dest / "target.toml").read_text()
    for key, value in {"islands": 1, "population": 2, "rounds": (candidates + 1) // 2, "num_requests": num_requests}.items():
        text = re.sub(rf"(?m)^{key} = .*$", f"{key} = {value}", text)
    (dest / "target.toml").write_text(text)
    return dest


def search(target: Path, run: Path, implementer: str, candidates: int, seed: int) -> dict:
    cmd = [sys.executable, "-m", "vibeserve_ray.cli", "search", str(target), "--run", str(run), "--implementer", implementer,
           "--max-candidates", str(candidates), "--trials", "1", "--time-limit", "3600", "--no-remeasure", "--seed", str(seed)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - t0
    for line in proc.stderr.splitlines():
        if line.startswith("round "):
            say(f"  {implementer} (seed {seed}): {line}")
    rows = sorted(read_results(run), key=lambda r: r.finished_at)
    baseline = next(r.headline_value for r in rows if r.implementer == "seed")  # the seed engine's measurement
    best, curve = baseline, []
    for r in rows:
        if r.implementer != "seed" and r.verdict == "validated":
            best = max(best, r.headline_value)
        curve.append(round(best, 2))
    return {"implementer": implementer, "seed_arg": seed, "exit_code": proc.returncode, "wall_s": round(wall, 1), "seed": round(baseline, 2), "best": round(best, 2),
            "speedup_over_seed": round(best / baseline, 2), "best_so_far": curve,
            "validated": sum(r.verdict == "validated" for r in rows), "rejected_or_failed": sum(r.verdict != "validated" for r in rows),
            "designs": [r.design for r in rows if r.implementer != "seed"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--candidates", type=int, default=8, help="candidates per search after the seed")
    ap.add_argument("--num-requests", type=int, default=24, help="benchmark requests per measurement")
    ap.add_argument("--seeds", type=int, default=3, help="searches per implementer, with seeds 0..N-1")
    args = ap.parse_args()
    out: dict = {"target": "tiny-llama-cpu", "candidates": args.candidates, "num_requests": args.num_requests, "seeds": args.seeds, "runs": []}
    with tempfile.TemporaryDirectory(prefix="vibeserve-vs-random-") as tmp:
        target = budget_target(Path(tmp), args.candidates, args.num_requests)
        for seed in range(args.seeds):  # interleaved, so slow drifts of the machine hit both alike
            for implementer in ("offline", "random"):
                say(f"implementer_vs_random: {implementer} implementer, seed {seed} ({args.candidates} candidates)")
                out["runs"].append(search(target, Path(tmp) / f"run-{implementer}-{seed}", implementer, args.candidates, seed))
    by = {imp: [r for r in out["runs"] if r["implementer"] == imp] for imp in ("offline", "random")}
    median = {imp: statistics.median(r["speedup_over_seed"] for r in runs) for imp, runs in by.items()}
    steps = min(len(r["best_so_far"]) for r in out["runs"])
    curve = {imp: [statistics.mean(r["best_so_far"][i] / r["seed"] for r in runs) for i in range(steps)] for imp, runs in by.items()}
    out["median_speedup"] = {imp: round(v, 2) for imp, v in median.items()}
    out["ratio_offline_over_random"] = round(median["offline"] / median["random"], 3)
    out["mean_best_so_far_ratio"] = round(statistics.mean(o / r for o, r in zip(curve["offline"], curve["random"])), 3)
    out["offline_at_least_random_in"] = f"{sum(o['speedup_over_seed'] >= r['speedup_over_seed'] for o, r in zip(by['offline'], by['random']))}/{args.seeds} seeds"
    out["offline_beats_random"] = out["ratio_offline_over_random"] > 1.0 and out["mean_best_so_far_ratio"] > 1.0
    print(json.dumps(out, indent=2))
    return 0 if out["offline_beats_random"] else 1


if __name__ == "__main__":
    sys.exit(main())
