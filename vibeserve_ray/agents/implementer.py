"""The Implementer: one session per hypothesis, in a workspace holding only the candidate tree.

It edits with Anthropic's text editor tool and runs the candidate only through the
sandboxed runner, as any candidate is run: `run_check` (a short checker), `run_bench` (a
short benchmark) and `profile` (the hottest operators of a short run). It may change
any code of the candidate; the gates judge the result afterwards.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Callable

from vibeserve_ray.agents.editor import Workspace, editor_tool
from vibeserve_ray.agents.gateway import Transport
from vibeserve_ray.agents.hypothesis import Hypothesis
from vibeserve_ray.agents.prompts import system_prompt
from vibeserve_ray.agents.session import Role, RoleSettings, SessionResult, run_session
from vibeserve_ray.agents.skill_tools import skill_tools
from vibeserve_ray.agents.tools import Tool, ToolError, schema, submit_tool
from vibeserve_ray.candidate import load_candidate
from vibeserve_ray.design_space import DesignSpace
from vibeserve_ray.errors import BadInput
from vibeserve_ray.runner import CandidateFailure
from vibeserve_ray.target import Target

OUTCOMES = ("implemented", "disproven", "blocked")
RESULT = schema({"outcome": {"enum": list(OUTCOMES)}, "summary": {"type": "string", "minLength": 1}})
SHORT_BENCH_REQUESTS = 16  # a short benchmark: enough requests to fill the target's concurrency once or twice
PROFILE_REQUESTS = 8  # the profiler's trace grows with every operator call: a shorter run still shows the hot ones


def _candidate(ws: Path):
    try:
        return load_candidate(ws)
    except BadInput as exc:
        raise ToolError(f"the candidate does not load: {exc}") from None


def candidate_tools(target: Target, space: DesignSpace, ws: Path, scratch: Path, say: Callable[[str], None]) -> list[Tool]:
    """run_check, run_bench and profile on the workspace's current tree."""
    from vibeserve_ray.agents.profiling import profile_candidate
    from vibeserve_ray.inner.evaluate import bench_candidate
    from vibeserve_ray.inner.judge.checker import check_candidate

    runs = itertools.count(1)
    n_requests = min(SHORT_BENCH_REQUESTS, target.spec.benchmark.num_requests)

    def run_check(_: dict) -> str:
        spec = _candidate(ws)
        problems = space.validate(spec.design, spec.knobs, target.spec.hardware.device)
        if problems:
            return "INVALID candidate.toml (the search would reject it before running it): " + "; ".join(problems)
        verdict = check_candidate(target, spec, scratch / f"check-{next(runs)}", phases=("concurrent",), say=say)
        if verdict.passed:
            return f"PASS: {verdict.compared} sequences equal to the reference under concurrent load ({verdict.forgiven} cut at a near-tie)"
        if verdict.failure:
            return verdict.failure.describe()
        m = verdict.mismatch
        assert m is not None
        # where, not what: the held-out prompts and the reference's tokens stay with the checker
        return f"FAIL: {m.phase}: held-out prompt #{m.prompt_index} differs from the reference at generated token {m.step} ({m.reason})"

    def run_bench(_: dict) -> str:
        out = bench_candidate(target, _candidate(ws), scratch / f"bench-{next(runs)}", num_requests=n_requests, say=say)
        if isinstance(out, CandidateFailure):
            return out.describe()
        return json.dumps(out.report.to_json() | {"exact_responses": out.exactness.summary()}, indent=1)

    def profile(_: dict) -> str:
        return profile_candidate(target, _candidate(ws), scratch / f"profile-{next(runs)}", min(PROFILE_REQUESTS, n_requests), say=say)

    b = target.spec.benchmark
    no_input = schema({})
    return [
        Tool("run_check", "Starts the candidate in the sandbox and compares its outputs with the reference on the held-out prompts under "
             "concurrent load (a short version of the checker). PASS, or where it first differs, or why it failed to run.", no_input, run_check),
        Tool("run_bench", f"Benchmarks the candidate on the target's workload ({n_requests} requests at concurrency {b.concurrency}); returns "
             f"vLLM-named metrics (the headline is {b.headline}, {b.direction}) and whether every response equals the reference.",
             no_input, run_bench),
        Tool("profile", f"Runs a short benchmark ({min(PROFILE_REQUESTS, n_requests)} requests) under torch.profiler and returns the table of the "
             "operators that took the most time (and, with py-spy installed, the hottest Python functions).",
             no_input, profile),
    ]


def implementer_role(target: Target, space: DesignSpace, ws: Path, scratch: Path, say: Callable[[str], None]) -> Role:
    tools = (editor_tool(Workspace(ws)), *candidate_tools(target, space, ws, scratch, say), *skill_tools())
    return Role("implementer", system_prompt("implementer"), tools,
                submit_tool("Ends the session: the outcome and a summary of what you changed and measured.", RESULT))


def task_text(h: Hypothesis, target: Target, parent: str) -> str:
    """The session's first message: the hypothesis, the target and the parent's figures."""
    b, hw = target.spec.benchmark, target.spec.hardware
    workload = (f"dataset {b.dataset}" if b.dataset else f"synthetic prompts of {b.synthetic.input_len[0]}-{b.synthetic.input_len[1]} tokens, "
                f"outputs of {b.synthetic.output_len[0]}-{b.synthetic.output_len[1]}" if b.synthetic else "")
    skills = f"\nSkills to read: {', '.join(h.skills)}" if h.skills else ""
    return (f"## Hypothesis\n\n{h.what}\n\nWhy: {h.why}\nExpected effect: {h.expected_effect}{skills}\n\n"
            f"## Target: {target.name}\n\n{target.spec.description}\nHardware: {hw.device}, {hw.num_cpus:g} CPUs, {hw.num_gpus:g} GPUs. "
            f"Workload: {b.num_requests} requests, concurrency {b.concurrency}, {workload}. "
            f"Headline metric: {b.headline} ({b.direction}); SLOs: {dict(b.slo) or 'none'}.\n\n"
            f"## The parent candidate\n\n{parent}\n\nThe candidate tree is at /candidate. Implement the hypothesis, then call submit.")


def implement(h: Hypothesis, target: Target, space: DesignSpace, ws: Path, scratch: Path, parent: str, settings: RoleSettings,
              transport: Transport, eval_id: str, transcript_path: Path | None = None, say: Callable[[str], None] = lambda s: None) -> SessionResult:
    """Runs one Implementer session on the candidate tree in `ws` (changed in place)."""
    role = implementer_role(target, space, ws, scratch, say)
    return run_session(role, settings, transport, eval_id, task_text(h, target, parent), transcript_path, say)
