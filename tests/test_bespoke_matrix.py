"""The bespoke matrix's checks, from measured cells (the measuring itself is the benchmark's, hours long)."""

from __future__ import annotations

import json

from conftest import ROOT

from benchmarks.bespoke_matrix import report
from vibeserve_ray.target import load_target


def _cells(values: dict[tuple[str, str], float]) -> dict:
    return {f"{row}|{col}": {"headline": v, "runs": []} for (row, col), v in values.items()}


def _winner(tmp_path, name: str, design: dict):
    d = tmp_path / name
    d.mkdir()
    (d / "candidate.toml").write_text("[design]\n" + "".join(f'{k} = "{v}"\n' for k, v in design.items()))
    return d


def test_matrix_checks_each_winner_against_both_vllm_rows(tmp_path):
    targets = {name: load_target(ROOT / "targets" / name) for name in ("tiny-llama-cpu", "tiny-llama-code-edit")}
    rows = {"winner:tiny-llama-cpu": _winner(tmp_path, "cpu", {"scheduler": "continuous"}),
            "winner:tiny-llama-code-edit": _winner(tmp_path, "edit", {"speculation": "prompt_lookup"}),
            "generic": _winner(tmp_path, "generic", {"scheduler": "continuous", "kv_cache": "paged"}), "vllm": None, "vllm-fp32": None}
    cells = _cells({  # cpu: output tok/s (max); code-edit: mean e2e latency ms (min)
        ("winner:tiny-llama-cpu", "tiny-llama-cpu"): 600, ("winner:tiny-llama-code-edit", "tiny-llama-cpu"): 400,
        ("generic", "tiny-llama-cpu"): 480, ("vllm", "tiny-llama-cpu"): 1000, ("vllm-fp32", "tiny-llama-cpu"): 480,
        ("winner:tiny-llama-cpu", "tiny-llama-code-edit"): 2700, ("winner:tiny-llama-code-edit", "tiny-llama-code-edit"): 900,
        ("generic", "tiny-llama-code-edit"): 3000, ("vllm", "tiny-llama-code-edit"): 1000, ("vllm-fp32", "tiny-llama-code-edit"): 1800})
    out = report(targets, rows, cells, noise=0.05, load_start=(0.0, 0.0, 0.0))
    json.dumps(out)  # what the benchmark prints
    cpu, edit = out["checks"]["tiny-llama-cpu"], out["checks"]["tiny-llama-code-edit"]
    assert cpu == {"best_on_own_target": True, "beats_generic": True, "ratio_to_vllm": 0.6, "ratio_to_vllm_fp32": 1.25}
    assert edit == {"best_on_own_target": True, "beats_generic": True, "ratio_to_vllm": 1.111, "ratio_to_vllm_fp32": 2.0}
    assert out["passed"]["beats_vllm_on"] == {"tiny-llama-code-edit": True}  # the claim is against vLLM's defaults
    assert out["distinct_winner_designs"] == 2 and out["matrix"]["vllm-fp32"]["tiny-llama-cpu"] == 480


def test_matrix_without_the_fp32_row_reports_no_fp32_ratio(tmp_path):
    targets = {"tiny-llama-cpu": load_target(ROOT / "targets" / "tiny-llama-cpu")}
    rows = {"winner:tiny-llama-cpu": _winner(tmp_path, "cpu", {"scheduler": "continuous"}), "vllm": None}
    out = report(targets, rows, _cells({("winner:tiny-llama-cpu", "tiny-llama-cpu"): 600}), noise=0.05, load_start=(0.0, 0.0, 0.0))
    assert out["checks"]["tiny-llama-cpu"] == {"best_on_own_target": True, "beats_generic": False, "ratio_to_vllm": None}


def test_a_ratio_counts_only_between_cells_that_both_meet_the_contract(tmp_path):
    targets = {"tiny-llama-cpu": load_target(ROOT / "targets" / "tiny-llama-cpu")}
    rows = {"winner:tiny-llama-cpu": _winner(tmp_path, "cpu", {"scheduler": "continuous"}), "generic": _winner(tmp_path, "g", {}), "vllm": None}

    def cell(headline: float, failure: str = "") -> dict:
        verdict = {"passed": not failure, "failure": failure, "greedy": {"mean_deficit": 0.5 if failure else 0.001}}
        return {"headline": headline, "runs": [{"headline": headline, "accuracy": verdict}] * 3}

    cells = {"winner:tiny-llama-cpu|tiny-llama-cpu": cell(600), "generic|tiny-llama-cpu": cell(700, "mean deficit 0.5 > 0.01"),
             "vllm|tiny-llama-cpu": cell(1000, "gross errors")}
    out = report(targets, rows, cells, noise=0.05, load_start=(0.0, 0.0, 0.0))
    assert out["checks"]["tiny-llama-cpu"] == {"best_on_own_target": True, "beats_generic": False, "ratio_to_vllm": None}
    assert out["matrix"]["vllm"]["tiny-llama-cpu"] == 1000  # the speed is shown; it is not compared
    assert out["accuracy"]["vllm|tiny-llama-cpu"] == {"passed": False, "failure": "gross errors", "worst_mean_deficit": 0.5}
    assert out["accuracy"]["winner:tiny-llama-cpu|tiny-llama-cpu"]["passed"]


def test_the_precision_ceiling_measures_both_precisions_on_the_models_own_layers():
    from benchmarks.vllm_peer import precision_ceiling
    from vibeserve_ray.engine.models.llama import LlamaConfig

    config = LlamaConfig.from_dict({"vocab_size": 64, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                                    "num_attention_heads": 2, "num_key_value_heads": 1})
    got = precision_ceiling(config, tokens=8, repeats=2)
    assert got["float32_gflops_per_core"] > 0 and got["bfloat16_gflops_per_core"] > 0
    assert got["bfloat16_over_float32"] == round(got["bfloat16_gflops_per_core"] / got["float32_gflops_per_core"], 2)
