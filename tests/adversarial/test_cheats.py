"""Reward-hacking candidates are each rejected by the gate meant for them, and honest
candidates (the engine they were made from among them) are validated by the same judge.

Every cheat is a small edit of the seed engine (tests/adversarial/cheats.py). The judge
stops at its first "no", so each runs only the gates before its own: the static ones
cost milliseconds, the rest one candidate process (two for the weight swap). They run on
small copies of the tiny targets (6 held-out prompts, 16 short benchmark requests at
concurrency 4) so the whole file takes a few minutes on 2 cores: the exact contract's
cheats on tiny-llama-cpu-exact, the tolerance contract's on tiny-llama-cpu (bfloat16
tier, with the target's own accuracy script), made from a bfloat16 engine.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from cheats import CHEATS, Cheat, Context, apply
from conftest import ROOT, TINY_TARGET, run_cli

from vibeserve_ray.candidate import load_candidate
from vibeserve_ray.inner.evaluate import ACCURACY_GATE, evaluate
from vibeserve_ray.inner.judge.checker import check_candidate, held_out_prompts, references
from vibeserve_ray.inner.judge.gates import GATES, gates_run, judge
from vibeserve_ray.inner.workload import target_workload
from vibeserve_ray.seed import materialise_seed
from vibeserve_ray.target import load_target

KEPT_PROMPTS = [0, 4, 9, 11, 12, 15]
BASE = {"scheduler": "continuous", "kv_cache": "slab"}  # the cheats wrap a batching engine: quicker to judge than the serial seed
BF16 = {**BASE, "dtype": "bfloat16", "linear": "onednn"}  # what a search picks under the bfloat16 tier (2.0x float32 here)
INT8 = {**BASE, "dtype": "bfloat16", "linear": "int8"}
SMALL = {"num_requests": "16", "concurrency": "4", "input_len": "[16, 64]", "output_len": "[12, 24]", "max_tokens": "16"}
# two seeds: a score test's Z grows as the square root of the positions sampled (one seed's ~100 leave T = 1 for 0.8 near the bound)
TOLERANT = {"seeds": "[1234, 1]", "tier": '"bfloat16"\nscript = "accuracy_check.py"'}


def small_target(dest: Path, source: Path, **extra: str):
    """A small copy of a shipped target: 6 held-out prompts, 16 short benchmark requests at concurrency 4."""
    text = (source / "target.toml").read_text()
    for key, value in {**SMALL, **extra}.items():
        assert f"\n{key} = " in text, key
        text = "\n".join(f"{key} = {value}" if line.startswith(f"{key} = ") else line for line in text.splitlines()) + "\n"
    (dest / "target.toml").write_text(text)
    (dest / "checker").mkdir()
    lines = (source / "checker" / "prompts.jsonl").read_text().splitlines()
    (dest / "checker" / "prompts.jsonl").write_text("".join(lines[i] + "\n" for i in KEPT_PROMPTS))
    shutil.copy(Path(__file__).parent / "accuracy_check.py", dest)
    return load_target(dest)


@pytest.fixture(scope="module")
def target(tmp_path_factory, tiny_models):
    """The exact contract: outputs equal to the float32 reference's."""
    return small_target(tmp_path_factory.mktemp("adversarial-exact"), ROOT / "targets" / "tiny-llama-cpu-exact")


@pytest.fixture(scope="module")
def tolerant(tmp_path_factory, tiny_models):
    """The tolerance contract at the bfloat16 tier, with the target's own accuracy script."""
    return small_target(tmp_path_factory.mktemp("adversarial-tolerance"), TINY_TARGET, **TOLERANT)


@pytest.fixture(scope="module")
def context(target) -> Context:
    held = held_out_prompts(target)
    answers = references(target, target.model_dir(), held, ("sequential",))["greedy"]
    return Context([p.token_ids for p in held], [a.token_ids for a in answers], [r.prompt_token_ids for r in target_workload(target)],
                   target.path(target.spec.checker.prompts).read_text())


@pytest.fixture(scope="module")
def parents(tmp_path_factory) -> dict[str, Path]:
    """The engine each contract's cheats are made from: float32 under the exact one, bfloat16 under the tolerance one."""
    root = tmp_path_factory.mktemp("parents")
    return {"exact": materialise_seed(root / "float32", design=BASE), "tolerance": materialise_seed(root / "bfloat16", design=BF16)}


@pytest.fixture
def parent(parents) -> Path:
    return parents["exact"]


def test_there_is_a_cheat_for_every_gate():
    assert {c.gate for c in CHEATS} == set(GATES) | {ACCURACY_GATE}
    assert {c.gate for c in CHEATS if c.contract == "tolerance"} >= {"reference-equality", "seeded-sampling", "load-honesty", "accuracy-script"}
    assert len(CHEATS) >= 12


