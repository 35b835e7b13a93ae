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


def test_bench_url_of_a_running_candidate_equals_bench_candidate(tmp_path, tiny_target):
    """`--url` sends the same workload through the same load generator and checks every
    response against the reference: the same completed count and exactness as `--candidate`."""
    from vibeserve_ray.runner import Limits, start_candidate
    from vibeserve_ray.seed import resolve_candidate

    spec = resolve_candidate("seed", tmp_path / "seed", "llama")
    with start_candidate(spec, tiny_target.model_dir(), tiny_target.tokenizer_dir(), tiny_target.served_name, "cpu", Limits(),
                         tmp_path / "proc") as proc:
        by_url = run_cli("bench", str(TINY_TARGET), "--url", proc.base_url + "/v1", "--num-requests", "8", "--out", str(tmp_path / "url.json"))
    by_candidate = run_cli("bench", str(TINY_TARGET), "--candidate", "seed", "--num-requests", "8", "--out", str(tmp_path / "cand.json"))
    assert by_url.returncode == 0 and by_candidate.returncode == 0, by_url.stderr[-2000:] + by_candidate.stderr[-2000:]
    url, cand = json.loads((tmp_path / "url.json").read_text()), json.loads((tmp_path / "cand.json").read_text())
    assert url["url"] == proc.base_url + "/v1" and "candidate" not in url
    for key in ("completed", "failed", "exact_responses", "total_input_tokens", "total_output_tokens"):
        assert url[key] == cand[key], key
    assert url["exact_responses"] == "8/8" and "exact_responses: 8/8" in by_url.stdout


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
