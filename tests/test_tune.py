"""The finalist's tuning pass: knob moves on the search's best candidate, each over the
best knobs measured so far, after the evolution and within its time limit."""

from __future__ import annotations

import json

from search_helpers import small_target

from vibeserve_ray.design_space import default_space_path, load_space
from vibeserve_ray.engine.space import families, space_path
from vibeserve_ray.inner.tune import Climb, knob_moves
from vibeserve_ray.skills import load_skills
from vibeserve_ray.target import Objective

SPACE = load_space(default_space_path())
SPACES = {family: load_space(space_path(family)) for family in families()}
PROCESS = {"scheduler": "continuous", "kv_cache": "paged", "prefix_cache": "on", "attention": "sdpa", "compile": "off",
           "dtype": "float32", "speculation": "prompt_lookup", "step_loop": "process", "linear": "onednn"}


def test_moves_try_the_skills_joint_setting_first_then_each_knob_alone_within_the_cores():
    knobs = {"num_threads": 4, "max_num_seqs": 16, "max_num_batched_tokens": 512, "block_size": 16, "spec_k": 4, "spec_ngram": 2, "engine_workers": 1}
    moves = knob_moves(PROCESS, knobs, SPACE.active_knobs(PROCESS), cores=2, skills=load_skills(spaces=SPACES))
    assert moves[0] == {"engine_workers": 2, "num_threads": 1}  # engine-process: a worker per core, one thread each
    first = moves[1:8]  # each knob's first move before any knob's second
    assert first == [{"num_threads": 1}, {"max_num_seqs": 32}, {"max_num_batched_tokens": 1024}, {"block_size": 8}, {"spec_k": 8},
                     {"spec_ngram": 4}, {"engine_workers": 2}]
    assert {"num_threads": 2} in moves and not any(m.get("num_threads", 0) > 2 for m in moves)  # never past the cores
    assert {"spec_k": 2} in moves and len(moves) == len({json.dumps(m, sort_keys=True) for m in moves})
    thread = dict(PROCESS, step_loop="thread")
    assert not any("engine_workers" in m for m in knob_moves(thread, knobs, SPACE.active_knobs(thread), 2, load_skills(spaces=SPACES)))


class _T:  # a measured trial, as evaluate keeps it
    def __init__(self, knobs, value, slo_passed=True):
        self.knobs, self.value, self.slo_passed, self.failure = knobs, value, slo_passed, None


def test_a_design_change_comes_with_the_knobs_its_skill_sets_and_the_offline_implementer_writes_them(tmp_path):
    from vibeserve_ray.candidate import load_candidate
    from vibeserve_ray.inner.implement import apply_design
    from vibeserve_ray.inner.task import Proposal
    from vibeserve_ray.inner.tune import skill_settings
    from vibeserve_ray.seed import materialise_seed

    skills = load_skills(spaces=SPACES)
    process = dict(PROCESS, step_loop="process")
    assert skill_settings({"step_loop": "process"}, SPACE.active_knobs(process), 2, skills) == {"engine_workers": 2, "num_threads": 1}
    assert skill_settings({"step_loop": "process"}, SPACE.active_knobs(process), 8, skills)["engine_workers"] == 4  # the knob's range
    assert skill_settings({"linear": "onednn"}, SPACE.active_knobs(PROCESS), 2, skills) == {}  # no skill sets knobs with it
    cand = materialise_seed(tmp_path / "c")
    before = load_candidate(cand)
    design = {**before.design, "scheduler": "continuous", "kv_cache": "slab", "step_loop": "process"}
    message = apply_design(Proposal(design, {"step_loop": "process"}, "step_loop=process (skill engine-process)"), cand,
                           {"engine_workers": 2, "num_threads": 1})
    after = load_candidate(cand)
    assert after.design == design and after.knobs == {**before.knobs, "engine_workers": 2, "num_threads": 1}
    assert message.endswith("; knobs engine_workers=2, num_threads=1"), message