@pytest.mark.parametrize("cheat", CHEATS, ids=[c.name for c in CHEATS])
def test_cheat_is_rejected_by_the_gate_meant_for_it(cheat: Cheat, target, tolerant, context, parents, tmp_path):
    candidate = tmp_path / "candidate"
    shutil.copytree(parents[cheat.contract], candidate)
    apply(cheat, candidate, context)
    spec = load_candidate(candidate)
    target = tolerant if cheat.contract == "tolerance" else target
    parent = parents[cheat.contract]
    if cheat.gate == ACCURACY_GATE:  # it passes the judge by construction (it knows the benchmark's prompts): measure it
        outcome = evaluate(target, spec, tmp_path / "eval", [], {}, 1)
        assert outcome.best is None and outcome.failure is not None, outcome
        assert outcome.failure.phase == ACCURACY_GATE and cheat.named_in(outcome.failure.reason), outcome.failure
        return
    verdict = judge(target, spec, parent, tmp_path / "judge")
    assert (verdict.verdict, verdict.gate) == ("rejected", cheat.gate), verdict
    assert cheat.named_in(verdict.reason), verdict.reason
    assert [g.verdict for g in verdict.gates] == ["passed"] * (len(verdict.gates) - 1) + ["rejected"]


# Honest points the streaming and load gates must accept: the engine the cheats are made
# from; streams in multi-token steps (speculation) over shared KV blocks; tokens relayed
# from engine worker processes.
HONEST = {
    "batching": BASE,
    "speculating": {"scheduler": "continuous", "kv_cache": "paged", "prefix_cache": "on", "speculation": "prompt_lookup"},
    "worker-processes": {**BASE, "step_loop": "process"},
}


@pytest.mark.parametrize("design", HONEST.values(), ids=list(HONEST))
def test_honest_candidates_pass_every_gate(target, design, tmp_path):
    verdict = judge(target, load_candidate(materialise_seed(tmp_path / "honest", design=design)), None, tmp_path / "judge")
    assert verdict.passed, verdict
    assert [g.gate for g in verdict.gates] == list(gates_run(target))
    assert not verdict.sandbox_warning


def test_bfloat16_passes_the_tolerance_contract_and_the_exact_one_refuses_it_at_once(target, tolerant, tmp_path):
    candidate = load_candidate(materialise_seed(tmp_path / "candidate", design=BF16))
    verdict = judge(tolerant, candidate, None, tmp_path / "judge")
    assert verdict.passed, verdict
    assert [g.gate for g in verdict.gates] == list(gates_run(tolerant)) and "accuracy-script" in gates_run(tolerant)
    exact = judge(target, candidate, None, tmp_path / "judge-exact")
    assert (exact.verdict, exact.gate) == ("rejected", "precision") and len(exact.gates) == 1, exact
    assert 'mode = "exact"' in exact.reason and "dtype = 'bfloat16'" in exact.reason


def test_int8_weights_pass_at_the_int8_tier_and_are_refused_below_it(target, tolerant, tmp_path):
    """The checker's statistics (its three phases, one process) at the int8 tier; the bfloat16
    tier and the exact contract refuse the design before anything runs."""
    shutil.copytree(tolerant.dir, tmp_path / "int8-target")
    toml = tmp_path / "int8-target" / "target.toml"
    toml.write_text(toml.read_text().replace('tier = "bfloat16"', 'tier = "int8"'))
    candidate = load_candidate(materialise_seed(tmp_path / "candidate", design=INT8))
    checked = check_candidate(load_target(toml), candidate, tmp_path / "check")
    assert checked.passed and checked.accuracy is not None and checked.accuracy.greedy.mean_deficit > 0, checked
    for contract in (tolerant, target):
        refused = judge(contract, candidate, None, tmp_path / f"judge-{contract.accuracy.mode}")
        assert (refused.verdict, refused.gate) == ("rejected", "precision") and "linear = 'int8' computes in int8" in refused.reason, refused


def test_judge_command_prints_a_line_per_gate_and_exits_1_naming_the_gate(target, context, parent, tmp_path):
    candidate = tmp_path / "candidate"
    shutil.copytree(parent, candidate)
    apply(next(c for c in CHEATS if c.name == "a network call"), candidate, context)
    out = tmp_path / "verdict.json"
    result = run_cli("judge", str(target.dir), "--candidate", str(candidate), "--parent", str(parent), "--json", str(out), timeout=300)
    assert result.returncode == 1, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split()[:2] == ["precision", "passed"]
    assert lines[1].split()[:2] == ["scan", "rejected"] and "engine/cheat.py:" in lines[1]
    assert lines[-1].startswith("REJECTED by scan: ") and "network access" in lines[-1]
    verdict = json.loads(out.read_text())
    assert verdict["verdict"] == "rejected" and verdict["gates"][1]["gate"] == "scan" and verdict["gates"][1]["seconds"] >= 0


def test_judge_command_bad_input_is_one_line_and_exit_2(tmp_path):
    result = run_cli("judge", str(TINY_TARGET), "--candidate", str(tmp_path / "missing"), timeout=120)
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "candidate" in result.stderr
