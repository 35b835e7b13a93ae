"""The agent runtime against a scripted Messages API: the real `anthropic` client, real HTTP."""

from __future__ import annotations

import json
import os

import pytest
from fake_anthropic import FakeAnthropic, Fault, text, tool_use

from vibeserve_ray.agents.client import ApiKey
from vibeserve_ray.agents.editor import EDITOR_NAME, ConfinedRoot, editor_tool
from vibeserve_ray.agents.gateway import BUDGET, KEY_REFUSED, Gateway
from vibeserve_ray.agents.ledger import DEFAULT_PRICES, SpendLimit
from vibeserve_ray.agents.session import FAILED, SUBMITTED, Role, RoleSettings, run_session
from vibeserve_ray.agents.tools import Tool, ToolError, cut, schema, submit_tool

KEY = "sk-ant-test-0123456789abcdef"
SYSTEM = "# The Tester\n\nYou test things. " + "Be thorough. " * 200  # long enough to be worth caching


def _role(workspace, calls: list) -> Role:
    def echo(args: dict) -> str:
        calls.append(args)
        if args["text"] == "fail":
            raise ToolError("asked to fail")
        return args["text"] * args.get("times", 1)

    tools = (editor_tool(ConfinedRoot(workspace)), Tool("echo", "Echoes text.", schema({"text": {"type": "string"}, "times": {"type": "integer"}},
                                                                                  ["text"]), echo))
    result = schema({"outcome": {"enum": ["implemented", "blocked"]}, "summary": {"type": "string"}})
    return Role("tester", SYSTEM, tools, submit_tool("Ends the session with the result.", result))


def _gateway(fake: FakeAnthropic, key: str = KEY, budget: SpendLimit = SpendLimit(), max_retries: int = 4) -> Gateway:
    g = Gateway(fake.url, DEFAULT_PRICES, budget, max_retries=max_retries, timeout_s=30)
    g.unlock(ApiKey(value=key))
    return g


SETTINGS = RoleSettings(model="claude-sonnet-5-5", max_tokens=1024, max_turns=8, time_limit_s=60)


def test_session_edits_with_the_text_editor_calls_tools_and_submits_a_structured_result(tmp_path):
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "engine.py").write_text("def step():\n    return 1\n")
    script = [
        [text("Looking first."), tool_use(EDITOR_NAME, command="view", path="/candidate/engine.py")],
        [tool_use(EDITOR_NAME, command="str_replace", path="/candidate/engine.py", old_str="return 1", new_str="return 2"),
         tool_use("echo", text="ab", times=3)],
        [tool_use("echo", text="fail")],
        [tool_use("submit", outcome="implemented", summary="step returns 2")],
    ]
    calls: list = []
    with FakeAnthropic({"tester": script}, key=KEY) as fake:
        out = run_session(_role(ws, calls), SETTINGS, _gateway(fake).call, "e1", "Make step return 2.", tmp_path / "t.json")
    assert out.outcome == SUBMITTED, out.reason
    assert out.result == {"outcome": "implemented", "summary": "step returns 2"}
    assert (ws / "engine.py").read_text() == "def step():\n    return 2\n"
    results = fake.tool_results("tester")
    assert "1\tdef step():" in results[0]["content"]
    assert results[2]["content"] == "ababab" and not results[2].get("is_error")
    assert results[3]["is_error"] and "asked to fail" in results[3]["content"]
    # the editor is declared as Anthropic's tool, by type and name only
    first = fake.by_role("tester")[0].body
    assert {"type": "text_editor_20250728", "name": EDITOR_NAME} in [{k: v for k, v in t.items() if k != "cache_control"} for t in first["tools"]]
    assert first["model"] == "claude-sonnet-5-5" and first["max_tokens"] == 1024 and "stream" not in first
    saved = json.loads((tmp_path / "t.json").read_text())
    assert saved["outcome"] == SUBMITTED and saved["result"]["summary"] == "step returns 2"
    assert saved["ended_at"] >= saved["started_at"]
    assert len(saved["calls"]) == 4 and saved["usage"]["calls"] == 4
    assert [m["role"] for m in saved["messages"]] == ["user", "assistant"] * 4 + ["user"]