def test_the_climb_measures_its_start_first_then_each_move_over_the_best_knobs_so_far():
    start = {"spec_k": 4, "num_threads": 2}
    climb = Climb(start, Objective("output_throughput", "maximize"),
                  [{"spec_k": 8}, {"num_threads": 1}, {"spec_k": 4}, {"num_threads": 1}], {"spec_k", "num_threads"})
    trials = []
    assert (p := climb.next_point(trials)) == start  # the baseline, measured beside the moves
    trials.append(_T(p, 100.0))
    assert (p := climb.next_point(trials)) == {"spec_k": 8, "num_threads": 2}
    trials.append(_T(p, 120.0))  # better: the next move builds on it
    assert (p := climb.next_point(trials)) == {"spec_k": 8, "num_threads": 1}
    trials.append(_T(p, 90.0))  # worse: the best stays
    assert climb.next_point(trials) is None  # the rest lead back to knobs already measured
    lower = Climb(start, Objective("mean_e2el_ms", "minimize"), [{"spec_k": 8}, {"num_threads": 1}], {"spec_k", "num_threads"})
    assert lower.next_point([]) == start
    assert lower.next_point([_T(start, 900.0)]) == {"spec_k": 8, "num_threads": 2}
    assert lower.next_point([_T(start, 900.0), _T({"spec_k": 8, "num_threads": 2}, 800.0)]) == {"spec_k": 8, "num_threads": 1}


def test_a_search_ends_by_tuning_its_best_once_and_a_resumed_search_does_not_again(watched_search, tmp_path):
    import shutil

    import ray

    from vibeserve_ray.search.clock import SearchBudget
    from vibeserve_ray.search.controller import Search
    from vibeserve_ray.search.record import TUNE
    from vibeserve_ray.search.results import read_results
    from vibeserve_ray.search.state import RunRepo
    from vibeserve_ray.target import load_target

    assert watched_search.returncode == 0, watched_search.stderr[-4000:]
    target = load_target(watched_search.target)
    assert SearchBudget.of(target).finalist_trials == 2
    assert "search: tuning the best (" in watched_search.stderr
    run = tmp_path / "run"
    shutil.copytree(watched_search.run, run)  # the shared run stays as the search left it
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        Search(target, str(watched_search.target), run, SPACE, SearchBudget.of(target), say=print).run()  # a resume of a finished search
    finally:
        ray.shutdown()
    rows = read_results(run)
    assert len(rows) == len(read_results(watched_search.run)), "the resume evaluated something again"
    tuned = [r for r in rows if r.implementer == TUNE]
    assert len(tuned) == 1, [(r.implementer, r.verdict) for r in rows]
    [row] = tuned
    searched = [r for r in rows if r.implementer != TUNE]
    parent = max((r for r in searched if r.validated), key=lambda r: r.headline_value)
    assert row.parent == parent.commit and row.design == parent.design and row.verdict == "validated", row.failure_reason
    [note] = RunRepo(run / "repo").notes(row.commit)
    assert len(note["trials"]) == 2 and all(t["value"] == t["value"] for t in note["trials"])  # both measured, every response exact
    first_move = knob_moves(parent.design, parent.knobs, SPACE.active_knobs(parent.design), 2,
                            [s for s in load_skills() if s.applies(target) and s.for_family(SPACE)])[0]
    assert [t["knobs"] for t in note["trials"]] == [parent.knobs, parent.knobs | first_move]  # the baseline, then a move
    assert row.knobs in [t["knobs"] for t in note["trials"]]


