"""`vibeserve target calibrate`: controls and cheats through the judge's statistics, thresholds
between them proposed, exit 1 when the model is too flat to judge, 2 on bad input."""

from __future__ import annotations

import json

import search_helpers
from conftest import TINY_TARGET, run_cli

from vibeserve_ray.inner.judge.calibrate import JUDGEABLE_RATIO, Control, _propose
from vibeserve_ray.accuracy.contract import AccuracySpec
from vibeserve_ray.accuracy.stats import GreedyStats
from vibeserve_ray.target import load_target


def test_calibrate_prints_every_control_and_proposes_thresholds_between_noise_and_cheats(tmp_path, tiny_models):
    """On 6 held-out prompts x 16 tokens: bfloat16 and float16 pass the proposal, every dropped
    layer, the truncated vocabulary and the other checkpoint fail it; exit 0."""
    target = search_helpers.small_target(tmp_path)
    out = tmp_path / "calibration.json"
    result = run_cli("target", "calibrate", str(target), "--max-tokens", "16", "--json", str(out), timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    assert "calibrate: bfloat16: mean deficit" in result.stderr  # progress, one line per control
    assert "JUDGEABLE" in result.stdout and "[accuracy]" in result.stdout and 'tier = "bfloat16"' in result.stdout
    cal = json.loads(out.read_text())
    rows = {r["name"]: r for r in cal["rows"]}
    layers = load_target(target).model_dir().joinpath("config.json").read_text()
    n_layers = json.loads(layers)["num_hidden_layers"]
    assert {f"layer {i} dropped" for i in range(n_layers)} | {"bfloat16", "float16", "the other checkpoint"} <= set(rows)
    for name, row in rows.items():
        assert (row["must"] == "fail") == (row["precision"] is None), name
        if row["must"]:
            assert bool(row["failure"]) == (row["must"] == "fail"), (name, row["failure"])
    assert rows["bfloat16"]["stats"]["gross"] == 0 and rows["the other checkpoint"]["stats"]["gross"] > 0
    assert cal["floor"] < cal["proposed"]["mean_deficit"] < cal["mildest"] and cal["ratio"] >= JUDGEABLE_RATIO and cal["judgeable"]


def _stats(mean: float, gross: int, worst: float) -> GreedyStats:
    return GreedyStats(responses=16, positions=768, accurate=16, exact=0, mean_deficit=mean, max_deficit=2 * worst, gross=gross, gross_allowed=3,
                       worst_response_deficit=worst, worst_response="prompt #0", agree_decisive=0.9)


def test_a_model_whose_cheats_sit_too_close_to_its_noise_is_too_flat_to_judge():
    target = load_target(TINY_TARGET)
    spec = AccuracySpec(mode="tolerance")
    honest, cheat = Control("bfloat16", "bfloat16", lambda b, o: None), Control("layer 0 dropped", None, lambda b, o: None)
    flat = _propose(target, "bfloat16", spec, 16, 48, [(honest, _stats(0.01, 0, 0.03), 1.0), (cheat, _stats(0.05, 9, 0.2), 1.0)])
    assert not flat.judgeable and "only 5.0x" in flat.why and flat.ratio == 5.0
    apart = _propose(target, "bfloat16", spec, 16, 48, [(honest, _stats(0.002, 0, 0.01), 1.0), (cheat, _stats(0.8, 200, 1.1), 1.0)])
    assert apart.judgeable and apart.proposed["mean_deficit"] == 0.04  # their geometric mean, to one figure
    mixed = _propose(target, "bfloat16", spec, 16, 48, [(honest, _stats(0.002, 5, 0.01), 1.0), (cheat, _stats(0.8, 200, 1.1), 1.0)])
    assert not mixed.judgeable and "gross errors do not separate" in mixed.why


def test_calibrate_bad_input_exits_2_with_one_line():
    result = run_cli("target", "calibrate", str(TINY_TARGET), "--max-tokens", "1", timeout=60)
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "--max-tokens" in result.stderr