def test_requests_carry_cache_breakpoints_and_later_turns_read_the_cache(tmp_path):
    script = [[tool_use("echo", text="x")], [tool_use("echo", text="y")], [tool_use("submit", outcome="blocked", summary="s")]]
    with FakeAnthropic({"tester": script}, key=KEY) as fake:
        out = run_session(_role(tmp_path, []), SETTINGS, _gateway(fake).call, "e1", "Echo twice.")
    assert out.submitted
    bodies = [r.body for r in fake.by_role("tester")]
    for body in bodies:
        marks = [b for b in body["system"] if "cache_control" in b]
        marks += [b for m in body["messages"] for b in m["content"] if "cache_control" in b]
        marks += [t for t in body["tools"] if "cache_control" in t]
        assert 2 <= len(marks) <= 4
        assert "cache_control" in body["system"][-1] and "cache_control" in body["messages"][-1]["content"][-1]
    usages = [r["usage"] for r in (c for c in out.transcript.calls)]
    assert usages[0]["cache_write_tokens"] > 0 and usages[0]["cache_read_tokens"] == 0
    assert all(u["cache_read_tokens"] > 0 for u in usages[1:]), usages
    assert out.usage.cache_read_tokens == sum(u["cache_read_tokens"] for u in usages)
    assert all(fake.key_sent(r.headers) == KEY for r in fake.received)


def test_three_malformed_calls_in_a_row_end_the_session_as_failed(tmp_path):
    script = [[tool_use("nonexistent", a=1)], [text("I think I am done.")], [tool_use("echo", wrong=1)], [tool_use("submit", outcome="x")]]
    with FakeAnthropic({"tester": script}, key=KEY) as fake:
        out = run_session(_role(tmp_path, []), SETTINGS, _gateway(fake).call, "e1", "Go.")
    assert out.outcome == FAILED and "malformed" in out.reason
    errors = fake.tool_results("tester")
    assert "unknown tool 'nonexistent'" in errors[0]["content"] and errors[0]["is_error"]
    last = out.transcript.messages[-1]["content"][-1]  # the third is in the transcript, never sent
    assert last["is_error"] and "'text' is a required property" in last["content"]
    assert len(fake.received) == 3


def test_a_good_call_resets_the_malformed_count(tmp_path):
    script = [[tool_use("echo", wrong=1)], [tool_use("echo", wrong=2)], [tool_use("echo", text="ok")], [tool_use("echo", wrong=3)],
              [tool_use("submit", outcome="implemented")], [tool_use("submit", outcome="implemented", summary="done")]]
    with FakeAnthropic({"tester": script}, key=KEY) as fake:
        out = run_session(_role(tmp_path, []), SETTINGS, _gateway(fake).call, "e1", "Go.")
    assert out.submitted and out.result["summary"] == "done"


def test_rate_limits_and_overload_are_retried_honouring_retry_after(tmp_path):
    script = [[tool_use("echo", text="x")], [tool_use("submit", outcome="implemented", summary="s")]]
    faults = [Fault(429, {"retry-after": "0.2"}), Fault(529), Fault(429, {"retry-after": "0.1"}), Fault(529, {"retry-after": "0.1"})]
    with FakeAnthropic({"tester": script}, key=KEY, faults=faults) as fake:
        out = run_session(_role(tmp_path, []), SETTINGS, _gateway(fake).call, "e1", "Go.")
    assert out.submitted, out.reason
    assert [r.status for r in fake.received] == [429, 529, 429, 529, 200, 200]
    assert out.usage.calls == 2  # the refused attempts cost nothing


def test_a_refused_key_ends_the_session_and_every_later_call_without_retrying(tmp_path):
    with FakeAnthropic({"tester": [[tool_use("echo", text="x")]]}, key=KEY) as fake:
        gateway = _gateway(fake, key="sk-ant-wrong-key-000000")
        out = run_session(_role(tmp_path, []), SETTINGS, gateway.call, "e1", "Go.")
        again = gateway.call("tester", "e2", {"model": "m", "max_tokens": 1, "messages": []})
    assert out.outcome == KEY_REFUSED and "refused the key" in out.reason and "401" in out.reason
    assert again.stop == KEY_REFUSED
    assert len(fake.received) == 1, "a 401 is not retried, and nothing is sent after it"
    assert gateway.state().key_refused


def test_budget_stops_calls_before_it_is_overshot(tmp_path):
    script = [[tool_use("echo", text="x" * 50)] for _ in range(30)]
    with FakeAnthropic({"tester": script}, key=KEY) as fake:
        gateway = _gateway(fake, budget=SpendLimit(usd=0.015))
        settings = RoleSettings(model="claude-sonnet-5-5", max_tokens=256, max_turns=30, time_limit_s=60)
        out = run_session(_role(tmp_path, []), settings, gateway.call, "e1", "Go.")
    state = gateway.state()
    assert out.outcome == BUDGET and state.budget_spent
    assert 2 <= out.usage.calls < 30
    assert state.ledger.total.cost_usd <= 0.015
    assert state.ledger.by_role["tester"].calls == out.usage.calls == len(fake.received)


