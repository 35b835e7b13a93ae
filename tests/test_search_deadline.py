"""--time-limit bounds the whole job: work that cannot finish by then is not started, work
still running then is cancelled and recorded as a timeout (inner loops that only sleep)."""

from __future__ import annotations

import subprocess
import sys
import time

from conftest import ROOT
from search_helpers import small_target

from vibeserve_ray.search.results import read_results


def test_time_limit_cancels_running_work_and_starts_none_that_cannot_finish(tmp_path):
    target = small_target(tmp_path, islands=1, population=3, rounds=2)
    run = tmp_path / "run"
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "tests/sleepy_search.py", str(target), "--run", str(run), "--sleep", "1", "--candidate-sleep", "300",
                        "--time-limit", "25"], cwd=ROOT, capture_output=True, text=True, timeout=240)
    took = time.monotonic() - t0
    assert r.returncode == 0, r.stderr[-3000:]
    rows = read_results(run)
    seed, *cands = rows
    assert seed.verdict == "validated"
    assert [c.verdict for c in cands] == ["timeout"], "one candidate started (the seed's pace fit), the rest never did"
    assert "cancelled at the search's time limit" in cands[0].failure_reason
    assert "2 planned evaluations not started" in r.stderr
    assert took < 25 + 60, f"the search ran {took:.0f}s, far past its 25s limit (a candidate sleeps 300s)"