def _timed_inner_loop(task):
    """Applies the proposal; a measurement takes 1 s on a good design (headline 2), 4 s on a
    poor one (1.5: half the designs, by their text) and 2 s on the seed (1)."""
    import time
    import zlib

    from vibeserve_ray.candidate import load_candidate
    from vibeserve_ray.inner.implement import apply_design
    from vibeserve_ray.inner.loop import Workspace

    ws = Workspace(task)
    message = "tune" if task.tune else "seed" if task.proposal is None else apply_design(task.proposal, ws.candidate)
    poor = zlib.crc32(json.dumps(load_candidate(ws.candidate).design, sort_keys=True).encode()) % 2
    value, per = (1.0, 2.0) if task.proposal is None and not task.tune else (1.5, 4.0) if poor else (2.0 + task.tune, 1.0)
    trials = task.n_trials if task.tune else 1
    time.sleep(per * trials)
    ws.timings["evaluate_s"] = per * trials
    return ws.result("validated", message, headline_name="output_throughput", headline_value=value, slo_passed=True,
                     metrics={"trials": trials, "deadline": task.deadline})


def test_the_evolution_keeps_the_tuning_pass_its_time_within_the_search_limit(tmp_path):
    import sys
    import time

    import ray

    from vibeserve_ray.search.clock import SearchBudget
    from vibeserve_ray.search.controller import Search
    from vibeserve_ray.search.record import TUNE
    from vibeserve_ray.search.results import read_results
    from vibeserve_ray.target import load_target

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray workers cannot import tests/
    target_dir = small_target(tmp_path, islands=1, population=4, rounds=20)
    budget = SearchBudget(rounds=20, time_limit_s=24, max_candidates=None, candidate_time_limit_s=60, n_trials=1, finalist_trials=3)
    run = tmp_path / "run"
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        t0 = time.time()
        Search(load_target(target_dir), str(target_dir), run, SPACE, budget, say=print, inner_loop=_timed_inner_loop).run()
        took = time.time() - t0
    finally:
        ray.shutdown()
    rows = read_results(run)
    [tuned] = [r for r in rows if r.implementer == TUNE]
    assert tuned.metrics["trials"] == 3, "the evolution ate the time kept for the tuning pass"
    assert tuned.metrics["deadline"] <= t0 + 24, "the tuning pass may run past the search's limit"
    assert len(rows) >= 5 and max(r.finished_at for r in rows if r.implementer != TUNE) <= tuned.started_at
    # a candidate's own trials stop where the evolution's share ends (the reserve: 3 s at the
    # best's pace); the first candidates, started while the seed was the best, keep none
    searched = sorted((r for r in rows if r.implementer != TUNE), key=lambda r: r.started_at)
    first_better = next(r for r in searched if r.implementer != "seed" and r.headline_value > 1.0)
    late = [(r.implementer, r.metrics["deadline"] - t0) for r in searched if r.started_at > first_better.finished_at + 0.5]
    assert late and all(at <= 24 - 3 + 1 for _, at in late), late
    # kept: 3 of the best's own measurements (3 s), not of the poor designs' (12 s)
    assert tuned.started_at - t0 >= 24 - 3 - 4, f"the evolution stopped {tuned.started_at - t0:.0f}s in, keeping far more than the pass needs"
    assert took < 24 + 6, f"the search ran {took:.0f}s past its 24s limit"


def test_the_tuning_pass_starts_no_trial_past_its_deadline(tmp_path, tiny_models):
    import time

    from vibeserve_ray.candidate import load_candidate
    from vibeserve_ray.inner.evaluate import evaluate
    from vibeserve_ray.seed import materialise_seed
    from vibeserve_ray.target import load_target

    tiny_target = load_target(small_target(tmp_path, num_requests=16, concurrency=4))  # the seed serves one at a time: 64 took a minute
    spec = load_candidate(materialise_seed(tmp_path / "c"))
    active = SPACE.active_knobs(spec.design)
    lines = []
    outcome = evaluate(tiny_target, spec, tmp_path / "eval", active, spec.knobs, 3, say=lines.append,
                       moves=[{"num_threads": 1}, {"num_threads": 2}], deadline=time.time() + 1)
    assert len(outcome.trials) == 1 and outcome.best is not None, lines  # the first (the baseline) always runs; the second would end late
    assert outcome.trials[0].knobs == spec.knobs and "evaluate: 1 trials; another would end past the deadline" in lines


