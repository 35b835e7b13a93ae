"""Every point of the hybrid's design space is exact: a covering sample of
search_spaces/olmo_hybrid.toml, each written by `vibeserve candidate new --family
olmo_hybrid` and gated by `vibeserve check` (greedy and seeded sampling, one at a time
and concurrently) against transformers' OlmoHybridForCausalLM on targets/tiny-hybrid-prefix.

The sweep checks a copy of the target that keeps 5 of its 12 held-out prompts: three that
share its ~640-token system prompt (one leaves it inside a block), so snapshot designs
answer them from snapshots, and two that share nothing; 64-token snapshot blocks and
100-token steps, so prompts are fed in chunks that straddle block boundaries.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import run_cli

from vibeserve_ray.design_space import covering_designs, load_space
from vibeserve_ray.engine.space import space_path

ROOT = Path(__file__).resolve().parent.parent
SPACE = load_space(space_path("olmo_hybrid"))
SEED = SPACE.defaults()[0]
KEPT_PROMPTS = [0, 4, 5, 8, 10]
PHASES = 3  # sequential greedy, concurrent greedy, concurrent seeded sampling
STRESS_KNOBS = ["max_num_seqs=3", "max_num_batched_tokens=100", "block_size=64", "num_threads=1"]
# the covering sample, and what it leaves out that matters: snapshots with the serial scheduler and with a gathered decode state
SWEEP = covering_designs(SPACE, "cpu") + [{**SEED, "kv_cache": "slab", "prefix_cache": "on"},
                                          {**SEED, "scheduler": "continuous", "kv_cache": "slab", "delta_rule": "chunked", "prefix_cache": "on"}]


def name(design: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in design.items() if SEED[k] != v) or "seed"


@pytest.fixture(scope="module")
def small_target(tmp_path_factory):
    dest = tmp_path_factory.mktemp("tiny-hybrid-5") / "t"
    shutil.copytree(ROOT / "targets" / "tiny-hybrid-prefix", dest)
    prompts = dest / "checker" / "prompts.jsonl"
    lines = prompts.read_text().splitlines()
    prompts.write_text("".join(lines[i] + "\n" for i in KEPT_PROMPTS))
    return dest


def test_sweep_covers_every_cpu_option_and_snapshots_with_each_scheduler():
    for choice, spec in SPACE.choices.items():
        assert {d[choice] for d in SWEEP} == set(spec.options), choice
    assert {d["scheduler"] for d in SWEEP if d["prefix_cache"] == "on"} == {"serial", "continuous"}
    assert {d["state_update"] for d in SWEEP if d["prefix_cache"] == "on"} == {"gather", "inplace"}


@pytest.mark.slow
@pytest.mark.parametrize("design", SWEEP, ids=[name(d) for d in SWEEP])
def test_hybrid_design_passes_check_greedy_and_sampled(small_target, tmp_path, design):
    candidate = tmp_path / "cand"
    result = run_cli("candidate", "new", str(candidate), "--family", "olmo_hybrid", "--design", *(f"{k}={v}" for k, v in design.items()),
                     "--knobs", *STRESS_KNOBS, timeout=60)
    assert result.returncode == 0, result.stderr
    out = tmp_path / "verdict.json"
    result = run_cli("check", str(small_target), "--candidate", str(candidate), "--json", str(out), timeout=600)
    verdict = json.loads(out.read_text())
    assert result.returncode == 0 and result.stdout.startswith("PASS"), result.stdout + result.stderr[-3000:]
    assert verdict["passed"] and verdict["compared"] == PHASES * len(KEPT_PROMPTS)
