"""One engine against another on the same Llama designs: a non-regression check between two
trees (e.g. main's checkout and a branch), in interleaved rounds.

Each design is materialised by each tree's own `vibeserve candidate new`, so the candidates
carry that tree's engine; both are then served and measured by this tree's front and load
generator (vibeserve_ray.inner.evaluate.bench_candidate), so the rows differ only in the
engine code. Figures: output tok/s on targets/tiny-llama-cpu for engine_components.py's best
combination, mean TTFT on targets/tiny-llama-prefix with the prefix cache; each response held
to the target's accuracy contract.

    python benchmarks/engine_ab.py --other /path/to/main-checkout [--repeats 3] [--work DIR]

Progress on stderr, one JSON on stdout (`this_over_other` per design: >1 is faster for
throughput, slower for TTFT).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from vibeserve_ray.candidate import load_candidate  # noqa: E402
from vibeserve_ray.inner.evaluate import Measurement, bench_candidate  # noqa: E402
from vibeserve_ray.target import load_target  # noqa: E402

BEST = ["scheduler=continuous", "kv_cache=slab", "linear=onednn", "step_loop=process"]
KNOBS = ["num_threads=1", "engine_workers=2"]
DESIGNS = {  # name -> (target, design, knobs, figure)
    "cpu-best": ("tiny-llama-cpu", BEST, KNOBS, "output_throughput"),
    "prefix-on": ("tiny-llama-prefix", ["scheduler=continuous", "kv_cache=paged", "prefix_cache=on", "linear=onednn", "step_loop=process"], KNOBS,
                  "mean_ttft_ms"),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--other", required=True, help="the other tree's root (a checkout of this repository)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--work", default=str(ROOT / "runs" / "engine-ab"))
    args = ap.parse_args()
    trees, work = {"other": Path(args.other).resolve(), "this": ROOT}, Path(args.work)
    cands = {(name, tree): materialise(root, work / tree / name, design, knobs)
             for tree, root in trees.items() for name, (_, design, knobs, _) in DESIGNS.items()}
    runs: dict[tuple[str, str], list[dict]] = {key: [] for key in cands}
    for rep in range(args.repeats):
        for (name, tree), path in cands.items():
            result = bench_candidate(load_target(ROOT / "targets" / DESIGNS[name][0]), load_candidate(path), work / "bench" / tree / name)
            if not isinstance(result, Measurement):
                raise SystemExit(f"{name} ({tree}): {result.phase}: {result.reason}")
            m, a = result.report.metrics, result.accuracy
            runs[(name, tree)].append({"output_throughput": round(m.output_throughput, 1), "mean_ttft_ms": round(m.mean_ttft_ms, 1),
                                       "accurate_responses": f"{a.accurate}/{a.checked}", "accurate": a.ok, "load": round(os.getloadavg()[0], 2)})
            print(f"round {rep + 1}/{args.repeats}: {name} ({tree}): {runs[(name, tree)][-1]}", file=sys.stderr, flush=True)
    out = {}
    for name, (_, _, _, figure) in DESIGNS.items():
        med = {tree: statistics.median(r[figure] for r in runs[(name, tree)]) for tree in trees}
        out[name] = {"figure": figure, "median_other": med["other"], "median_this": med["this"], "this_over_other": round(med["this"] / med["other"], 3),
                     "runs_other": runs[(name, "other")], "runs_this": runs[(name, "this")]}
    print(json.dumps(out, indent=2))


def materialise(tree: Path, dest: Path, design: list[str], knobs: list[str]) -> Path:
    """`tree`'s own `vibeserve candidate new` (its engine template), once."""
    if not (dest / "candidate.toml").is_file():
        env = {**os.environ, "PYTHONPATH": str(tree), "PYTHONDONTWRITEBYTECODE": "1"}
        subprocess.run([sys.executable, "-m", "vibeserve_ray.cli", "candidate", "new", str(dest), "--design", *design, "--knobs", *knobs],
                       cwd=tree, env=env, check=True)
    return dest


if __name__ == "__main__":
    main()
