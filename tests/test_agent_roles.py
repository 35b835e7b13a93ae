"""The four roles against a scripted Messages API (the real client): their tools, their
structured results, and the rules the code enforces (plateau, design options, verdicts)."""

from __future__ import annotations

import json

import pytest
from fake_anthropic import FakeAnthropic, tool_use

from vibeserve_ray.agents.client import ApiKey
from vibeserve_ray.agents.gateway import Gateway
from vibeserve_ray.agents.ledger import DEFAULT_PRICES, SpendLimit
from vibeserve_ray.agents.session import RoleSettings
from vibeserve_ray.inner.implement import implementer_session
from vibeserve_ray.inner.judge.review import REVIEW_GATE, review_diff, tree_diff
from vibeserve_ray.inner.profile import op_table
from vibeserve_ray.inner.read import read_measurement
from vibeserve_ray.inner.task import Hypothesis
from vibeserve_ray.search.orchestrator import plan_round, plateaued
from vibeserve_ray.seed import materialise_seed

KEY = "sk-ant-test-roles-00000000"
SETTINGS = RoleSettings("claude-sonnet-5-5", 1024, 8, 300)


def _transport(fake: FakeAnthropic):
    g = Gateway(fake.url, DEFAULT_PRICES, SpendLimit(), max_retries=2, timeout_s=30)
    g.unlock(ApiKey(value=KEY))
    return g.call


def test_plateau_means_three_rounds_whose_running_best_grew_under_five_percent():
    assert not plateaued([1.0, 1.5])
    assert plateaued([1.0, 2.0, 2.02, 2.05])
    assert not plateaued([1.0, 2.0, 2.02, 2.2])
    assert plateaued([1.0, 2.0, float("nan"), 1.9])  # a round with nothing validated keeps the best


def test_orchestrator_on_a_plateau_must_pivot_or_say_why_and_name_known_parents():
    hyp = {"what": "fuse QKV", "why": "profile", "expected_effect": "+10%"}
    script = [[tool_use("submit", hypotheses=[hyp | {"parent": "deadbeef"}], memory="m")],
              [tool_use("submit", hypotheses=[hyp | {"parent": "abc123"}], memory="m")],
              [tool_use("submit", hypotheses=[hyp | {"parent": "abc123"}], memory="m", plateau="scheduling is done: pivot to kernels")]]
    with FakeAnthropic({"orchestrator": script}, key=KEY) as fake:
        plan = plan_round(4, 2, "# Memory", "", "| table |", "", True, ["abc123" + "0" * 34], SETTINGS, _transport(fake))
    errors = fake.tool_results("orchestrator")
    assert "unknown parent 'deadbeef'" in errors[0]["content"] and "plateau" in errors[1]["content"]
    assert "on a plateau" in fake.by_role("orchestrator")[0].body["messages"][0]["content"][0]["text"]
    assert plan.hypotheses == [Hypothesis("fuse QKV", "profile", "+10%", (), "abc123" + "0" * 34)]
    assert plan.plateau.startswith("scheduling is done") and plan.memory == "m"


def test_judge_fail_is_a_rejection_with_reasons_and_no_verdict_is_one_too(tmp_path):
    materialise_seed(tmp_path / "parent")
    materialise_seed(tmp_path / "candidate")
    model = tmp_path / "candidate" / "engine" / "models" / "llama.py"
    model.write_text(model.read_text() + "\nCACHED = {}  # outputs of earlier requests, replayed\n")
    diff = tree_diff(tmp_path / "parent", tmp_path / "candidate")
    assert diff.startswith("diff --git a/engine/models/llama.py b/engine/models/llama.py") and "+CACHED = {}" in diff
    script = [[tool_use("view", path="/candidate/engine/models/llama.py", view_range=[1, 5])],
              [tool_use("submit", verdict="fail", reasons=["1. canned outputs: engine/models/llama.py CACHED replays earlier outputs"])]]
    with FakeAnthropic({"judge": script}, key=KEY) as fake:
        verdict = review_diff(diff, "added a cache", tmp_path / "candidate", SETTINGS, _transport(fake), "e1")
        silent = review_diff(diff, "", tmp_path / "candidate", RoleSettings("claude-sonnet-5-5", 1024, 1, 300), _transport(fake), "e2")
    assert not verdict.passed and "canned outputs" in verdict.reason and REVIEW_GATE == "llm-judge"
    assert "+CACHED = {}" in fake.by_role("judge")[0].body["messages"][0]["content"][0]["text"]
    assert {t["name"] for t in fake.by_role("judge")[0].body["tools"]} == {"view", "grep", "submit"}, "the Judge cannot edit"
    assert not silent.passed and "no verdict" in silent.reason


