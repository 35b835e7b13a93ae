"""Bespoke beats generic: the default search on each CPU target, then every winner on every target's benchmark.

1. `vibeserve search TARGET` on each target (its own run directory under --work; a rerun
   resumes a search that was cut short and skips one that finished).
2. A matrix, one row per system, one column per target's benchmark: each target's winner,
   plus two fixed rows: "generic", our engine configured as vLLM is by default
   (continuous batching, paged KV cache, prefix caching, default knobs), and "vllm" itself
   (benchmarks/vllm_peer.py); with --vllm-fp32 also "vllm-fp32", vLLM at the reference's
   precision (`--dtype float32`; its default runs a float32 checkpoint in bfloat16 on CPU).
   Each column's rows are measured in interleaved rounds and
   the median kept; every response of every row, vLLM's too, is held to the column
   target's accuracy contract, and a comparison counts only between cells that both meet
   it in every round (`accuracy` has each cell's verdict and statistics). Finished cells
   are saved (cells.json) and not measured again on a rerun.
3. The checks of the claim: each winner is best among the winners (or within --noise) on its own target;
   at least three winners differ in design; each beats the generic row on its own
   target, and vLLM on the JSON and code-edit targets where they exist.

    python benchmarks/bespoke_matrix.py [--targets tiny-llama-cpu,tiny-llama-prefix,...] [--work DIR]
        [--rounds N] [--time-limit S] [--max-candidates N] [--trials N] [--repeats 3] [--num-requests N] [--no-vllm] [--vllm-fp32]

Long (a search per target; the budget flags cut it). Progress on stderr, JSON on stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.vllm_peer import DEFAULT_VENV, ensure_venv, precision_ceiling, serve_vllm  # noqa: E402
from vibeserve_ray.candidate import load_candidate  # noqa: E402
from vibeserve_ray.design_space import default_space_path, load_space, materialise  # noqa: E402
from vibeserve_ray.engine.models.llama import LlamaConfig  # noqa: E402
from vibeserve_ray.inner.evaluate import Measurement, bench_candidate, bench_url  # noqa: E402
from vibeserve_ray.target import load_target  # noqa: E402

CPU_TARGETS = ("tiny-llama-cpu", "tiny-llama-prefix", "tiny-llama-code-edit", "tiny-llama-json", "tiny-llama-chat")
GENERIC = {"scheduler": "continuous", "kv_cache": "paged", "prefix_cache": "on"}  # vLLM's defaults, in our engine
MUST_BEAT_VLLM = ("tiny-llama-json", "tiny-llama-code-edit")
VLLM_ARGS = {"vllm": [], "vllm-fp32": ["--dtype", "float32"]}  # the vLLM rows: `vllm serve` defaults, and at the reference's precision


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--targets", default=",".join(t for t in CPU_TARGETS if (ROOT / "targets" / t).is_dir()))
    ap.add_argument("--work", default=str(ROOT / "runs" / "bespoke-matrix"), help="run directories and saved cells (rerun to resume)")
    for flag in ("--rounds", "--max-candidates", "--trials"):
        ap.add_argument(flag, type=int, help=f"passed to vibeserve search ({flag})")
    ap.add_argument("--time-limit", type=float, help="passed to vibeserve search (seconds per search)")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved rounds per column (medians)")
    ap.add_argument("--num-requests", type=int, help="override each benchmark's request count")
    ap.add_argument("--noise", type=float, default=0.05, help="relative margin within which a winner counts as best on its own target")
    ap.add_argument("--no-vllm", action="store_true", help="leave out the vLLM row")
    ap.add_argument("--vllm-fp32", action="store_true",
                    help="add a row for vLLM with --dtype float32: the reference's precision (its default downcasts a float32 "
                         "checkpoint to bfloat16 on CPU, other math than the reference's and ours)")
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    targets = {name: load_target(ROOT / "targets" / name) for name in args.targets.split(",")}
    load_start = os.getloadavg()

    rows: dict[str, Path | None] = {}
    for name in targets:
        rows[f"winner:{name}"] = search(name, work / "runs" / name, args)
    rows["generic"] = materialise(load_space(default_space_path()), work / "generic", GENERIC, {})
    if not args.no_vllm:
        rows["vllm"] = None
        if args.vllm_fp32:
            rows["vllm-fp32"] = None

    cells_file = work / "cells.json"
    cells: dict[str, dict] = json.loads(cells_file.read_text()) if cells_file.is_file() else {}
    with contextlib.ExitStack() as stack:
        peers: dict[tuple[str, str], str] = {}  # (vLLM row, model directory) -> base URL
        for col, target in targets.items():
            todo = [row for row in rows if f"{row}|{col}" not in cells]
            runs: dict[str, list] = {row: [] for row in todo}
            for row in (r for r in todo if r in VLLM_ARGS and (r, str(target.model_dir())) not in peers):
                python = ensure_venv(target.spec.hardware.device, DEFAULT_VENV, say=say)
                peer = stack.enter_context(serve_vllm(python, target.model_dir(), target.served_name, target.spec.hardware.device,
                                                      work / row / col, VLLM_ARGS[row], say=say))
                peers[(row, str(target.model_dir()))] = peer.base_url
            for rep in range(args.repeats if todo else 0):
                for row in todo:
                    runs[row].append(measure(row, rows[row], target, peers, work / "bench" / col, args.num_requests))
                    r = runs[row][-1]
                    verdict = "" if "accuracy" not in r else f"{'PASS' if r['accuracy']['passed'] else 'FAIL'} {r['summary']}"
                    say(f"{col}: round {rep + 1}/{args.repeats}: {row}: {r['headline']} {verdict or r.get('failure', '')} (load {r['load']})")
            for row, rs in runs.items():
                values = [r["headline"] for r in rs if r["headline"] is not None]
                cells[f"{row}|{col}"] = {"headline": statistics.median(values) if values else None, "runs": rs}
                cells_file.write_text(json.dumps(cells, indent=2))
    out = report(targets, rows, cells, args.noise, load_start)
    cpu = [t for t in targets.values() if t.spec.hardware.device == "cpu"]
    if cpu and not args.no_vllm:  # why vLLM's defaults (bfloat16) are out of an exact float32 engine's reach on these cores
        out["precision_ceiling"] = precision_ceiling(LlamaConfig.from_dir(cpu[0].model_dir()))
    print(json.dumps(out, indent=2))


def search(name: str, run: Path, args: argparse.Namespace) -> Path:
    """The target's default search (resumed if cut short); its winner's directory."""
    done = run / "matrix-done"
    if not done.is_file():
        cmd = [sys.executable, "-m", "vibeserve_ray.cli", "search", str(ROOT / "targets" / name), "--run", str(run), "--no-remeasure"]
        for flag in ("rounds", "max_candidates", "trials", "time_limit"):
            if getattr(args, flag) is not None:
                cmd += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
        say(f"{name}: {' '.join(cmd[2:])}")
        if subprocess.run(cmd, cwd=ROOT, stdout=sys.stderr).returncode != 0:  # stdout is the matrix's JSON alone
            raise SystemExit(f"{name}: the search found no validated candidate (see {run})")
        done.write_text("")
    return run / "best"


def measure(row: str, path: Path | None, target, peers: dict[tuple[str, str], str], work: Path, num_requests: int | None) -> dict:
    if path is None:
        # one vLLM per row and model, serving it under the first target's name that started it
        result = bench_url(target, peers[(row, str(target.model_dir()))], None, num_requests=num_requests)
    else:
        result = bench_candidate(target, load_candidate(path), work / row.replace(":", "-"), num_requests=num_requests)
    if not isinstance(result, Measurement):
        return {"headline": None, "failure": f"{result.phase}: {result.reason[:200]}", "load": round(os.getloadavg()[0], 1)}
    a = result.accuracy
    return {"headline": round(result.report.headline_value, 2), "exact_responses": f"{a.exact}/{a.checked}", "accuracy": a.to_dict(),
            "summary": a.summary(), "load": round(os.getloadavg()[0], 1)}


def cell_accuracy(cell: dict) -> dict:
    """Whether a cell's every measured round met its target's contract, the first failure, and the worst mean deficit."""
    rounds = [r["accuracy"] for r in cell.get("runs", []) if "accuracy" in r]
    failures = [r["failure"] for r in rounds if not r["passed"]]
    deficits = [r["greedy"]["mean_deficit"] for r in rounds if r.get("greedy")]
    return {"passed": bool(rounds) and not failures, "failure": failures[0] if failures else ("" if rounds else "not measured"),
            "worst_mean_deficit": max(deficits, default=None)}


def report(targets: dict, rows: dict, cells: dict, noise: float, load_start) -> dict:
    """The matrix and the claim's checks, each true or false with its figures. A comparison
    counts only between two cells that both meet the column's accuracy contract."""
    accuracy = {key: cell_accuracy(cell) for key, cell in cells.items()}
    # a cell measured before verdicts were recorded (no `accuracy` in its runs) keeps counting, as it did then
    legacy = lambda key: not any("accuracy" in r for r in cells.get(key, {}).get("runs", []))  # noqa: E731
    raw = lambda row, col: cells.get(f"{row}|{col}", {}).get("headline")  # noqa: E731
    value = lambda row, col: raw(row, col) if legacy(f"{row}|{col}") or accuracy[f"{row}|{col}"]["passed"] else None  # noqa: E731
    designs = {col: _design(rows[f"winner:{col}"]) for col in targets}
    checks = {}
    for col, target in targets.items():
        objective, mine = target.spec.benchmark.objective, value(f"winner:{col}", col)
        # best among the winners: the diagonal holds its column; the fixed rows have checks of their own
        others = {row: value(row, col) for row in rows if row.startswith("winner:") and row != f"winner:{col}" and value(row, col) is not None}
        best_other = max(others.values(), key=objective.score, default=None)
        checks[col] = {
            "best_on_own_target": mine is not None and (best_other is None or objective.speedup(mine, best_other) >= 1 - noise),
            "beats_generic": mine is not None and value("generic", col) is not None and objective.speedup(mine, value("generic", col)) > 1,
            "ratio_to_vllm": None if mine is None or value("vllm", col) is None else round(objective.speedup(mine, value("vllm", col)), 3),
        }
        if "vllm-fp32" in rows:
            fp32 = value("vllm-fp32", col)
            checks[col]["ratio_to_vllm_fp32"] = None if mine is None or fp32 is None else round(objective.speedup(mine, fp32), 3)
    distinct = {json.dumps(d, sort_keys=True) for d in designs.values()}
    beat_vllm = {col: (checks[col]["ratio_to_vllm"] or 0) > 1 for col in MUST_BEAT_VLLM if col in targets}
    return {
        "benchmark": "bespoke_matrix",
        "load_average": {"start": [round(x, 2) for x in load_start], "end": [round(x, 2) for x in os.getloadavg()]},
        "headlines": {col: f"{t.spec.benchmark.headline} ({t.spec.benchmark.objective.direction})" for col, t in targets.items()},
        "matrix": {row: {col: raw(row, col) for col in targets} for row in rows},
        "accuracy": accuracy,
        "winner_designs": designs,
        "checks": checks,
        "distinct_winner_designs": len(distinct),
        "passed": {"each_winner_best_on_own_target": all(c["best_on_own_target"] for c in checks.values()),
                   "at_least_three_distinct_designs": len(distinct) >= 3,
                   "each_winner_beats_generic": all(c["beats_generic"] for c in checks.values()),
                   "beats_vllm_on": beat_vllm},
        "cells": cells,
    }


def _design(path: Path) -> dict:
    return tomllib.loads((path / "candidate.toml").read_text()).get("design", {})


if __name__ == "__main__":
    main()
