"""The peers script's verdicts, from measured runs (the measuring itself is the benchmark's, an hour long)."""

from __future__ import annotations

from conftest import TINY_TARGET

from benchmarks.peers import summarise
from vibeserve_ray.target import load_target


def _runs(headlines: list[float], passed: bool = True) -> list[dict]:
    return [{"headline": h, "output_throughput": h, "passed": passed, "accuracy": "x"} for h in headlines]


def test_a_ratio_counts_only_where_both_systems_pass_the_accuracy_contract():
    target = load_target(TINY_TARGET)  # output tok/s, higher is better
    runs = {"ours": _runs([90, 100, 95]), "llama.cpp": _runs([60, 50, 70], passed=False), "vllm": _runs([40, 60, 50])}
    out = summarise(target, runs, {"vllm": {"passed": True}})
    assert out["medians"]["ours"]["headline"] == 95 and out["passed"] == {"ours": True, "llama.cpp": False, "vllm": True}
    assert out["ratios"]["ours/vllm"] == {"ratio": 1.9, "counts": True, "per_round": [2.25, 1.667, 1.9]}
    assert out["ratios"]["ours/llama.cpp"]["counts"] is False and out["ratios"]["llama.cpp/vllm"]["counts"] is False
    assert out["goals"] == {"ours >= 1.5x vllm": "met", "ours >= 1.5x llama.cpp": "not comparable: a side fails the accuracy contract"}


def test_a_failed_accuracy_script_fails_the_system():
    target = load_target(TINY_TARGET)
    out = summarise(target, {"ours": _runs([10]), "vllm": _runs([20])}, {"vllm": {"passed": False}})
    assert out["passed"]["vllm"] is False and out["ratios"]["ours/vllm"]["counts"] is False
