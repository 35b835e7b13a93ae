"""A cluster smaller than a round plans the round in waves: on 2 CPUs a 2-CPU target runs
one inner loop at a time, and each wave's parent is chosen after the previous wave's
result reached the island, so the search builds on what it just measured.

The outer loop is the real one (local Ray, islands, git); the inner loop only applies
the proposal and scores a design by how many changes it holds (every move helps).
"""

from __future__ import annotations

import sys

import ray
from search_helpers import small_target

from vibeserve_ray.candidate import load_candidate
from vibeserve_ray.design_space import default_space_path, load_space
from vibeserve_ray.inner.implement import apply_design
from vibeserve_ray.inner.loop import Workspace
from vibeserve_ray.inner.task import InnerTask
from vibeserve_ray.search.clock import SearchBudget
from vibeserve_ray.search.controller import Search
from vibeserve_ray.search.results import read_results
from vibeserve_ray.target import load_target

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray workers cannot import tests/

SEED_DESIGN = load_space(default_space_path()).defaults()[0]


def deeper_is_better(task: InnerTask):
    ws = Workspace(task)
    message = "seed" if task.proposal is None else apply_design(task.proposal, ws.candidate)
    design = load_candidate(ws.candidate).design
    depth = sum(design.get(k) != v for k, v in SEED_DESIGN.items())
    return ws.result("validated", message, headline_name="output_throughput", headline_value=1.0 + depth, slo_passed=True)


def test_one_slot_cluster_builds_each_wave_on_the_last(tmp_path, tiny_models):
    target_dir = small_target(tmp_path, islands=1, population=4, rounds=1)  # num_cpus = 2: one inner loop at a time
    run = tmp_path / "run"
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        Search(load_target(target_dir), str(target_dir), run, load_space(default_space_path()),
               SearchBudget(rounds=1, time_limit_s=600, max_candidates=None, candidate_time_limit_s=120, n_trials=1), say=print,
               inner_loop=deeper_is_better).run()
    finally:
        ray.shutdown()
    rows = read_results(run)
    round1 = [r for r in rows if r.round == 1]
    assert len(round1) == 4
    spans = sorted((r.started_at, r.finished_at) for r in round1)
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:])), "one slot: the inner loops ran one after another"
    ours = {r.commit for r in round1}
    assert any(r.parent in ours for r in round1), "no candidate of the round was built on another: every wave started from the seed"
    deepest = max(sum(r.design.get(k) != v for k, v in SEED_DESIGN.items()) for r in round1)
    assert deepest >= 2, "the round never went two moves from the seed"


def test_parents_are_picked_as_often_as_they_come_close_to_the_best():
    from collections import Counter

    from vibeserve_ray.search.islands import Island, Member
    from vibeserve_ray.target import Objective

    island = Island(0, Objective("output_throughput", "maximize"), seed=3)
    for commit, value in (("seed", 64.0), ("batched", 256.0), ("close", 240.0)):
        island.add(Member(commit, {}, {}, "validated", value))
    picks = Counter(island.select_parent().commit for _ in range(2000))
    assert picks["seed"] < 0.01 * 2000, picks  # 0.25x the best: a tournament of two picked it a quarter of the time
    assert 0.3 < picks["close"] / picks["batched"] < 1.0, picks  # 0.94x: (0.94)^4 = 0.77 as often as the best
    latency = Island(0, Objective("mean_e2el_ms", "minimize"), seed=3)
    for commit, value in (("seed", 4000.0), ("fast", 1000.0)):
        latency.add(Member(commit, {}, {}, "validated", value))
    assert Counter(latency.select_parent().commit for _ in range(500))["fast"] > 490
    zero = Island(0, Objective("output_throughput", "maximize"))
    zero.add(Member("z", {}, {}, "validated", 0.0))
    assert zero.select_parent().commit == "z"  # no speedup over a headline of 0: the best itself