def _row(commit: str, implementer: str, value: float, knobs: dict, parent: str = "", took: float = 10.0):
    from vibeserve_ray.search.results import Evaluation

    return Evaluation(eval_id=commit, commit=commit, tree=commit, parent=parent, island=0, round=1, implementer=implementer, design={},
                      knobs=knobs, verdict="validated", headline_value=value, started_at=100.0, finished_at=100.0 + took)


def test_a_tuning_pass_that_beat_its_parents_own_knobs_supersedes_the_parents_older_figure():
    from vibeserve_ray.search.record import TUNE, best

    up = Objective("output_throughput", "maximize")
    seed, parent = _row("s", "seed", 60.0, {}), _row("p", "offline", 300.0, {"num_threads": 2}, "s")
    moved = _row("t", TUNE, 280.0, {"num_threads": 1}, "p")  # the machine slowed: the parent's knobs measured 250 in the pass
    assert best([seed, parent, moved], up) is moved
    stayed = _row("t", TUNE, 280.0, {"num_threads": 2}, "p")  # the parent's knobs were the pass's best: nothing supersedes
    assert best([seed, parent, stayed], up) is parent
    other = _row("o", "offline", 320.0, {}, "s")  # a faster design still wins
    assert best([seed, parent, moved, other], up) is other


def test_the_time_an_inner_loop_takes_is_the_candidates_not_the_serial_seeds():
    from vibeserve_ray.search.clock import expected_inner_s
    from vibeserve_ray.search.record import TUNE

    seed = _row("s", "seed", 60.0, {}, took=300.0)
    assert expected_inner_s([]) == 0.0 and expected_inner_s([seed]) == 300.0  # nothing else known yet: the seed's
    children = [_row(c, "offline", 250.0, {}, "s", took=t) for c, t in (("a", 100.0), ("b", 90.0))]
    assert expected_inner_s([seed, children[0]]) == 100.0  # was 300: the search stopped with room for two more
    assert expected_inner_s([seed, *children, _row("t", TUNE, 260.0, {}, "a", took=600.0)]) == 100.0


def test_a_lost_candidate_is_recorded_with_the_knobs_its_skill_set(tmp_path):
    """A candidate whose inner loop never returned is kept as what it would have run."""
    from pathlib import Path

    from vibeserve_ray.candidate import load_candidate
    from vibeserve_ray.inner.task import InnerTask, Proposal
    from vibeserve_ray.search.record import lost_result
    from vibeserve_ray.search.state import RunRepo
    from vibeserve_ray.seed import materialise_seed
    from vibeserve_ray.target import load_target
    from vibeserve_ray.trees import extract_tree

    repo = RunRepo(tmp_path / "repo")
    seed = materialise_seed(tmp_path / "seed")
    parent = repo.commit_candidate(seed, None, "seed")
    before = load_candidate(seed)
    design = {**before.design, "scheduler": "continuous", "kv_cache": "slab", "step_loop": "process"}
    task = InnerTask(eval_id="e1", island=0, round=1, parent=parent, parent_tree=repo.archive(parent),
                     proposal=Proposal(design, {"step_loop": "process"}, "step_loop=process (skill engine-process)"),
                     warm_knobs=before.knobs, target_path=str(Path(__file__).parents[1] / "targets" / "tiny-llama-cpu"),
                     space_path=str(default_space_path()), n_trials=1)
    result = lost_result(repo, task, load_target(task.target_path), SPACE, "no result within 600s", "timeout")
    assert (result.verdict, result.failure_phase) == ("timeout", "inner-loop")
    assert result.design == design and result.knobs == {**before.knobs, "engine_workers": 2, "num_threads": 1}
    assert load_candidate(extract_tree(result.tree, tmp_path / "lost")).knobs == result.knobs
    assert result.message.endswith("; knobs engine_workers=2, num_threads=1"), result.message
