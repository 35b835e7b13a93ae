"""Search state in git and the results table: real repos in temp dirs."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from search_helpers import commits_lost_to_gc

from vibeserve_ray.candidate import load_candidate, write_candidate_toml
from vibeserve_ray.inner.hints import Hint
from vibeserve_ray.inner.judge.scan import scan_for_bypass
from vibeserve_ray.inner.result import InnerResult
from vibeserve_ray.search import record
from vibeserve_ray.search.results import RESULTS_FILE, Evaluation, read_results, rebuild_from_notes, write_results
from vibeserve_ray.search.state import RunRepo
from vibeserve_ray.seed import materialise_seed
from vibeserve_ray.trees import extract_tree, pack_dir


def _candidate(tmp_path, name="c"):
    return materialise_seed(tmp_path / name)


def test_candidate_commit_tree_is_exactly_the_directory_and_parent_is_its_origin(tmp_path):
    repo = RunRepo(tmp_path / "repo")
    cand = _candidate(tmp_path)
    seed = repo.commit_candidate(cand, None, "seed", branch="island-0")
    spec = load_candidate(cand)
    write_candidate_toml(cand, spec.entrypoint, {**spec.design, "scheduler": "continuous"}, spec.knobs)
    child = repo.commit_candidate(cand, seed, "child", branch="island-0")
    assert repo.parent(child) == seed and repo.parent(seed) is None
    assert repo.branch_head("island-0") == child
    assert repo.lineage(child) == [child, seed]
    out = repo.export(child, tmp_path / "exported")
    assert sorted(p.name for p in out.iterdir()) == ["candidate.toml", "engine"]
    assert load_candidate(out).design["scheduler"] == "continuous"
    assert repo.tree_id(child) == repo.tree_of_dir(cand)
    assert "scheduler" in repo.diff(seed, child)


def test_relative_paths_mean_the_callers_directory(tmp_path, monkeypatch):
    # `vibeserve search T --run runs/demo`: git runs inside the repository, paths are the user's
    monkeypatch.chdir(tmp_path)
    materialise_seed(tmp_path / "runs" / "demo" / ".seed")
    repo = RunRepo(Path("runs/demo/repo"))
    commit = repo.commit_candidate(Path("runs/demo/.seed"), None, "seed", branch="seed")
    assert repo.tree_id(commit) == repo.tree_of_dir(tmp_path / "runs" / "demo" / ".seed")
    assert sorted(p.name for p in repo.export(commit, Path("out")).iterdir()) == ["candidate.toml", "engine"]


def test_trees_travel_as_bytes(tmp_path):
    repo = RunRepo(tmp_path / "repo")
    commit = repo.commit_candidate(_candidate(tmp_path), None, "seed")
    back = extract_tree(repo.archive(commit), tmp_path / "back")
    again = repo.commit_candidate(extract_tree(pack_dir(back), tmp_path / "again"), None, "same tree")
    assert repo.tree_id(again) == repo.tree_id(commit)


def test_notes_hold_every_evaluation_and_rebuild_the_table(tmp_path):
    repo = RunRepo(tmp_path / "repo")
    commit = repo.commit_candidate(_candidate(tmp_path), None, "seed")
    rows = [Evaluation(eval_id=f"e{i}", commit=commit, tree=repo.tree_id(commit), parent="", island=0, round=i, implementer="seed", design={},
                       knobs={}, verdict="validated", headline_value=float(i), finished_at=i) for i in range(3)]
    for r in rows:
        repo.add_note(commit, r.to_record())
    assert [n["eval_id"] for n in repo.notes(commit)] == ["e0", "e1", "e2"]
    rebuilt = rebuild_from_notes(tmp_path, repo.all_notes())
    key = lambda rs: [(r.eval_id, r.round, r.headline_value, r.verdict) for r in rs]  # noqa: E731 (NaN fields never compare equal)
    assert key(rebuilt) == key(rows) and key(read_results(tmp_path)) == key(rows)


def test_planning_files_live_on_their_own_branch(tmp_path):
    repo = RunRepo(tmp_path / "repo")
    commit = repo.commit_candidate(_candidate(tmp_path), None, "seed", branch="island-0")
    repo.write_planning({"MEMORY.md": "# memory\n"}, "m")
    repo.write_planning({"BACKLOG.md": "# backlog\n"}, "b")
    assert repo.read_planning("MEMORY.md") == "# memory" and repo.read_planning("BACKLOG.md") == "# backlog"
    assert "MEMORY.md" not in json.dumps(sorted(p.name for p in repo.export(commit, tmp_path / "x").iterdir()))


def test_bypass_scan_flags_added_cheats_not_the_seed(tmp_path):
    parent = _candidate(tmp_path, "parent")
    assert scan_for_bypass(parent, None) == []  # the seed itself is clean
    child = _candidate(tmp_path, "child")
    runner = child / "engine" / "core" / "model_runner.py"
    runner.write_text(runner.read_text() + "\nimport socket\nANSWERS = open('targets/tiny-llama-cpu/checker/prompts.jsonl').read()\n")
    reasons = {f.reason for f in scan_for_bypass(child, parent)}
    assert {"network access", "reading benchmark or checker data"} <= reasons


# A row as the code before the typed result wrote it (to the table and, with its trials, to a note).
OLD_ROW = {
    "eval_id": "e1", "commit": "c" * 40, "tree": "t" * 40, "parent": "p" * 40, "island": 1, "round": 2, "implementer": "offline",
    "design": '{"kv_cache": "slab", "scheduler": "continuous"}', "knobs": '{"batch_wait_ms": 1.0, "num_threads": 2}', "verdict": "validated",
    "failure_phase": "", "failure_reason": "", "headline_name": "output_throughput", "headline_value": 123.5, "speedup": 1.5,
    "slo_passed": True, "metrics": '{"duration_s": 4.25, "mean_ttft_ms": NaN, "output_throughput": 123.5}',
    "hints": '[{"text": "batch them", "suggest": {"scheduler": "continuous"}, "weight": 3.0}, {"text": "fuse", "suggest": {}, "weight": 0.5}]',
    "started_at": 1000.0, "finished_at": 1060.0, "implement_s": 1.0, "judge_s": 20.0, "evaluate_s": 39.0, "node": "n1", "attempt": 0,
    "agent_calls": 2, "agent_input_tokens": 10, "agent_cache_write_tokens": 0, "agent_cache_read_tokens": 5, "agent_output_tokens": 7,
    "agent_cost_usd": 0.01, "agent_s": 3.0,
    "agent_usage": '{"implementer": {"cache_read_tokens": 5, "cache_write_tokens": 0, "calls": 2, "cost_usd": 0.01, "input_tokens": 10, '
                   '"output_tokens": 7, "seconds": 2.0, "session_s": 3.0}}',
    "judge_gates": '[{"gate": "scan", "verdict": "passed", "seconds": 0.12}, {"gate": "reference-equality", "verdict": "passed", "seconds": 9.5}]',
    "sandbox_warning": "",
}
NEWER_COLUMNS = ("agent_calls", "agent_input_tokens", "agent_cache_write_tokens", "agent_cache_read_tokens", "agent_output_tokens",
                 "agent_cost_usd", "agent_s", "agent_usage", "judge_gates", "sandbox_warning")


def _assert_typed(row: Evaluation) -> None:
    assert row.design == {"kv_cache": "slab", "scheduler": "continuous"} and row.knobs == {"batch_wait_ms": 1.0, "num_threads": 2}
    assert row.metrics["duration_s"] == 4.25 and row.hints == (Hint("batch them", {"scheduler": "continuous"}, 3.0), Hint("fuse", {}, 0.5))
    assert row.agent_usage["implementer"]["calls"] == 2 and [g["gate"] for g in row.judge_gates] == ["scan", "reference-equality"]


def _stored(run_dir: Path) -> tuple[pa.Schema, dict]:
    table = pq.read_table(run_dir / RESULTS_FILE)
    return table.schema, table.to_pylist()[0]


def _same(a: dict, b: dict) -> bool:
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)  # NaN-proof


def test_a_table_written_by_the_old_code_reads_typed_and_writes_back_column_for_column(tmp_path):
    old = tmp_path / "old"
    old.mkdir()
    pq.write_table(pa.Table.from_pylist([OLD_ROW]), old / RESULTS_FILE)
    [row] = read_results(old)
    _assert_typed(row)
    write_results(tmp_path, [row])
    schema, stored = _stored(tmp_path)
    assert schema.equals(pq.read_table(old / RESULTS_FILE).schema) and _same(stored, OLD_ROW)
    older = {k: v for k, v in OLD_ROW.items() if k not in NEWER_COLUMNS}  # a table from before the agents' columns
    pq.write_table(pa.Table.from_pylist([older]), old / RESULTS_FILE)
    [row] = read_results(old)
    assert row.agent_usage == {} and row.judge_gates == () and row.agent_calls == 0 and row.design == {"kv_cache": "slab", "scheduler": "continuous"}


def test_notes_written_by_the_old_code_rebuild_the_same_table(tmp_path):
    repo = RunRepo(tmp_path / "repo")
    commit = repo.commit_candidate(_candidate(tmp_path), None, "seed")
    repo.add_note(commit, OLD_ROW | {"commit": commit, "trials": [{"knobs": {"batch_wait_ms": 1.0}, "value": 123.5}]})
    [row] = rebuild_from_notes(tmp_path, repo.all_notes())
    _assert_typed(row)
    assert _same(_stored(tmp_path)[1], OLD_ROW | {"commit": commit})
    assert _same({k: v for k, v in repo.notes(commit)[0].items() if k != "trials"}, row.to_record())  # what new notes hold, too


def _sibling_run(run: Path, target, tag: bool = True) -> list[Evaluation]:
    """The seed and three children of it on one island, recorded as the search records them:
    a validated one, a rejected one, a validated one; the island branch ends at the last."""
    repo, rows = RunRepo(run / "repo"), []
    for i, (knob, verdict) in enumerate([(5.0, "validated"), (1.0, "validated"), (2.0, "rejected"), (3.0, "validated")]):
        cand = materialise_seed(run / f"c{i}", knobs={"batch_wait_ms": knob})
        spec = load_candidate(cand)
        result = InnerResult(eval_id=f"e{i}", island=0, round=i, parent=rows[0].commit if rows else "", tree=pack_dir(cand), message=f"c{i}",
                             design=spec.design, knobs=spec.knobs, verdict=verdict, headline_name="output_throughput", headline_value=100.0 + i)
        rows.append(record.record_result(run, repo, result, rows, target))
    if not tag:  # as a run recorded before candidates were tagged
        for r in rows:
            repo._git("update-ref", "-d", f"refs/tags/candidates/{r.eval_id}")
    return rows


def test_every_recorded_commit_survives_gc_and_a_clone_the_rejected_and_the_superseded_too(tmp_path, tiny_target):
    rows = _sibling_run(tmp_path / "run", tiny_target)
    repo = tmp_path / "run" / "repo"
    off_branch = [r.commit for r in rows[1:3] if not subprocess.run(["git", "-C", repo, "branch", "--contains", r.commit],
                                                                    capture_output=True, text=True, check=True).stdout.strip()]
    assert len(off_branch) == 2, "the validated child its island moved on from and the rejected one are on no branch"
    commits = [r.commit for r in read_results(tmp_path / "run")]
    assert commits_lost_to_gc(repo, commits) == []
    subprocess.run(["git", "clone", "--quiet", f"file://{repo}", tmp_path / "clone"], check=True)
    assert commits_lost_to_gc(tmp_path / "clone", commits) == []


def test_a_resumed_run_tags_the_commits_recorded_before_candidates_were_tagged(tmp_path, tiny_target):
    from vibeserve_ray.design_space import default_space_path, load_space
    from vibeserve_ray.search.clock import SearchBudget
    from vibeserve_ray.search.controller import Search

    run = tmp_path / "run"
    rows = _sibling_run(run, tiny_target, tag=False)
    untouched = tmp_path / "untouched"
    shutil.copytree(run / "repo", untouched)
    assert len(commits_lost_to_gc(untouched, [r.commit for r in rows])) == 2  # without tags, gc drops both
    Search(tiny_target, str(run), run, load_space(default_space_path()), SearchBudget.of(tiny_target))  # resuming reconciles
    assert RunRepo(run / "repo").candidate_tags() == {r.eval_id: r.commit for r in rows}
    assert commits_lost_to_gc(run / "repo", [r.commit for r in rows]) == []
