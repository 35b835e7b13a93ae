"""The Orchestrator: once per round, an agent reads the search's memory, backlog, results
and hints, and writes the round's hypotheses and a new MEMORY.md.

The plateau rule is enforced, not only asked for: when the best of the last rounds
stayed within a few percent, a plan that neither pivots nor says why not in `plateau`
is refused and the agent asked again.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

from vibeserve_ray.agents.gateway import Transport
from vibeserve_ray.agents.hypothesis import Hypothesis
from vibeserve_ray.agents.prompts import system_prompt
from vibeserve_ray.agents.session import Role, RoleSettings, SessionResult, run_session
from vibeserve_ray.agents.skill_tools import skill_tools
from vibeserve_ray.agents.tools import schema, submit_tool

PLATEAU_ROUNDS = 3  # as VibeServe: three rounds within 5% force a pivot
PLATEAU_WITHIN = 0.05


def plateaued(best_by_round: list[float], rounds: int = PLATEAU_ROUNDS, within: float = PLATEAU_WITHIN) -> bool:
    """True when the running best speed-up over the last `rounds` rounds grew by less than `within`."""
    running, best = [], -math.inf
    for v in best_by_round:
        best = max(best, v) if not math.isnan(v) else best
        running.append(best)
    if len(running) < rounds or running[-rounds] <= 0 or math.isinf(running[-rounds]):
        return False
    return running[-1] / running[-rounds] < 1 + within


def result_schema(max_hypotheses: int) -> dict:
    hypothesis = schema({"what": {"type": "string", "minLength": 1}, "why": {"type": "string", "minLength": 1},
                         "expected_effect": {"type": "string", "minLength": 1}, "skills": {"type": "array", "items": {"type": "string"}},
                         "parent": {"type": "string"}}, ["what", "why", "expected_effect"])
    return schema({"hypotheses": {"type": "array", "items": hypothesis, "minItems": 1, "maxItems": max_hypotheses},
                   "memory": {"type": "string", "minLength": 1}, "plateau": {"type": "string"}}, ["hypotheses", "memory"])


@dataclass(frozen=True)
class Plan:
    hypotheses: list[Hypothesis]  # parents resolved to full commits
    memory: str
    plateau: str
    session: SessionResult


def _resolve(parent: str, commits: list[str]) -> str | None:
    if not parent:
        return ""
    found = [c for c in commits if c.startswith(parent.strip())]
    return found[0] if len(found) == 1 else None


def plan_round(rnd: int, want: int, memory: str, backlog: str, results: str, hints: str, plateau: bool, parents: list[str],
               settings: RoleSettings, transport: Transport, say: Callable[[str], None] = lambda s: None) -> Plan:
    """Asks for up to `want` hypotheses; each `parent` must be one of `parents` (validated commits)."""

    def check(result: dict) -> str:
        bad = [h["parent"] for h in result["hypotheses"] if _resolve(h.get("parent", ""), parents) is None]
        if bad:
            return f"unknown parent {bad[0]!r}: give a validated commit from the results table (or leave parent empty for the best)"
        if plateau and not result.get("plateau", "").strip():
            return "the search is on a plateau: pivot to another layer and say so in `plateau`, or say there why staying is right"
        return ""

    role = Role("orchestrator", system_prompt("orchestrator"), tuple(skill_tools()),
                submit_tool("Ends planning with the round's hypotheses and the new MEMORY.md.", result_schema(want)), check)
    note = (f"\n\n**The search is on a plateau**: the best of the last {PLATEAU_ROUNDS} rounds stayed within {PLATEAU_WITHIN:.0%}. "
            "Apply the plateau rule.") if plateau else ""
    task = (f"# Round {rnd}: write up to {want} hypotheses{note}\n\n## MEMORY.md\n\n{memory or '(empty)'}\n\n## Backlog\n\n{backlog or '(empty)'}\n\n"
            f"## Results\n\n{results}\n\n## Hints on the best candidates\n\n{hints or '(none yet)'}")
    session = run_session(role, settings, transport, f"round-{rnd}", task, None, say)
    if not session.submitted or session.result is None:
        return Plan([], "", "", session)
    r = session.result
    hyps = [Hypothesis.from_dict({**h, "parent": _resolve(h.get("parent", ""), parents)}) for h in r["hypotheses"]]
    return Plan(hyps, r["memory"], r.get("plateau", ""), session)
