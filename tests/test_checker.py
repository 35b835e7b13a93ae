"""The checker gates candidates: the seed passes, a one-logit perturbation fails, under either contract."""

from __future__ import annotations

import json

import pytest
from conftest import EXACT_TARGET, TINY_TARGET, run_cli

from vibeserve_ray.inner.judge.checker import Completion, compare
from vibeserve_ray.reference import RefOutput
from vibeserve_ray.seed import materialise_seed

PERTURB = '''

# --- test perturbation: one logit nudged, everything else untouched ---
_exact_call = Sampler.__call__


def _perturbed_call(self, logits, seqs):
    logits = logits.clone()
    logits[:, 7] += 4.0
    return _exact_call(self, logits, seqs)


Sampler.__call__ = _perturbed_call
'''


def test_seed_passes_check(tmp_path, tiny_target):
    result = run_cli("check", str(TINY_TARGET), "--candidate", "seed", "--json", str(tmp_path / "v.json"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("PASS")
    verdict = json.loads((tmp_path / "v.json").read_text())
    assert verdict["passed"] and verdict["compared"] >= 48 and verdict["failure"] is None


def test_seed_passes_on_the_swapped_weights(tiny_target):
    result = run_cli("check", str(TINY_TARGET), "--candidate", "seed", "--swap")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("target", [EXACT_TARGET, TINY_TARGET], ids=["exact", "tolerance"])
def test_perturbed_logit_fails_showing_where(tmp_path, tiny_target, target):
    """Exact: the first mismatch, token by token. Tolerance: the statistic it breaks, and which response."""
    cand = materialise_seed(tmp_path / "perturbed")
    sampler = cand / "engine" / "core" / "sampler.py"
    sampler.write_text(sampler.read_text() + PERTURB)
    result = run_cli("check", str(target), "--candidate", str(cand), "--json", str(tmp_path / "v.json"))
    assert result.returncode == 1, result.stdout + result.stderr
    out, verdict = result.stdout, json.loads((tmp_path / "v.json").read_text())
    if target == TINY_TARGET:
        assert out.startswith("FAIL") and "accurate_responses" in out and verdict["mismatch"] is None
        assert "gross errors" in verdict["accuracy"]["failure"] and "held-out #" in verdict["accuracy"]["failure"], verdict["accuracy"]
        return
    assert out.startswith("FAIL") and "held-out #" in out and "expected:" in out and "got:" in out
    mismatch = verdict["mismatch"]
    # the nudged logit shows either as a wrong token or as a shifted logprob
    step = mismatch["step"]
    assert (mismatch["got"][step] == 7 != mismatch["expected"][step]) or "logprob" in mismatch["reason"], mismatch


def test_failing_candidate_is_a_failed_verdict(tmp_path, tiny_target, test_candidate):
    result = run_cli("check", str(TINY_TARGET), "--candidate", str(test_candidate("import_error")))
    assert result.returncode == 1
    assert "FAIL (startup)" in result.stdout and "broken at import" in result.stdout


REF = RefOutput(token_ids=[1, 2, 3, 4], logprobs=[-0.1, -0.2, -0.3, -0.4], gaps=[2.0, 0.001, 2.0, 2.0])


def test_compare_equal_prefix_is_ok():
    assert compare(REF, Completion([1, 2, 3], [-0.1, -0.2, -0.3]), 0.01, 1e-3)[0] == "ok"


def test_compare_forgives_divergence_only_at_a_near_tie():
    assert compare(REF, Completion([1, 9, 9, 9], [None] * 4), 0.01, 1e-3)[:2] == ("forgiven", 1)
    assert compare(REF, Completion([1, 2, 9, 4], [None] * 4), 0.01, 1e-3)[:2] == ("mismatch", 2)


def test_compare_checks_logprobs_within_tolerance():
    assert compare(REF, Completion([1, 2], [-0.1, -0.2005]), 0.01, 1e-3)[0] == "ok"
    assert compare(REF, Completion([1, 2], [-0.1, -0.25]), 0.01, 1e-3)[:2] == ("mismatch", 1)
