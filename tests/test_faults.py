"""Faults survived: a search whose candidates fork-bomb, flood their output or disk, have
their engine killed mid-benchmark, lose their Ray worker mid-evaluation, or damage the
run's results table or Optuna storage goes on, and nothing evaluated is lost.

The outer loop is the real one (local Ray, git, notes, the table, optuna.db). Each
candidate's inner loop claims one fault and suffers it for real: the sandboxed process
of a misbehaving candidate (tests/candidates/) through the real inner loop, a SIGKILL
of its own Ray worker, garbage written over the run's files. Candidates without a fault
only take time (as tests/sleepy_search.py).
"""

from __future__ import annotations

import dataclasses
import os
import signal
import sys
import time
from pathlib import Path

import optuna
import psutil
import pytest
import ray
from conftest import TEST_CANDIDATES
from search_helpers import small_target

from vibeserve_ray.candidate import load_candidate
from vibeserve_ray.design_space import default_space_path, load_space
from vibeserve_ray.inner.evaluate import Trial, evaluate
from vibeserve_ray.inner.loop import InnerLoop, Workspace, _ray_context, run_inner_loop
from vibeserve_ray.inner.task import InnerTask
from vibeserve_ray.runner import Limits, start_candidate
from vibeserve_ray.search.clock import SearchBudget
from vibeserve_ray.search.controller import Search
from vibeserve_ray.search.results import RESULTS_FILE, ResultsUnreadable, read_results
from vibeserve_ray.search.state import RunRepo
from vibeserve_ray.search.studies import STUDIES_FILE, storage_url
from vibeserve_ray.target import load_target
from vibeserve_ray.trees import pack_dir

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray workers cannot import tests/

MISBEHAVING = ("fork_bomb", "output_flood", "disk_flood")  # candidates in tests/candidates, judged for real
FAULTS = (*MISBEHAVING, "engine_killed", "worker_killed", "results_corrupted", "results_deleted", "optuna_corrupted")
KNOB = optuna.distributions.distribution_to_json(optuna.distributions.IntDistribution(1, 64))


def _claim(state: Path, eval_id: str) -> str:
    """This task's fault: the one it claimed before (a retried task keeps its own), else the
    first nobody has claimed (an atomic rename), else ''."""
    mine = state / "claimed" / eval_id
    if mine.is_file():
        return mine.read_text()
    for f in sorted((state / "todo").iterdir()):
        try:
            f.rename(mine)
        except OSError:
            continue
        name = f.name.split("-", 1)[1]
        mine.write_text(name)
        return name
    return ""


def _took_time(task: InnerTask, value: float = 1.0):
    time.sleep(1)
    trial = Trial({"max_num_seqs": 8}, value, True, distributions={"max_num_seqs": KNOB})
    return Workspace(task).result("validated", "took time", headline_name="output_throughput", headline_value=value, slo_passed=True,
                                  trials=[trial])


