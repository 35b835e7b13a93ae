"""`vibeserve bench` on the seed: a real candidate process, real load, vLLM-named JSON, and every
response held to the target's accuracy contract (of a candidate, or of any server by --url)."""

from __future__ import annotations

import json

import pytest
from conftest import TINY_TARGET, run_cli

from vibeserve_ray.bench import METRIC_NAMES
from vibeserve_ray.candidate import load_candidate


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
    assert "PASS: accurate_responses: 12/12" in result.stdout and data["exact_responses"] == "12/12"  # every response vs the reference
    assert data["accurate_responses"] == "12/12" and data["accuracy"]["mode"] == "tolerance" and data["accuracy"]["passed"]
    assert data["accuracy"]["greedy"]["mean_deficit"] == 0 and data["accuracy"]["greedy"]["positions"] == data["total_output_tokens"]


def test_bench_of_a_crashing_candidate_is_a_recorded_failure(tmp_path, tiny_target, test_candidate):
    out = tmp_path / "bench.json"
    result = run_cli("bench", str(TINY_TARGET), "--candidate", str(test_candidate("import_error")), "--out", str(out))
    assert result.returncode == 1
    assert json.loads(out.read_text())["failure"]["phase"] == "startup"


@pytest.mark.parametrize("design, cheat", [({"dtype": "bfloat16", "linear": "onednn"}, None),
                                          ({}, "a truncated vocabulary as reduced precision")], ids=["bfloat16", "truncated-vocabulary"])
def test_bench_url_of_a_running_candidate_reports_the_verdict_bench_candidate_does(tmp_path, tiny_target, design, cheat):
    """`--url` sends the same workload through the same load generator and holds every response
    to the target's contract: the same verdict, and the same statistic named when it fails."""
    from adversarial.cheats import CHEATS, Context, apply

    from vibeserve_ray.runner import Limits, start_candidate
    from vibeserve_ray.seed import materialise_seed

    path = materialise_seed(tmp_path / "candidate", design={"scheduler": "continuous", "kv_cache": "slab", **design}, knobs={"num_threads": 1})
    if cheat:
        apply(next(c for c in CHEATS if c.name == cheat), path, Context([], [], [], ""))
    spec = load_candidate(path)
    with start_candidate(spec, tiny_target.model_dir(), tiny_target.tokenizer_dir(), tiny_target.served_name, "cpu", Limits(),
                         tmp_path / "proc") as proc:
        by_url = run_cli("bench", str(TINY_TARGET), "--url", proc.base_url + "/v1", "--num-requests", "8", "--out", str(tmp_path / "url.json"))
    by_candidate = run_cli("bench", str(TINY_TARGET), "--candidate", str(path), "--num-requests", "8", "--out", str(tmp_path / "cand.json"))
    assert by_url.returncode == by_candidate.returncode == (1 if cheat else 0), by_url.stderr[-2000:] + by_candidate.stderr[-2000:]
    url, cand = json.loads((tmp_path / "url.json").read_text()), json.loads((tmp_path / "cand.json").read_text())
    assert url["url"] == proc.base_url + "/v1" and "candidate" not in url
    for key in ("completed", "failed", "total_input_tokens", "total_output_tokens"):
        assert url[key] == cand[key], key
    for got in (url, cand):
        a = got["accuracy"]
        assert a["mode"] == "tolerance" and a["passed"] is not bool(cheat) and got["accurate_responses"] == a["accurate_responses"]
        if cheat:  # the truncated vocabulary: gross errors everywhere
            assert "gross errors" in a["failure"] and a["greedy"]["gross"] > a["greedy"]["gross_allowed"], a
        else:
            assert a["greedy"]["mean_deficit"] < 0.01 and a["greedy"]["gross"] == 0 and got["accurate_responses"] == "8/8", a
    assert ("FAIL" if cheat else "PASS") in by_url.stdout and ("FAIL" if cheat else "PASS") in by_candidate.stdout


def test_bench_url_that_is_bad_or_unreachable_exits_2_with_one_line(tiny_target):
    import socket

    with socket.socket() as s:  # a port nothing listens on once closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for url, field in (("127.0.0.1:8000", "--url"), (f"http://127.0.0.1:{port}", "--url")):
        result = run_cli("bench", str(TINY_TARGET), "--url", url, timeout=60)
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and f"command line: {field}:" in lines[0] and "Traceback" not in result.stderr
