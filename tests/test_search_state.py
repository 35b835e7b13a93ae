"""Search state in git and the results table: real repos in temp dirs."""

from __future__ import annotations

import json
from pathlib import Path

from vibeserve_ray.candidate import load_candidate, materialise_seed, write_candidate_toml
from vibeserve_ray.inner.judge.scan import scan_for_bypass
from vibeserve_ray.search.results import Evaluation, read_results, rebuild_from_notes
from vibeserve_ray.search.state import RunRepo, extract_tree, pack_dir


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
    rows = [Evaluation(f"e{i}", commit, repo.tree_id(commit), "", 0, i, "seed", "{}", "{}", "validated", headline_value=float(i), finished_at=i)
            for i in range(3)]
    for r in rows:
        repo.add_note(commit, r.to_dict())
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