def test_evaluator_hints_may_only_suggest_design_options_the_space_has(tmp_path):
    choices = {"scheduler": ("serial", "continuous"), "compile": ("off", "on")}
    script = [[tool_use("submit", summary="s", hints=[{"text": "t", "suggest": {"scheduler": "magic"}}])],
              [tool_use("submit", summary="queueing", hints=[{"text": "batch", "suggest": {"scheduler": "continuous"}, "weight": 3},
                                                             {"text": "fuse the MLP in code"}])]]
    with FakeAnthropic({"evaluator": script}, key=KEY) as fake:
        reading = read_measurement({"output_throughput": 100.0}, None, {"scheduler": "serial"}, choices, tmp_path, SETTINGS, _transport(fake), "e1")
    assert "is not one of ['serial', 'continuous']" in fake.tool_results("evaluator")[0]["content"]
    assert [(h.text, h.suggest, h.weight) for h in reading.hints] == [("batch", {"scheduler": "continuous"}, 3.0), ("fuse the MLP in code", {}, 1.0)]


def test_op_table_counts_self_time_per_thread():
    events = [  # a linear calling mm, on two threads; a kernel on the GPU (microseconds)
        {"ph": "X", "cat": "cpu_op", "name": "aten::linear", "pid": 1, "tid": 1, "ts": 0, "dur": 100_000},
        {"ph": "X", "cat": "cpu_op", "name": "aten::mm", "pid": 1, "tid": 1, "ts": 10_000, "dur": 80_000},
        {"ph": "X", "cat": "cpu_op", "name": "aten::mm", "pid": 1, "tid": 2, "ts": 5_000, "dur": 50_000},
        {"ph": "X", "cat": "kernel", "name": "gemm", "pid": 0, "tid": 7, "ts": 20_000, "dur": 30_000},
        {"ph": "i", "cat": "cpu_op", "name": "marker", "pid": 1, "tid": 1, "ts": 3},
    ]
    rows = {line.split()[-1]: line.split() for line in op_table(events).splitlines()[1:]}
    assert float(rows["aten::mm"][0]) == pytest.approx(130.0) and rows["aten::mm"][3] == "2"
    assert float(rows["aten::linear"][0]) == pytest.approx(20.0) and float(rows["aten::linear"][2]) == pytest.approx(100.0)
    assert float(rows["gemm"][0]) == pytest.approx(30.0)


def test_implementer_benchmarks_and_profiles_its_candidate_in_the_sandbox(tmp_path, tiny_models):
    from search_helpers import small_target

    from vibeserve_ray.design_space import default_space_path, load_space
    from vibeserve_ray.target import load_target

    target = small_target(tmp_path, num_requests=4)
    toml = target / "target.toml"
    toml.write_text(toml.read_text().replace("warmup_requests = 4", "warmup_requests = 1"))
    ws = materialise_seed(tmp_path / "candidate")
    script = [[tool_use("run_bench")], [tool_use("profile")], [tool_use("submit", outcome="disproven", summary="measured; no change")]]
    with FakeAnthropic({"implementer": script}, key=KEY) as fake:
        out = implementer_session(Hypothesis("measure", "why", "none"), load_target(target), load_space(default_space_path()), ws,
                                  tmp_path / "scratch", "parent", SETTINGS, _transport(fake), "e1")
    assert out.submitted and out.result["outcome"] == "disproven"
    bench, profile = fake.tool_results("implementer")[:2]
    metrics = json.loads(bench["content"])
    assert metrics["completed"] == 4 and metrics["output_throughput"] > 0 and metrics["accuracy"].startswith("accurate_responses: 4/4")
    assert "aten::mm" in profile["content"] and "self ms" in profile["content"], profile["content"][:2000]
    assert not (ws / "profile").exists() and not list(ws.rglob("*.json")), "runs leave nothing in the candidate tree"
    tools = {t["name"] for t in fake.by_role("implementer")[0].body["tools"]}
    assert tools == {"str_replace_based_edit_tool", "run_check", "run_bench", "profile", "search_skills", "read_skill", "submit"}
