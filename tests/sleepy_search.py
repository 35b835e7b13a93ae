"""A search whose inner loop only takes time: orchestration tests and benchmarks/search_overhead.py.

The outer loop is the real one (Ray, islands, git, results table); each candidate's inner
loop applies its proposal and sleeps instead of judging and measuring, so scheduling,
resumption and node loss can be tested in seconds. Run as a script it takes the
`vibeserve search` flags that matter here:

    python tests/sleepy_search.py TARGET --run DIR --sleep S [--candidate-sleep S] [--address A] [--rounds N]
        [--max-candidates N] [--time-limit S]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import ray

from vibeserve_ray.candidate import load_candidate
from vibeserve_ray.inner.implement import apply_design
from vibeserve_ray.inner.loop import InnerLoop, Workspace
from vibeserve_ray.inner.task import InnerTask

# Ray workers cannot import this file (tests/ is on no worker's path): ship it by value.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


def sleepy_inner_loop(seconds: float, candidate_seconds: float | None = None) -> InnerLoop:
    """An inner loop that implements the proposal, sleeps (the seed `seconds`, candidates
    `candidate_seconds`, default the same), and validates it with a headline that is
    deterministic and distinct per design."""

    def inner_loop(task: InnerTask):
        ws = Workspace(task)
        message = "seed" if task.proposal is None else apply_design(task.proposal, ws.candidate)
        time.sleep(seconds if task.proposal is None or candidate_seconds is None else candidate_seconds)
        value = 1.0 + len(json.dumps(load_candidate(ws.candidate).design, sort_keys=True)) % 7
        return ws.result("validated", message, headline_name="output_throughput", headline_value=value, slo_passed=True)

    return inner_loop


def main(argv: list[str] | None = None) -> int:
    from vibeserve_ray.cli import _portable_path
    from vibeserve_ray.design_space import default_space_path, load_space
    from vibeserve_ray.search.clock import SearchBudget
    from vibeserve_ray.search.controller import Search, connect_ray
    from vibeserve_ray.target import load_target

    p = argparse.ArgumentParser()
    p.add_argument("target")
    p.add_argument("--run", required=True)
    p.add_argument("--sleep", type=float, required=True)
    p.add_argument("--address")
    p.add_argument("--rounds", type=int)
    p.add_argument("--max-candidates", type=int)
    p.add_argument("--time-limit", type=float)
    p.add_argument("--candidate-sleep", type=float, help="candidates sleep this long (default --sleep)")
    args = p.parse_args(argv)
    target = load_target(args.target)
    connect_ray(args.address)
    say = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    summary = Search(target, _portable_path(args.target), Path(args.run), load_space(default_space_path()),
                     # no tuning pass: nothing here is measured, so there are no knobs to tune
                     replace(SearchBudget.of(target, args.rounds, args.time_limit, max_candidates=args.max_candidates), finalist_trials=0), say=say,
                     inner_loop=sleepy_inner_loop(args.sleep, args.candidate_sleep)).run()
    return 0 if summary.best is not None else 1


if __name__ == "__main__":
    sys.exit(main())
