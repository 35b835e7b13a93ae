"""Watching a real search: the Ray dashboard while it runs, the HTML report during and
after, the Optuna storage optuna-dashboard opens (the small real search of conftest's
`watched_search`, shared with test_search_e2e)."""

from __future__ import annotations

import json
import os
from html.parser import HTMLParser
from pathlib import Path

import pytest

from browser import chromium, dump_dom, screenshot
from conftest import ROOT, run_cli

ARTIFACTS = Path(os.environ.get("VIBESERVE_TEST_ARTIFACTS", ROOT / "test-artifacts"))


def test_search_prints_its_dashboard_which_answers_and_serves_vibeserve_round(watched_search):
    assert watched_search.returncode == 0, watched_search.stderr[-4000:]
    assert watched_search.dashboard.startswith("http://127.0.0.1:"), watched_search.stderr[:2000]
    assert watched_search.dashboard_version.get("ray_version"), "the dashboard did not answer at the printed URL"
    assert watched_search.metrics, "vibeserve_round never appeared among the served metrics"
    rounds = [ln for ln in watched_search.metrics.splitlines() if ln.startswith("ray_vibeserve_round{")]
    assert any('island="0"' in ln and ln.endswith(" 1.0") for ln in rounds), rounds


VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


class _Page(HTMLParser):
    """What a reader of the page sees: the leaderboard's rows, the lineage's rows, and the
    data marks inside each plot (elements under a `data-` group of its SVG)."""

    def __init__(self):
        super().__init__()
        self.stack: list[tuple[str, dict]] = []
        self.rows = {"leaderboard": 0, "lineage": 0}
        self.plots: list[int] = []  # data marks per plot
        self.external: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        for key in ("src", "href", "xlink:href"):
            if a.get(key, "").startswith(("http:", "https:", "//")):
                self.external.append(a[key])
        classes = [c for _, at in self.stack for c in at.get("class", "").split()]
        if tag == "tr" and self.stack and any(c in self.rows for c in classes):
            self.rows[next(c for c in classes if c in self.rows)] += 1
        if tag == "figure" and "plot" in a.get("class", ""):
            self.plots.append(0)
        in_data = any(at.get("id", "").startswith("data-") for _, at in self.stack)
        if tag in ("use", "path") and in_data and any(t == "figure" for t, _ in self.stack):
            self.plots[-1] += 1
        if tag not in VOID:
            self.stack.append((tag, a))

    def handle_endtag(self, tag):
        opened = [i for i, (t, _) in enumerate(self.stack) if t == tag]
        if opened:
            del self.stack[opened[-1]:]


def _page(html: str) -> _Page:
    p = _Page()
    p.feed(html)
    return p


@pytest.mark.skipif(chromium() is None, reason="needs headless Chromium (Debian: apt-get install chromium)")
def test_report_of_a_real_run_renders_in_chromium_with_leaderboard_plots_and_lineage(watched_search):
    from vibeserve_ray.search.results import read_results
    from vibeserve_ray.search.state import RunRepo

    assert watched_search.returncode == 0, watched_search.stderr[-4000:]
    r = run_cli("report", str(watched_search.run))
    assert r.returncode == 0, r.stderr[-2000:]
    page = Path(r.stdout.strip())
    assert page == watched_search.run / "report.html"
    shot = screenshot(page, ARTIFACTS / "report.png")
    assert shot.stat().st_size > 20_000, "the screenshot is (nearly) blank"
    seen = _page(dump_dom(page))
    rows = read_results(watched_search.run)
    assert seen.rows["leaderboard"] == len(rows) + 1  # the header row, then one per evaluation
    assert sum(n > 0 for n in seen.plots) >= 3, seen.plots
    best = json.loads(run_cli("status", str(watched_search.run), "--json").stdout)["best"]["commit"]
    assert seen.rows["lineage"] == len(RunRepo(watched_search.run / "repo").lineage(best)) + 1
    assert not seen.external, "the page must open with no network"
    assert "no agent calls" in page.read_text()  # the offline implementer


def test_report_opens_on_a_run_that_is_still_going(watched_search):
    assert watched_search.mid_report is not None, "the run's table never appeared while the search ran"
    html = watched_search.mid_report.read_text()
    assert "running (or interrupted)" in html
    assert _page(html).rows["leaderboard"] >= 2


def test_optuna_storage_holds_one_study_per_evaluated_design(watched_search):
    """What `optuna-dashboard sqlite:///RUN/optuna.db` shows: a study for every candidate
    that was measured (its trials as the git note has them), the validated ones among them."""
    import optuna

    from vibeserve_ray.search.results import read_results
    from vibeserve_ray.search.state import RunRepo
    from vibeserve_ray.search.studies import storage_url, study_name

    rows, repo = read_results(watched_search.run), RunRepo(watched_search.run / "repo")
    tuned = {study_name(r.island, r.commit): r for r in rows if repo.notes(r.commit)[-1]["trials"]}
    assert {study_name(r.island, r.commit) for r in rows if r.validated} <= set(tuned)
    storage = optuna.storages.RDBStorage(storage_url(watched_search.run))
    assert {s.study_name for s in optuna.get_all_study_summaries(storage)} == set(tuned)
    for name, r in tuned.items():
        study = optuna.load_study(study_name=name, storage=storage)
        assert len(study.trials) == len(repo.notes(r.commit)[-1]["trials"])
        if r.validated:
            assert study.best_trial.value == pytest.approx(r.headline_value)


def test_report_of_a_directory_that_is_not_a_run_is_bad_input(tmp_path):
    r = run_cli("report", str(tmp_path))
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "run" in r.stderr


# ---------------------------------------------------------------- the page from recorded results


