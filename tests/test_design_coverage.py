"""Every point of the design space meets its accuracy contract: a covering sample of the
float32 designs, each written by `vibeserve candidate new` and gated by `vibeserve check`
(greedy and seeded sampling, one at a time and concurrently) against transformers on the
exact tiny target (tiny-llama-cpu-exact: token for token), and the reduced-precision
designs on the tolerance one (tiny-llama-cpu, bfloat16 tier; int8 weights are checked at
the int8 tier in tests/adversarial).

A full check of the tiny target sends 16 prompts per phase and takes about a minute on
2 cores, mostly the one-at-a-time phase; the sweep checks a copy of the target that
keeps 6 of them (short and long, so prompts span several KV blocks and prefill
chunks), with the target's own max_tokens, concurrency and sampling seeds.
"""

from __future__ import annotations

import json

import pytest
import search_helpers
from conftest import ROOT, run_cli
from search_helpers import KEPT_PROMPTS
from test_checker import PERTURB

from vibeserve_ray.design_space import covering_designs, default_space_path, load_space

SPACE = load_space(default_space_path())
EXACT = SPACE.under("float32")
DEFAULT_DESIGN = SPACE.defaults()[0]
PHASES = 3  # sequential greedy, concurrent greedy, concurrent seeded sampling
# Small enough that, under the checker's concurrency, requests queue for a batch slot,
# prompts are prefilled in several chunks and span many blocks; they only apply where
# their option is chosen.
STRESS_KNOBS = ["max_num_seqs=4", "max_num_batched_tokens=64", "block_size=8"]
# What the search converges to on CPU: every optimisation at once, default knobs.
EVERYTHING = {"scheduler": "continuous", "kv_cache": "paged", "prefix_cache": "on", "compile": "on", "speculation": "prompt_lookup"}

# Engine worker processes sharing the requests, each on its own packed weights: routing must not change a token.
DATA_PARALLEL = {"scheduler": "continuous", "kv_cache": "slab", "step_loop": "process", "linear": "onednn"}

SWEEP = [(d, STRESS_KNOBS) for d in covering_designs(EXACT, "cpu")] + [({**DEFAULT_DESIGN, **EVERYTHING}, []),
                                                                          ({**DEFAULT_DESIGN, **DATA_PARALLEL}, ["engine_workers=2", "num_threads=1"])]
# Under the tolerance contract: bfloat16 with every optimisation (speculation's drafts are verified against the engine's own
# bfloat16 argmax, so they stay self-consistent), and packed bfloat16 weights in worker processes.
REDUCED = [({**DEFAULT_DESIGN, **EVERYTHING, "dtype": "bfloat16"}, STRESS_KNOBS),
           ({**DEFAULT_DESIGN, **DATA_PARALLEL, "dtype": "bfloat16"}, ["engine_workers=2", "num_threads=1"])]


def name(design: dict, knobs: list[str]) -> str:
    changed = [f"{k}={v}" for k, v in design.items() if DEFAULT_DESIGN[k] != v]
    return ",".join(changed or ["seed"]) + ("" if knobs else "+default-knobs")


@pytest.fixture(scope="module")
def small_target(tmp_path_factory, tiny_models):
    """The exact tiny target with 6 of its 16 held-out prompts."""
    return search_helpers.small_target(tmp_path_factory.mktemp("tiny-llama-cpu-exact-6"), source=ROOT / "targets" / "tiny-llama-cpu-exact")


@pytest.fixture(scope="module")
def tolerant_target(tmp_path_factory, tiny_models):
    """The tiny target (tolerance contract, bfloat16 tier) with 6 of its 16 held-out prompts."""
    return search_helpers.small_target(tmp_path_factory.mktemp("tiny-llama-cpu-6"))


def new_candidate(dest, design: dict, knobs: list[str]):
    args = ["--design", *(f"{k}={v}" for k, v in design.items())] + (["--knobs", *knobs] if knobs else [])
    result = run_cli("candidate", "new", str(dest), *args, timeout=60)
    assert result.returncode == 0, result.stderr
    return dest


def check(target, candidate, tmp_path):
    """`vibeserve check`: its process result and the JSON verdict."""
    out = tmp_path / "verdict.json"
    result = run_cli("check", str(target), "--candidate", str(candidate), "--json", str(out), timeout=600)
    return result, json.loads(out.read_text())


def test_sweep_covers_every_cpu_option_and_the_combinations_that_matter():
    designs = [d for d, _ in SWEEP]
    for choice, spec in SPACE.choices.items():
        assert {d[choice] for d in designs} == set(spec.options) - {"flashinfer", "bfloat16", "int8"}, choice
    assert {d["linear"] for d, _ in REDUCED} == {"torch", "onednn"} and all(d["dtype"] == "bfloat16" for d, _ in REDUCED)
    assert any(d["speculation"] == "prompt_lookup" and d["scheduler"] != "serial" for d in designs)
    assert any(d["prefix_cache"] == "on" and d["compile"] == "on" for d in designs)


@pytest.mark.slow
@pytest.mark.parametrize("design,knobs", SWEEP, ids=[name(*p) for p in SWEEP])
def test_design_passes_check_greedy_and_sampled(small_target, tmp_path, design, knobs):
    candidate = new_candidate(tmp_path / "cand", design, knobs)
    result, verdict = check(small_target, candidate, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    assert result.stdout.startswith("PASS")
    assert verdict["passed"] and verdict["failure"] is None and verdict["mismatch"] is None
    assert verdict["compared"] == PHASES * len(KEPT_PROMPTS)


@pytest.mark.slow
@pytest.mark.parametrize("design,knobs", REDUCED, ids=[name(*p) for p in REDUCED])
def test_reduced_precision_design_passes_check_under_the_tolerance_contract(tolerant_target, tmp_path, design, knobs):
    candidate = new_candidate(tmp_path / "cand", design, knobs)
    result, verdict = check(tolerant_target, candidate, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    assert result.stdout.startswith("PASS") and "accurate_responses: 18/18" in result.stdout
    assert verdict["passed"] and verdict["accuracy"]["mode"] == "tolerance" and verdict["compared"] == PHASES * len(KEPT_PROMPTS)


def test_perturbed_logit_in_a_batching_design_fails_check(small_target, tmp_path):
    candidate = new_candidate(tmp_path / "cand", EVERYTHING, STRESS_KNOBS)
    sampler = candidate / "engine" / "core" / "sampler.py"
    sampler.write_text(sampler.read_text() + PERTURB)
    result, verdict = check(small_target, candidate, tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr[-3000:]
    assert result.stdout.startswith("FAIL") and not verdict["passed"] and verdict["failure"] is None
    assert verdict["mismatch"]["got"] != verdict["mismatch"]["expected"] or "logprob" in verdict["mismatch"]["reason"]
