"""What trust costs: the wall time of each judge gate on the tiny target, and the share of a
candidate's inner loop (judge + evaluate, as the search runs them) the gates take.

For each candidate (the serial seed and a batching design by default) the inner loop's
two costly steps run as the search runs them: `judge` (every gate) then `evaluate` with
the target's number of Optuna trials. The reference cache is warmed first (held-out
prompts, the load-honesty pool, the benchmark's requests), as it is after a search's
first candidate; fresh prompts are new each judging, so their reference decoding is
always in the timing. Goal: all gates together <= 40% of the inner loop.

    python benchmarks/judge_cost.py [--target targets/tiny-llama-cpu] [--designs seed,continuous] [--trials N]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vibeserve_ray.candidate import load_candidate  # noqa: E402
from vibeserve_ray.design_space import default_space_path, load_space  # noqa: E402
from vibeserve_ray.inner.evaluate import evaluate  # noqa: E402
from vibeserve_ray.inner.judge import load  # noqa: E402
from vibeserve_ray.inner.judge.checker import held_out_prompts, references  # noqa: E402
from vibeserve_ray.inner.judge.responses import check_fraction  # noqa: E402
from vibeserve_ray.inner.judge.gates import judge  # noqa: E402
from vibeserve_ray.inner.workload import target_workload  # noqa: E402
from vibeserve_ray.reference import reference_outputs  # noqa: E402
from vibeserve_ray.seed import materialise_seed  # noqa: E402
from vibeserve_ray.target import load_target  # noqa: E402
from vibeserve_ray.tinymodel import cache_dir  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DESIGNS = {"seed": {}, "continuous": {"scheduler": "continuous", "kv_cache": "slab"},
           "paged": {"scheduler": "continuous", "kv_cache": "paged", "prefix_cache": "on"}}
GOAL = 0.40


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def warm_references(target) -> None:
    """What a search has cached after its first candidate."""
    r = target.spec.reference
    held = held_out_prompts(target)
    for swap in (False, True):
        references(target, target.model_dir(swap=swap), held, ("sequential", "sampled"))
    for requests in (load.honesty_requests(target, load.honesty_count(target), random.Random(0)), target_workload(target)):
        if check_fraction(target) == 1.0:
            reference_outputs(r.kind, target.model_dir(), r.dtype, [q.prompt_token_ids for q in requests], [q.max_tokens for q in requests],
                              cache_root=cache_dir())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--target", default=str(ROOT / "targets" / "tiny-llama-cpu"))
    parser.add_argument("--designs", default="seed,continuous", help=f"comma-separated, of {', '.join(DESIGNS)}")
    parser.add_argument("--trials", type=int, help="Optuna trials per candidate (default: the target's [search] trials)")
    args = parser.parse_args()
    target = load_target(args.target)
    space = load_space(default_space_path())
    trials = args.trials or target.spec.search.trials
    say("judge_cost: warming the reference cache")
    t0 = time.perf_counter()
    warm_references(target)
    out: dict = {"target": target.name, "trials_per_candidate": trials, "goal_gate_share_max": GOAL,
                 "reference_warm_up_s": round(time.perf_counter() - t0, 1), "candidates": {}}
    with tempfile.TemporaryDirectory(prefix="vibeserve-judge-cost-") as tmp:
        for name in args.designs.split(","):
            spec = load_candidate(materialise_seed(Path(tmp) / name / "cand", design=DESIGNS[name]))
            say(f"judge_cost: {name}: judging")
            verdict = judge(target, spec, None, Path(tmp) / name / "judge", say=say)
            if not verdict.passed:
                raise SystemExit(f"{name} was not validated: {verdict.gate}: {verdict.reason}")
            say(f"judge_cost: {name}: evaluating ({trials} trials)")
            t0 = time.perf_counter()
            evaluate(target, spec, Path(tmp) / name / "eval", space.active_knobs(spec.design), {}, trials, say=say)
            evaluate_s = time.perf_counter() - t0
            loop_s = verdict.seconds + evaluate_s
            out["candidates"][name] = {
                "gates_s": {g.gate: round(g.seconds, 2) for g in verdict.gates},
                "gate_share_of_inner_loop": {g.gate: round(g.seconds / loop_s, 3) for g in verdict.gates},
                "judge_s": round(verdict.seconds, 1),
                "evaluate_s": round(evaluate_s, 1),
                "inner_loop_s": round(loop_s, 1),
                "judge_share": round(verdict.seconds / loop_s, 3),
                "goal_met": verdict.seconds / loop_s <= GOAL,
            }
            say(f"judge_cost: {name}: judge {verdict.seconds:.1f} s of {loop_s:.1f} s ({verdict.seconds / loop_s:.0%})")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