def _readable(run_dir: Path, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            read_results(run_dir)
            return
        except ResultsUnreadable:
            time.sleep(0.2)


def faulty_inner_loop(state: Path, run_dir: Path, target_dir: Path) -> InnerLoop:
    def inner_loop(task: InnerTask):
        fault = _claim(state, task.eval_id) if task.proposal is not None else ""
        if fault in MISBEHAVING:
            return run_inner_loop(dataclasses.replace(task, parent_tree=pack_dir(TEST_CANDIDATES / fault), proposal=None))
        if fault == "engine_killed":
            ws = Workspace(dataclasses.replace(task, parent_tree=pack_dir(TEST_CANDIDATES / "killed_mid_benchmark")))
            outcome = evaluate(load_target(target_dir), load_candidate(ws.candidate), ws.root / "eval", [], {}, 1)
            f = outcome.failure
            assert f is not None
            return ws.result("failed", "killed mid-benchmark", failure_phase=f.phase, failure_reason=f.reason, trials=outcome.trials)
        if fault == "worker_killed" and _ray_context()[1] == 0:
            t = load_target(target_dir)  # mid-evaluation: its candidate's process is up when the worker dies
            proc = start_candidate(load_candidate(TEST_CANDIDATES / "echo"), t.model_dir(), t.tokenizer_dir(), t.served_name, "cpu",
                                   Limits(startup_timeout_s=120), Workspace(task).root / "engine")
            (state / "orphan.pid").write_text(str(proc.proc.pid))
            os.kill(os.getpid(), signal.SIGKILL)
        if fault == "results_corrupted":
            (run_dir / RESULTS_FILE).write_bytes(b"PAR1 not a parquet file")
        elif fault == "results_deleted":
            _readable(run_dir)  # after the driver set a corrupted table aside (same wave), so both faults are seen
            (run_dir / RESULTS_FILE).unlink(missing_ok=True)
        elif fault == "optuna_corrupted":
            (run_dir / STUDIES_FILE).write_bytes(b"not a database " * 100)
        return _took_time(task, 2.0 if fault else 1.0)

    return inner_loop


@pytest.fixture(scope="module")
def local_ray():
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_search_survives_every_fault_and_loses_nothing(tmp_path, tiny_models, local_ray):
    target_dir = small_target(tmp_path, islands=1, population=len(FAULTS), rounds=1, num_gpus=0)
    text = (target_dir / "target.toml").read_text().replace("num_requests = 64", "num_requests = 24")
    text = text.replace("[limits]\n", "[limits]\nprocesses = 64\noutput_mb = 4\ndisk_mb = 32\n")
    (target_dir / "target.toml").write_text(text)
    state, run_dir = tmp_path / "faults", tmp_path / "run"
    (state / "todo").mkdir(parents=True)
    (state / "claimed").mkdir()
    for i, name in enumerate(FAULTS):
        (state / "todo" / f"{i}-{name}").touch()

    summary = Search(load_target(target_dir), str(target_dir), run_dir, load_space(default_space_path()),
                     SearchBudget(rounds=1, time_limit_s=900, max_candidates=None, candidate_time_limit_s=300, n_trials=1), say=print,
                     inner_loop=faulty_inner_loop(state, run_dir, target_dir)).run()

    assert not list((state / "todo").iterdir()), "every fault was injected"
    rows = read_results(run_dir)  # readable again (the damaged copy set aside), and complete
    notes = RunRepo(run_dir / "repo").all_notes()
    assert sorted(r.eval_id for r in rows) == sorted(n["eval_id"] for recs in notes.values() for n in recs)
    assert len(rows) == 1 + len(FAULTS) == summary.evaluated
    assert list(run_dir.glob(f"{RESULTS_FILE}.unreadable-*")) and list(run_dir.glob(f"{STUDIES_FILE}.unreadable-*"))
    outcome = {r.eval_id: r for r in rows}
    faults = {(state / "claimed" / e).read_text(): outcome[e] for e in os.listdir(state / "claimed")}
    for name in MISBEHAVING:
        assert faults[name].verdict == "failed" and faults[name].failure_phase == "reference-equality", faults[name]
    assert "processes" in faults["fork_bomb"].failure_reason or "MiB" in faults["fork_bomb"].failure_reason
    assert "output reached the 4 MiB limit" in faults["output_flood"].failure_reason
    assert "exited" in faults["disk_flood"].failure_reason
    assert (faults["engine_killed"].verdict, faults["engine_killed"].failure_phase) == ("failed", "crash")
    assert faults["worker_killed"].verdict == "validated" and faults["worker_killed"].attempt >= 1  # Ray ran it again
    orphan = int((state / "orphan.pid").read_text())
    assert not psutil.pid_exists(orphan) or psutil.Process(orphan).status() == psutil.STATUS_ZOMBIE, "its engine died with the worker"
    for name in ("results_corrupted", "results_deleted", "optuna_corrupted"):
        assert faults[name].verdict == "validated"
    studied = {f"island-{n['island']}:{c[:12]}" for c, recs in notes.items() for n in recs if n.get("trials")}
    assert set(optuna.get_all_study_names(storage_url(run_dir))) == studied  # rebuilt from the notes
