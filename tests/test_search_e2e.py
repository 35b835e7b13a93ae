"""A real search, end to end: real judge, real benchmark, real Optuna, real git."""

from __future__ import annotations

import json
import shutil

import optuna

from conftest import run_cli
from search_helpers import commits_lost_to_gc

from vibeserve_ray.search.results import read_results
from vibeserve_ray.search.state import RunRepo
from vibeserve_ray.search.studies import storage_url


def test_small_real_search_finds_a_validated_candidate_and_status_reports_it(watched_search):
    run = watched_search.run
    assert watched_search.returncode == 0, watched_search.stderr[-4000:]
    assert "offline implementer" in watched_search.stderr  # says so in one line when no API key is set
    rows = read_results(run)
    assert [x.implementer for x in rows] == ["seed", "offline", "tune"]  # the tuning pass: test_tune
    seed, child, _ = rows
    assert seed.verdict == "validated" and seed.headline_value > 0
    repo = RunRepo(run / "repo")
    assert repo.parent(child.commit) == seed.commit
    notes = repo.notes(child.commit)
    assert notes[0]["verdict"] == child.verdict and "trials" in notes[0]
    assert seed.hints, "the evaluator left hints for the next round"
    study = optuna.load_study(storage=storage_url(run), study_name=f"island-{child.island}:{child.commit[:12]}")
    assert [t.params for t in study.trials] == [{k: v for k, v in notes[0]["trials"][0]["knobs"].items() if k in study.trials[0].params}]
    assert study.trials[0].params, "the study holds the candidate's tuned knobs"
    status = run_cli("status", str(run), "--json")
    assert status.returncode == 0
    st = json.loads(status.stdout)
    assert st["best"]["commit"] in {r.commit for r in rows} and st["best"]["headline"] > 0
    assert [e["rank"] for e in st["leaderboard"]] == [1, 2, 3]
    text = run_cli("status", str(run)).stdout
    assert "lineage of the best" in text and seed.commit[:12] in text
    assert "MEMORY.md" not in repo._git("ls-tree", "-r", "--name-only", child.commit)
    assert "round 1" in repo.read_planning("MEMORY.md")


def test_the_final_remeasure_goes_through_ray_serve_and_deploy_serves_the_knobs_it_chose(watched_search):
    from vibeserve_ray.deploy.choice import choose

    run = watched_search.run
    assert watched_search.returncode == 0, watched_search.stderr[-4000:]
    rm = json.loads((run / "remeasure.json").read_text())
    assert rm["path"] == "ray serve" and "through Ray Serve" in watched_search.stderr
    best = json.loads(run_cli("status", str(run), "--json").stdout)["best"]
    assert rm["best"]["commit"] == best["commit"] and rm["seed"]["headline"] > 0 and rm["best"]["headline"] > 0
    assert rm["seed"]["exact_responses"] == "16/16" and all(v["exact_responses"] == "16/16" for v in rm["variants"])
    assert rm["variants"][0]["knobs"] == best["knobs"]  # the tuned knobs are always among the finalists
    assert rm["serve_knobs"] in [v["knobs"] for v in rm["variants"]]
    assert rm["best"]["headline"] == max(v["headline"] for v in rm["variants"])  # output tok/s: higher is better
    assert choose(str(run), None, None, None).knobs == rm["serve_knobs"]


def test_every_commit_the_search_recorded_survives_git_gc(watched_search, tmp_path):
    assert watched_search.returncode == 0, watched_search.stderr[-4000:]
    repo = shutil.copytree(watched_search.run / "repo", tmp_path / "repo")  # the shared run stays as the search left it
    commits = [r.commit for r in read_results(watched_search.run)]
    assert len(commits) == 3 and commits_lost_to_gc(repo, commits) == []