def test_token_budget_counts_billed_input_and_output(tmp_path):
    script = [[tool_use("echo", text="x")] for _ in range(30)]
    with FakeAnthropic({"tester": script}, key=KEY) as fake:
        gateway = _gateway(fake, budget=SpendLimit(tokens=20_000))
        out = run_session(_role(tmp_path, []), RoleSettings("claude-sonnet-5-5", 256, 30, 60), gateway.call, "e1", "Go.")
    total = gateway.state().ledger.total
    assert out.outcome == BUDGET and total.tokens <= 20_000
    assert total.tokens == total.input_tokens + total.cache_write_tokens + total.cache_read_tokens + total.output_tokens > 0


def test_long_tool_output_is_cut_to_head_and_tail():
    long = "".join(f"line {i}\n" for i in range(10_000))
    short = cut(long, 1000)
    assert short.startswith("line 0\n") and short.endswith("line 9999\n") and "characters cut" in short
    assert len(short) < 1100 and cut("small", 1000) == "small"


def test_editor_stays_inside_its_workspace(tmp_path):
    ws = ConfinedRoot(tmp_path / "ws")
    (tmp_path / "ws").mkdir()
    (tmp_path / "secret.txt").write_text("s")
    os.symlink(tmp_path / "secret.txt", tmp_path / "ws" / "link.txt")
    os.symlink(tmp_path, tmp_path / "ws" / "up")
    for bad in ("/etc/passwd", "../secret.txt", "/candidate/../secret.txt", "link.txt", "/candidate/up/secret.txt", str(tmp_path / "secret.txt")):
        with pytest.raises(ToolError):
            ws.view(bad)
    with pytest.raises(ToolError):
        ws.create("/candidate/up/new.py", "x")
    assert ws.create("/candidate/pkg/a.py", "one\ntwo\nthree\n").startswith("created")
    assert ws.view("pkg/a.py", [2, 3]) == "2\ttwo\n3\tthree"
    ws.insert("/candidate/pkg/a.py", 1, "one and a half")
    with pytest.raises(ToolError, match="occurs 0 times|not found"):
        ws.str_replace("/candidate/pkg/a.py", "four", "4")
    (tmp_path / "ws" / "pkg" / "b.py").write_text("x\nx\n")
    with pytest.raises(ToolError, match="2 times"):
        ws.str_replace("/candidate/pkg/b.py", "x", "y")
    assert (tmp_path / "ws" / "pkg" / "a.py").read_text() == "one\none and a half\ntwo\nthree\n"
    listing = ws.view("/candidate")
    assert "/candidate/pkg/a.py" in listing and "link.txt" not in listing


def test_role_settings_come_from_the_command_line_then_the_role_table_then_agent(tmp_path):
    from conftest import TINY_TARGET

    from vibeserve_ray.agents.settings import agent_config, parse_models
    from vibeserve_ray.errors import BadInput
    from vibeserve_ray.target import load_target

    text = (TINY_TARGET / "target.toml").read_text().replace('backend = "auto"', 'backend = "auto"\nmodel = "m-all"\nroles = {judge = "m-judge"}\n'
                                                                 'budget_usd = 2.5\nmax_turns = 7\n[agent.implementer]\nmodel = "m-impl"\nmax_turns = 30\n'
                                                                 '[agent.prices."m-impl"]\ninput = 1\noutput = 2\ncache_write = 1.5\ncache_read = 0.1')
    (tmp_path / "target.toml").write_text(text)
    (tmp_path / "checker").symlink_to(TINY_TARGET / "checker")
    spec = load_target(tmp_path).spec
    config = agent_config(spec.agent, 1000, parse_models(["evaluator=m-cli"]))
    assert {r: s.model for r, s in config.roles.items()} == {"orchestrator": "m-all", "implementer": "m-impl", "judge": "m-judge", "evaluator": "m-cli"}
    assert config.role("implementer").max_turns == 30 and config.role("judge").max_turns == 7
    assert config.budget == SpendLimit(usd=2.5, tokens=1000) and config.prices["m-impl"].output == 2
    assert agent_config(spec.agent, budget_usd=0.5).budget.usd == 0.5
    for bad in (["judge"], ["planner=m"], ["judge="]):
        with pytest.raises(BadInput, match="--model"):
            parse_models(bad)


def test_the_key_is_checked_up_front_with_the_free_token_count(tmp_path):
    with FakeAnthropic({}, key=KEY) as fake:
        assert _gateway(fake).check_key("claude-sonnet-5-5") == ""
        bad = _gateway(fake, key="sk-ant-wrong-key-000000")
        assert "refused the key" in bad.check_key("claude-sonnet-5-5")
        assert bad.call("tester", "e", {"model": "m", "max_tokens": 1, "messages": []}).stop == KEY_REFUSED
    assert fake.received == [], "counting tokens is not a Messages call"
