"""Reward-hacking candidates are each rejected by the gate meant for them, and honest
candidates (the engine they were made from among them) are validated by the same judge.

Every cheat is a small edit of the seed engine (tests/adversarial/cheats.py). The judge
stops at its first "no", so each runs only the gates before its own: the static ones
cost milliseconds, the rest one candidate process (two for the weight swap). They run on
a small copy of the tiny target (6 held-out prompts, 16 short benchmark requests at
concurrency 4) so the whole file takes a few minutes on 2 cores.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from cheats import CHEATS, Cheat, Context, apply
from conftest import TINY_TARGET, run_cli

from vibeserve_ray.candidate import load_candidate
from vibeserve_ray.inner.evaluate import EXACT_GATE, evaluate
from vibeserve_ray.inner.judge.checker import held_out_prompts, references
from vibeserve_ray.inner.judge.gates import GATES, judge
from vibeserve_ray.inner.workload import target_workload
from vibeserve_ray.seed import materialise_seed
from vibeserve_ray.target import load_target

KEPT_PROMPTS = [0, 4, 9, 11, 12, 15]
BASE = {"scheduler": "continuous", "kv_cache": "slab"}  # the cheats wrap a batching engine: quicker to judge than the serial seed
SMALL = {"num_requests": "16", "concurrency": "4", "input_len": "[16, 64]", "output_len": "[12, 24]", "max_tokens": "16"}


@pytest.fixture(scope="module")
def target(tmp_path_factory, tiny_models):
    dest = tmp_path_factory.mktemp("adversarial-target")
    text = (TINY_TARGET / "target.toml").read_text()
    for key, value in SMALL.items():
        lines = [f"{key} = {value}" if line.startswith(f"{key} = ") else line for line in text.splitlines()]
        text = "\n".join(lines) + "\n"
    (dest / "target.toml").write_text(text)
    (dest / "checker").mkdir()
    lines = (TINY_TARGET / "checker" / "prompts.jsonl").read_text().splitlines()
    (dest / "checker" / "prompts.jsonl").write_text("".join(lines[i] + "\n" for i in KEPT_PROMPTS))
    return load_target(dest)


@pytest.fixture(scope="module")
def context(target) -> Context:
    held = held_out_prompts(target)
    answers = references(target, target.model_dir(), held, ("sequential",))["greedy"]
    return Context([p.token_ids for p in held], [a.token_ids for a in answers], [r.prompt_token_ids for r in target_workload(target)],
                   target.path(target.spec.checker.prompts).read_text())


@pytest.fixture(scope="module")
def parent(tmp_path_factory) -> Path:
    return materialise_seed(tmp_path_factory.mktemp("parent") / "seed", design=BASE)


def test_there_is_a_cheat_for_every_gate():
    assert {c.gate for c in CHEATS} == set(GATES) | {EXACT_GATE}
    assert len(CHEATS) >= 12


@pytest.mark.parametrize("cheat", CHEATS, ids=[c.name for c in CHEATS])
def test_cheat_is_rejected_by_the_gate_meant_for_it(cheat: Cheat, target, context, parent, tmp_path):
    candidate = tmp_path / "candidate"
    shutil.copytree(parent, candidate)
    apply(cheat, candidate, context)
    spec = load_candidate(candidate)
    if cheat.gate == EXACT_GATE:  # it passes the judge by construction (it knows the benchmark's prompts): measure it
        outcome = evaluate(target, spec, tmp_path / "eval", [], {}, 1)
        assert outcome.best is None and outcome.failure is not None, outcome
        assert outcome.failure.phase == EXACT_GATE and cheat.says in outcome.failure.reason, outcome.failure
        return
    verdict = judge(target, spec, parent, tmp_path / "judge")
    assert (verdict.verdict, verdict.gate) == ("rejected", cheat.gate), verdict
    assert cheat.says in verdict.reason, verdict.reason
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
    assert [g.gate for g in verdict.gates] == list(GATES)
    assert not verdict.sandbox_warning


def test_judge_command_prints_a_line_per_gate_and_exits_1_naming_the_gate(target, context, parent, tmp_path):
    candidate = tmp_path / "candidate"
    shutil.copytree(parent, candidate)
    apply(next(c for c in CHEATS if c.name == "a network call"), candidate, context)
    out = tmp_path / "verdict.json"
    result = run_cli("judge", str(target.dir), "--candidate", str(candidate), "--parent", str(parent), "--json", str(out), timeout=300)
    assert result.returncode == 1, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split()[:2] == ["scan", "rejected"] and "engine/cheat.py:" in lines[0]
    assert lines[-1].startswith("REJECTED by scan: ") and "network access" in lines[-1]
    verdict = json.loads(out.read_text())
    assert verdict["verdict"] == "rejected" and verdict["gates"][0]["gate"] == "scan" and verdict["gates"][0]["seconds"] >= 0


def test_judge_command_bad_input_is_one_line_and_exit_2(tmp_path):
    result = run_cli("judge", str(TINY_TARGET), "--candidate", str(tmp_path / "missing"), timeout=120)
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "candidate" in result.stderr
