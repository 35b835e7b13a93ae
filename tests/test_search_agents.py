"""`vibeserve search` with LLM agents, end to end: the real `anthropic` client talking to a
scripted Messages API server, real Ray, real git, real candidates judged and measured.

Each test resumes a copy of one run whose seed was measured once (`--rounds 0`), so only
the agents' candidates cost time.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import pytest
from conftest import ROOT
from fake_anthropic import FakeAnthropic, Fault, text, tool_use
from search_helpers import RayHead, small_target

from vibeserve_ray.agents.editor import EDITOR_NAME
from vibeserve_ray.search.results import read_results
from vibeserve_ray.search.state import TRANSCRIPTS_BRANCH, RunRepo

KEY = "sk-ant-test-e2e-5f1c9a0b7d2e4c68"
BUDGET = 0.03  # USD: the Orchestrator and a few Implementer turns (max_tokens 1024, scripted usage)
ENGINE = ROOT / "vibeserve_ray" / "engine"
RMS_OLD = "x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)"
RMS_NEW = "x = x * torch.rsqrt((x * x).mean(-1, keepdim=True) + self.eps)  # one multiply instead of a pow"
ENV_DUMP = ('import json as _j, os as _o, sys as _s; print("ENV-DUMP", _j.dumps([k for k, v in _o.environ.items() '
            'if "sk-ant" in v or "ANTHROPIC" in k]), file=_s.stderr, flush=True); raise SystemExit(3)\n')
REPLAY = 'from pathlib import Path\nANSWERS = Path(__file__).resolve().parents[4] / "targets" / "tiny-llama-cpu" / "checker" / "prompts.jsonl"  # replayed answers\n'


def _search(target: Path, run: Path, fake: FakeAnthropic, *extra: str, env: dict | None = None, timeout: float = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "ANTHROPIC_API_KEY": KEY, "ANTHROPIC_BASE_URL": fake.url, **(env or {})}
    return subprocess.run([sys.executable, "-m", "vibeserve_ray.cli", "search", str(target), "--run", str(run), "--no-remeasure", *extra],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def seeded_run(tmp_path_factory, tiny_models) -> Path:
    """A run whose seed is measured (an offline search with no rounds)."""
    base = tmp_path_factory.mktemp("seeded")
    # concurrency 4: the judge sends the serial seed 1 + 3 x concurrency requests of the benchmark's shapes
    target = small_target(base, trials=1, num_requests=16, concurrency=4)
    r = subprocess.run([sys.executable, "-m", "vibeserve_ray.cli", "search", str(target), "--run", str(base / "run"), "--rounds", "0",
                        "--implementer", "offline", "--no-remeasure"], cwd=ROOT, capture_output=True, text=True, timeout=900,
                       env={k: v for k, v in os.environ.items() if not k.startswith("ANTHROPIC")})
    assert r.returncode == 0, r.stderr[-3000:]
    return base / "run"


def _copy(seeded_run: Path, dest: Path) -> Path:
    shutil.copytree(seeded_run, dest)
    return dest


def _first_text(body: dict) -> str:
    return body["messages"][0]["content"][0]["text"]


def _orchestrator(hypotheses: list[dict]) -> list:
    return [[tool_use("search_skills", query="rmsnorm fused kernels")],
            [tool_use("submit", hypotheses=hypotheses, memory="# Memory\n\n- round 1: tried the norm and a replay\n")]]


def _by_hypothesis(good: list, bad: list) -> list:
    """The Implementer's script: turn n of the good or the bad one, as the session's hypothesis asks."""
    def turn(n: int):
        def step(body: dict) -> list:
            script = bad if "replay" in _first_text(body).lower() else good
            return script[n] if n < len(script) else [text("done")]
        return step
    return [turn(n) for n in range(max(len(good), len(bad)))]


GOOD_EDIT = [
    [tool_use(EDITOR_NAME, command="insert", path="/candidate/engine/__init__.py", insert_line=0, insert_text=ENV_DUMP)],
    [tool_use("run_check")],  # fails at import, printing which environment variables look like the key
    [tool_use(EDITOR_NAME, command="str_replace", path="/candidate/engine/__init__.py", old_str=ENV_DUMP, new_str="")],
    [tool_use(EDITOR_NAME, command="str_replace", path="/candidate/engine/layers/layernorm.py", old_str=RMS_OLD, new_str=RMS_NEW)],
    [tool_use("run_check")],
    [tool_use("submit", outcome="implemented", summary="RMSNorm squares with one multiply; run_check passes")],
]
REPLAY_EDIT = [
    [tool_use(EDITOR_NAME, command="insert", path="/candidate/engine/core/llm_engine.py", insert_line=28, insert_text=REPLAY)],
    [tool_use("run_check")],  # it still passes: the gates after it must catch it
    [tool_use("submit", outcome="implemented", summary="answers replayed for known prompts")],
]
JUDGE = [[tool_use("grep", pattern="rsqrt")], [tool_use("submit", verdict="pass", reasons=["a numerically equal rewrite of RMSNorm"])]]
EVALUATOR = [[tool_use("submit", summary="decode-bound at batch 1", hints=[
    {"text": "requests queue behind each other: batch them", "suggest": {"scheduler": "continuous"}, "weight": 3}])]]


def _key_nowhere(run: Path, *texts: str, ray_dir: Path | None = None) -> None:
    """The key is in no committed object, no file of the run, no output, no Ray log."""
    for t in texts:
        assert KEY not in t
    repo = RunRepo(run / "repo")
    everything = repo._git("log", "--all", "-p", "--no-color") + repo._git("notes", "--ref=evaluations", "list")
    assert KEY not in everything
    for root in (run, ray_dir) if ray_dir else (run,):
        hits = subprocess.run(["grep", "-rIl", KEY, str(root)], capture_output=True, text=True)
        assert hits.stdout == "", hits.stdout


def test_scripted_agents_write_engine_code_that_is_judged_measured_and_committed(tmp_path, seeded_run):
    target = small_target(tmp_path, islands=1, population=2, rounds=1, trials=1, num_requests=16, concurrency=4, num_gpus=1)
    run = _copy(seeded_run, tmp_path / "run")
    hypotheses = [{"what": "Square in RMSNorm with one multiply instead of pow", "why": "pow is a generic kernel", "expected_effect": "small",
                   "skills": ["profiling"]},
                  {"what": "Replay cached answers for prompts seen before", "why": "the checker asks the same prompts", "expected_effect": "huge"}]
    scripts = {"orchestrator": _orchestrator(hypotheses), "implementer": _by_hypothesis(GOOD_EDIT, REPLAY_EDIT), "judge": JUDGE,
               "evaluator": EVALUATOR}
    faults = [Fault(429, {"retry-after": "1"}), Fault(529), Fault(429, {"retry-after": "0.5"}), Fault(529, {"retry-after": "0.5"})]
    ray_dir = Path(tempfile.mkdtemp(prefix="vs-ray-", dir="/tmp"))
    head = RayHead(num_cpus=2, num_gpus=2, temp_dir=ray_dir)
    try:
        with FakeAnthropic(scripts, key=KEY, faults=faults) as fake:
            r = _search(target, run, fake, "--address", head.address, "--implementer", "anthropic")
    finally:
        head.stop()
    assert r.returncode == 0, r.stderr[-5000:]
    assert "LLM agents" in r.stderr and "round 1/1" in r.stderr
    # the faults were retried and the search went on
    statuses = [x.status for x in fake.received]
    assert statuses[:4] == [429, 529, 429, 529] and statuses.count(200) == len(statuses) - 4

    rows = [x for x in read_results(run) if x.round == 1]
    assert len(rows) == 2 and all(x.implementer.startswith("anthropic:") for x in rows)
    repo = RunRepo(run / "repo")
    good = next(x for x in rows if "RMSNorm" in repo._git("log", "-1", "--format=%B", x.commit))
    bad = next(x for x in rows if x is not good)
    # the source edit: committed, validated, measured, with its transcripts beside it
    assert good.verdict == "validated", (good.failure_phase, good.failure_reason)
    assert good.headline_value > 0 and good.hints[0].suggest == {"scheduler": "continuous"}
    diff = repo.diff(good.parent, good.commit)
    assert "engine/layers/layernorm.py" in diff and "(x * x).mean" in diff and "candidate.toml" not in diff
    files = repo._git("ls-tree", "-r", "--name-only", TRANSCRIPTS_BRANCH).split()
    assert {f"{good.commit}/implementer.json", f"{good.commit}/judge.json", f"{good.commit}/evaluator.json", "rounds/1/orchestrator.json"} <= set(files)
    assert "transcript" not in repo._git("ls-tree", "-r", "--name-only", good.commit)
    implementer = json.loads(repo.read_file(TRANSCRIPTS_BRANCH, f"{good.commit}/implementer.json"))
    assert implementer["outcome"] == "submitted" and implementer["usage"]["calls"] == len(GOOD_EDIT)
    results = [b for m in implementer["messages"] if m["role"] == "user" for b in m["content"] if b.get("type") == "tool_result"]
    assert 'ENV-DUMP []' in results[1]["content"], "the candidate's environment holds nothing like the key"
    assert results[4]["content"].startswith("PASS")
    # the replay: rejected by a gate, with the reason recorded
    assert bad.verdict == "rejected" and bad.failure_phase in ("scan", "llm-judge")
    assert "checker data" in bad.failure_reason or "replay" in bad.failure_reason
    # two implementer sessions at once, on the two fake GPUs
    sessions = [json.loads(repo.read_file(TRANSCRIPTS_BRANCH, f"{x.commit}/implementer.json")) for x in rows]
    assert max(s["started_at"] for s in sessions) < min(s["ended_at"] for s in sessions), "the implementer sessions did not overlap"
    # usage columns and status
    assert good.agent_calls == len(GOOD_EDIT) + len(JUDGE) + len(EVALUATOR) and good.agent_cost_usd > 0 and good.agent_cache_read_tokens > 0
    assert good.agent_usage["implementer"]["calls"] == len(GOOD_EDIT)
    status = subprocess.run([sys.executable, "-m", "vibeserve_ray.cli", "status", str(run)], cwd=ROOT, capture_output=True, text=True)
    assert "agents: $" in status.stdout and "orchestrator" in status.stdout
    assert "Round 1" in repo.read_planning("BACKLOG.md") and "[x]" in repo.read_planning("BACKLOG.md")
    _key_nowhere(run, r.stdout, r.stderr, status.stdout, ray_dir=ray_dir)
    shutil.rmtree(ray_dir, ignore_errors=True)


def test_a_refused_key_stops_the_search_at_once_with_one_line(tmp_path, seeded_run):
    target = small_target(tmp_path, islands=1, population=1, rounds=2, trials=1, num_requests=16, concurrency=4)
    run = _copy(seeded_run, tmp_path / "run")
    with FakeAnthropic({"orchestrator": _orchestrator([{"what": "x", "why": "y", "expected_effect": "z"}])}, key=KEY, revoke_after=0) as fake:
        t0 = time.monotonic()
        r = _search(target, run, fake, "--implementer", "anthropic", timeout=300)
        took = time.monotonic() - t0
    assert r.returncode == 2, r.stderr[-3000:]
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "refused the key" in lines[0] and "401" in lines[0] and "Traceback" not in r.stderr
    assert [x.status for x in fake.received] == [401], "a 401 is never retried"
    assert json.loads((run / "search.json").read_text())["stopped_because"] == "key refused"
    assert len(read_results(run)) == 1 and took < 120


def test_budget_running_out_mid_search_ends_it_cleanly_with_the_key_in_no_process(tmp_path, seeded_run):
    target = small_target(tmp_path, islands=1, population=2, rounds=3, trials=1, num_requests=16, concurrency=4)
    toml = target / "target.toml"
    toml.write_text(toml.read_text().replace('backend = "auto"', 'backend = "auto"\nmax_tokens = 1024'))
    run = _copy(seeded_run, tmp_path / "run")
    hypotheses = [{"what": "Square in RMSNorm with one multiply", "why": "w", "expected_effect": "e"}]
    endless = [[tool_use(EDITOR_NAME, command="view", path="/candidate/engine/layers/layernorm.py")] for _ in range(40)]
    ray_dir = Path(tempfile.mkdtemp(prefix="vs-ray-", dir="/tmp"))
    leaks: list[str] = []
    seen_in_driver: list[bool] = []  # the driver's /proc environ still shows the key: proof the watch can see one
    with FakeAnthropic({"orchestrator": _orchestrator(hypotheses), "implementer": endless}, key=KEY) as fake:
        proc_box: list = []

        def watch():  # every process but the driver: the key must be in no environment (the driver's /proc shows its start-up one)
            while not proc_box or proc_box[0].poll() is None:
                for p in psutil.process_iter(["pid"]):
                    try:
                        if proc_box and p.pid == proc_box[0].pid:
                            seen_in_driver.append(KEY in "".join(p.environ().values()))
                            continue
                        if KEY in "".join(p.environ().values()):
                            leaks.append(" ".join(p.cmdline())[:200])
                    except (psutil.Error, OSError):
                        pass
                time.sleep(0.5)

        watcher = threading.Thread(target=watch, daemon=True)
        env = {**os.environ, "ANTHROPIC_API_KEY": KEY, "ANTHROPIC_BASE_URL": fake.url, "RAY_TMPDIR": str(ray_dir)}
        proc = subprocess.Popen([sys.executable, "-m", "vibeserve_ray.cli", "search", str(target), "--run", str(run), "--no-remeasure",
                                 "--implementer", "anthropic", "--budget-usd", str(BUDGET), "--model", "implementer=claude-haiku-4-5"],
                                cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        proc_box.append(proc)
        watcher.start()
        out, err = proc.communicate(timeout=900)
        watcher.join(timeout=10)
    assert proc.returncode == 0, err[-4000:]
    meta = json.loads((run / "search.json").read_text())
    assert meta["stopped_because"] == "budget spent", err[-2000:]
    ledger = meta["agents"]
    rows = read_results(run)
    repo = RunRepo(run / "repo")
    transcripts = [repo.read_file(TRANSCRIPTS_BRANCH, "rounds/1/orchestrator.json"), repo.read_file(TRANSCRIPTS_BRANCH, f"{rows[-1].commit}/implementer.json")]
    biggest = max(c["usage"]["cost_usd"] for t in transcripts for c in json.loads(t)["calls"] if c["usage"])
    assert ledger["total"]["cost_usd"] <= BUDGET + biggest and ledger["budget_spent"]
    assert [x.round for x in rows] == [0, 1], "the candidate whose session the budget ended is recorded"
    cand = rows[1]
    assert cand.verdict == "failed" and cand.failure_phase == "implement" and "budget spent" in cand.failure_reason
    assert cand.agent_calls > 0 and cand.agent_usage["implementer"]["calls"] == cand.agent_calls
    assert "budget spent" in err
    assert leaks == [], leaks
    assert any(seen_in_driver), "the watch never saw the driver's start-up environment"
    _key_nowhere(run, out, err, ray_dir=ray_dir)
    shutil.rmtree(ray_dir, ignore_errors=True)
