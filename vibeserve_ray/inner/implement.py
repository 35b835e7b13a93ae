"""The Implementer: turns a proposal into a candidate tree in the inner loop's workspace.

Offline, a proposal is a design change the seed engine already implements
(`apply_design`); with agents, it is a hypothesis an LLM Implementer writes code for in
one session (`implement_hypothesis`). The session edits with Anthropic's text editor
tool and runs the candidate only through the sandboxed runner, as any candidate is run:
`run_check` (a short checker), `run_bench` (a short benchmark) and `profile` (the
hottest operators of a short run). It may change any code of the candidate; the gates
judge the result afterwards.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from vibeserve_ray.agents.editor import ConfinedRoot, editor_tool
from vibeserve_ray.agents.prompts import system_prompt
from vibeserve_ray.agents.session import Role, RoleSettings, SessionResult, run_session
from vibeserve_ray.agents.skill_tools import skill_tools
from vibeserve_ray.agents.tools import Tool, ToolError, schema, submit_tool
from vibeserve_ray.agents.transport import Transport, via_actor
from vibeserve_ray.candidate import load_candidate, write_candidate_toml
from vibeserve_ray.design_space import DesignSpace
from vibeserve_ray.errors import BadInput
from vibeserve_ray.inner.evaluate import bench_candidate
from vibeserve_ray.inner.judge.checker import check_candidate
from vibeserve_ray.inner.profile import profile_candidate
from vibeserve_ray.inner.task import AgentTask, Hypothesis, Proposal
from vibeserve_ray.inner.tune import skill_settings
from vibeserve_ray.runner import CandidateFailure
from vibeserve_ray.skills import applicable
from vibeserve_ray.target import Target

OUTCOMES = ("implemented", "disproven", "blocked")
OUTCOME_SCHEMA = schema({"outcome": {"enum": list(OUTCOMES)}, "summary": {"type": "string", "minLength": 1}})
SHORT_BENCH_REQUESTS = 16  # a short benchmark: enough requests to fill the target's concurrency once or twice
PROFILE_REQUESTS = 8  # the profiler's trace grows with every operator call: a shorter run still shows the hot ones


# --- offline: a design change the seed engine implements ------------------------------


def apply_design(proposal: Proposal, candidate_dir: Path, knobs: dict[str, Any] | None = None) -> str:
    """The offline implementer: the seed engine implements every option of the design
    space, so a design change is a rewrite of `[design]` (and of the `knobs` that go with
    it). Returns the commit message."""
    spec = load_candidate(candidate_dir)
    moved = {k: v for k, v in (knobs or {}).items() if spec.knobs.get(k) != v}
    write_candidate_toml(candidate_dir, spec.entrypoint, proposal.design, {**spec.knobs, **moved})
    with_knobs = f"; knobs {', '.join(f'{k}={v}' for k, v in sorted(moved.items()))}" if moved else ""
    return f"offline: {proposal.rationale}{with_knobs}"


def skill_knobs(proposal: Proposal, target: Target, space: DesignSpace) -> dict[str, Any]:
    """The knobs the skills behind the proposal's change set with it (the offline
    implementer writes them with the design; a lost result records them too)."""
    return skill_settings(proposal.changes, space.active_knobs(proposal.design), int(target.spec.hardware.num_cpus), applicable(target))


# --- with agents: one LLM session per hypothesis --------------------------------------


@dataclass(frozen=True)
class Implemented:
    message: str  # the commit message
    verdict: str  # '' when the candidate goes on to the judge; else rejected | failed, with the reason
    reason: str
    session: SessionResult


def implement_hypothesis(proposal: Proposal, agents: AgentTask, target: Target, space: DesignSpace, candidate_dir: Path, scratch: Path,
                         eval_id: str, transcript: Path, say: Callable[[str], None]) -> Implemented:
    """One LLM Implementer session on the candidate tree. Only `implemented` goes on to the
    judge: a disproven hypothesis is a rejected candidate, a blocked or unfinished session a
    failed one, each with its reason."""
    h = proposal.hypothesis
    assert h is not None
    settings = agents.roles["implementer"]
    session = implementer_session(h, target, space, candidate_dir, scratch, agents.parent, settings, via_actor(agents.gateway), eval_id,
                                  transcript, say)
    outcome = (session.result or {}).get("outcome", "")
    summary = (session.result or {}).get("summary", "")
    message = f"anthropic:{settings.model}: {h.brief()}\n\n{summary}".rstrip()
    if outcome == "implemented":
        return Implemented(message, "", summary, session)
    if outcome == "disproven":
        return Implemented(message, "rejected", f"disproven: {summary}", session)
    reason = f"blocked: {summary}" if outcome == "blocked" else f"{session.outcome}: {session.reason}"
    return Implemented(message, "failed", reason, session)


def implementer_session(h: Hypothesis, target: Target, space: DesignSpace, ws: Path, scratch: Path, parent: str, settings: RoleSettings,
                        transport: Transport, eval_id: str, transcript_path: Path | None = None,
                        say: Callable[[str], None] = lambda s: None) -> SessionResult:
    """Runs one Implementer session on the candidate tree in `ws` (changed in place)."""
    role = implementer_role(target, space, ws, scratch, say)
    return run_session(role, settings, transport, eval_id, task_text(h, target, parent), transcript_path, say)


def implementer_role(target: Target, space: DesignSpace, ws: Path, scratch: Path, say: Callable[[str], None]) -> Role:
    tools = (editor_tool(ConfinedRoot(ws)), *candidate_tools(target, space, ws, scratch, say), *skill_tools())
    return Role("implementer", system_prompt("implementer"), tools,
                submit_tool("Ends the session: the outcome and a summary of what you changed and measured.", OUTCOME_SCHEMA))


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


def _candidate(ws: Path):
    try:
        return load_candidate(ws)
    except BadInput as exc:
        raise ToolError(f"the candidate does not load: {exc}") from None


def candidate_tools(target: Target, space: DesignSpace, ws: Path, scratch: Path, say: Callable[[str], None]) -> list[Tool]:
    """run_check, run_bench and profile on the workspace's current tree."""
    runs = itertools.count(1)
    n_requests = min(SHORT_BENCH_REQUESTS, target.spec.benchmark.num_requests)

    def run_check(_: dict) -> str:
        spec = _candidate(ws)
        problems = space.validate(spec.design, spec.knobs, target.spec.hardware.device)
        if problems:
            return "INVALID candidate.toml (the search would reject it before running it): " + "; ".join(problems)
        verdict = check_candidate(target, spec, scratch / f"check-{next(runs)}", phases=("concurrent",), say=say)
        if verdict.passed:
            return (verdict.summary() if verdict.accuracy is not None else
                    f"PASS: {verdict.compared} sequences equal to the reference under concurrent load ({verdict.forgiven} cut at a near-tie)")
        if verdict.failure:
            return verdict.failure.describe()
        if verdict.accuracy is not None:  # labels and statistics only: no token leaves the checker
            return f"FAIL: under the target's tolerance contract: {verdict.accuracy.summary()}"
        m = verdict.mismatch
        assert m is not None
        # where, not what: the held-out prompts and the reference's tokens stay with the checker
        return f"FAIL: {m.phase}: held-out prompt #{m.prompt_index} differs from the reference at generated token {m.step} ({m.reason})"

    def run_bench(_: dict) -> str:
        out = bench_candidate(target, _candidate(ws), scratch / f"bench-{next(runs)}", num_requests=n_requests, say=say)
        if isinstance(out, CandidateFailure):
            return out.describe()
        return json.dumps(out.report.to_json() | {"accuracy": out.accuracy.summary()}, indent=1)

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