@pytest.fixture(scope="module")
def recorded_run(tmp_path_factory, tiny_target):
    """A run as the search records it (commit, note, row, study, agents' usage), without
    measuring: the seed, a faster child, a faster grandchild, a slower sibling, and a rejected one."""
    import optuna

    from vibeserve_ray.agents.ledger import ApiUsage
    from vibeserve_ray.candidate import load_candidate
    from vibeserve_ray.inner.evaluate import Trial
    from vibeserve_ray.inner.result import InnerResult
    from vibeserve_ray.search.record import record_result
    from vibeserve_ray.search.state import RunRepo
    from vibeserve_ray.seed import materialise_seed
    from vibeserve_ray.trees import pack_dir

    run = tmp_path_factory.mktemp("recorded")
    repo, rows = RunRepo(run / "repo"), []
    dist = optuna.distributions.distribution_to_json(optuna.distributions.FloatDistribution(0.0, 10.0))
    plan = [  # (parent index, batch_wait_ms, verdict, throughput, p99 e2e latency)
        (None, 5.0, "validated", 100.0, 900.0), (0, 1.0, "validated", 150.0, 800.0), (1, 0.5, "validated", 240.0, 1000.0),
        (0, 2.0, "validated", 120.0, 700.0), (1, 3.0, "rejected", float("nan"), float("nan")),
    ]
    for i, (parent, knob, verdict, tput, lat) in enumerate(plan):
        cand = materialise_seed(run / f"c{i}", knobs={"batch_wait_ms": knob})
        spec = load_candidate(cand)
        ok = verdict == "validated"
        result = InnerResult(
            eval_id=f"e{i}", island=i % 2, round=i, parent="" if parent is None else rows[parent].commit, tree=pack_dir(cand),
            message=f"change {i}", design=spec.design, knobs=spec.knobs, verdict=verdict, headline_name="output_throughput",
            headline_value=tput, failure_phase="" if ok else "judge-checker", failure_reason="" if ok else "token 3 differs from the reference",
            metrics={"output_throughput": tput, "p99_e2el_ms": lat} if ok else {}, started_at=1000.0 + 60 * i, finished_at=1050.0 + 60 * i,
            trials=[Trial({"batch_wait_ms": k}, tput * f, distributions={"batch_wait_ms": dist}) for k, f in ((knob, 1.0), (knob + 1, 0.9))]
            if ok else [])
        usage = {"implementer": ApiUsage(3, 1000 * i, 200, 500, 4000, 0.01 * i, 2.0), "judge": ApiUsage(1, 300, 50, 0, 0, 0.002, 1.0)} if i else {}
        rows.append(record_result(run, repo, result, rows, tiny_target, commit_override=None, usage=usage))
    (run / "search.json").write_text(json.dumps({"target": str(ROOT / "targets" / "tiny-llama-cpu"), "headline": "output_throughput",
                                                 "direction": "maximize", "stopped_because": "rounds"}))
    return run, rows


def test_lineage_steps_carry_their_change_speedup_over_the_parent_and_diffstat(recorded_run):
    from vibeserve_ray.report.data import read_run

    run, rows = recorded_run
    view = read_run(run)
    assert view.best.eval_id == "e2"
    assert [s.commit for s in view.lineage] == [rows[0].commit, rows[1].commit, rows[2].commit]
    assert [s.change for s in view.lineage] == ["change 0", "change 1", "change 2"]
    assert view.lineage[1].speedup_over_parent == pytest.approx(1.5) and view.lineage[2].speedup_over_parent == pytest.approx(1.6)
    assert "1 file changed" in view.lineage[1].diffstat and view.lineage[0].diffstat == ""


def test_pareto_front_failures_and_knob_trials_are_drawn(recorded_run):
    from vibeserve_ray.report.data import read_run
    from vibeserve_ray.report.plots import all_plots

    run, _ = recorded_run
    view = read_run(run)
    plots = all_plots(view)
    assert plots["pareto"].note == "3 of 4 candidates on the front"  # (700, 120), (800, 150), (1000, 240); (900, 100) is beaten
    assert plots["failures"].points == 1 and plots["headline"].points == 4
    assert len(view.knobs.trials) == 8 and set(view.knobs.importances) == {"batch_wait_ms"}  # every study of the best's design
    assert set(view.agents) == {"implementer", "judge"} and view.agents["implementer"].calls == 12  # summed over the candidates
    assert view.agents["implementer"].cost_usd == pytest.approx(0.1) and plots["agents"].note == "$0.1080 in 16 calls"
    html = (run / "r.html")
    from vibeserve_ray.report.page import write_report

    text = write_report(run, html).read_text()
    assert "token 3 differs from the reference" in text and "1.60x" in text


def test_report_leaves_a_studies_file_the_driver_is_still_creating_alone(recorded_run, tmp_path):
    """The driver creates optuna.db on its first result; a report opened in that moment
    used to create the schema too, and one of the two failed ('table alembic_version
    already exists'). The report now reads only a stamped schema and writes nothing."""
    import shutil
    import sqlite3

    from vibeserve_ray.report.data import read_run

    run = tmp_path / "run"
    shutil.copytree(recorded_run[0], run)
    (run / "optuna.db").unlink()
    with sqlite3.connect(run / "optuna.db") as db:  # half-way: a table made, no version stamped
        db.execute("CREATE TABLE studies (study_id INTEGER PRIMARY KEY, study_name VARCHAR(512))")
    view = read_run(run)
    assert view.best.eval_id == "e2" and view.knobs is None
    with sqlite3.connect(run / "optuna.db") as db:
        assert [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")] == ["studies"]
    assert read_run(recorded_run[0]).knobs is not None  # a stamped one is read
