"""`vibeserve bench` on the seed: a real candidate process, real load, vLLM-named JSON."""

from __future__ import annotations

import json

from conftest import TINY_TARGET, run_cli

from vibeserve_ray.bench import METRIC_NAMES


def test_bench_seed_completes_with_zero_failures(tmp_path, tiny_target):
    out = tmp_path / "bench.json"
    result = run_cli("bench", str(TINY_TARGET), "--candidate", "seed", "--num-requests", "12", "--out", str(out))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Serving Benchmark Result" in result.stdout
    assert "bench: 12/12 done, 0 failed" in result.stderr  # progress is shown
    data = json.loads(out.read_text())
    for name in METRIC_NAMES:
        assert name in data, name
    assert data["completed"] == 12 and data["failed"] == 0
    assert data["output_throughput"] > 0 and data["p99_ttft_ms"] >= data["median_ttft_ms"] > 0
    assert data["headline"] == {"name": "output_throughput", "value": data["output_throughput"]}
    assert data["slo"]["passed"] is True
    assert data["design"]["scheduler"] == "serial"
    assert "exact_responses: 12/12" in result.stdout and data["exact_responses"] == "12/12"  # every response vs the reference


def test_bench_of_a_crashing_candidate_is_a_recorded_failure(tmp_path, tiny_target, test_candidate):
    out = tmp_path / "bench.json"
    result = run_cli("bench", str(TINY_TARGET), "--candidate", str(test_candidate("import_error")), "--out", str(out))
    assert result.returncode == 1
    assert json.loads(out.read_text())["failure"]["phase"] == "startup"
