"""Orchestration overhead of the search, and how it scales with workers.

A sleeping inner loop (tests/sleepy_search.py: each sleeps S seconds instead of judging and measuring)
isolates what the search itself costs: planning, shipping trees through the object
store, git commits, notes, the results table. For 1, 2 and 4 fake GPUs (a local Ray
with `num_gpus=W`), N candidates are searched; we report candidates/second and the
overhead per candidate = wall time x W / N - S (0 would be a perfect scheduler).

    python benchmarks/search_overhead.py [--candidates 8] [--sleep 1.0]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # the sleeping inner loop the orchestration tests use

import ray  # noqa: E402

from vibeserve_ray.design_space import default_space_path, load_space  # noqa: E402
from vibeserve_ray.search.clock import SearchBudget  # noqa: E402
from vibeserve_ray.search.controller import Search  # noqa: E402
from vibeserve_ray.search.results import read_results  # noqa: E402
from vibeserve_ray.target import load_target  # noqa: E402
from sleepy_search import sleepy_inner_loop  # noqa: E402

TARGET = Path(__file__).resolve().parent.parent / "targets" / "tiny-llama-cpu"


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def gpu_target(tmp: Path, candidates: int) -> Path:
    dest = tmp / "target"
    shutil.copytree(TARGET, dest)
    text = (dest / "target.toml").read_text()
    text = text.replace("num_gpus = 0", "num_gpus = 1").replace("num_cpus = 2", "num_cpus = 0")
    text = text.replace("islands = 2", "islands = 1").replace("population = 4", f"population = {candidates}").replace("rounds = 4", "rounds = 1")
    (dest / "target.toml").write_text(text)
    return dest


def measure(workers: int, candidates: int, sleep_s: float) -> dict:
    with tempfile.TemporaryDirectory(prefix="vibeserve-overhead-") as tmp:
        target_dir = gpu_target(Path(tmp), candidates)
        ray.init(num_cpus=4, num_gpus=workers, include_dashboard=False, log_to_driver=False)
        try:
            search = Search(load_target(target_dir), str(target_dir), Path(tmp) / "run", load_space(default_space_path()),
                            SearchBudget(rounds=1, time_limit_s=3600, max_candidates=candidates, candidate_time_limit_s=600, n_trials=1),
                            say=lambda s: None, inner_loop=sleepy_inner_loop(sleep_s))
            t0 = time.perf_counter()
            search.run()
            total = time.perf_counter() - t0
            rows = read_results(Path(tmp) / "run")
        finally:
            ray.shutdown()
    seed = [r for r in rows if r.implementer == "seed"][0]
    others = [r for r in rows if r.implementer != "seed"]
    wall = max(r.finished_at for r in others) - (seed.finished_at)
    in_task = sorted(r.finished_at - r.started_at - sleep_s for r in others)
    return {
        "workers": workers,
        "candidates": len(others),
        "wall_s": round(wall, 3),
        "search_total_s": round(total, 3),
        "candidates_per_s": round(len(others) / wall, 3),
        "overhead_per_candidate_s": round(wall * workers / len(others) - sleep_s, 3),
        "median_in_task_overhead_s": round(in_task[len(in_task) // 2], 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--candidates", type=int, default=8)
    ap.add_argument("--sleep", type=float, default=1.0)
    args = ap.parse_args()
    results = []
    for workers in (1, 2, 4):
        say(f"bench: {workers} fake GPU worker(s), {args.candidates} candidates, no-op evaluator {args.sleep}s")
        results.append(measure(workers, args.candidates, args.sleep))
        say(f"bench: {results[-1]}")
    base = results[0]["candidates_per_s"]
    for r in results:
        r["speedup_vs_1_worker"] = round(r["candidates_per_s"] / base, 3)
    print(json.dumps({"benchmark": "search_overhead", "noop_evaluator_s": args.sleep, "results": results}, indent=2))


if __name__ == "__main__":
    main()
