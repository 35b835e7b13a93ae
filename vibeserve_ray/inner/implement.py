"""The Implementer: turns a proposal into a candidate tree in the inner loop's workspace.

Offline, a proposal is a design change the seed engine already implements; with agents,
it is a hypothesis an LLM Implementer writes code for in one session.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from vibeserve_ray.candidate import load_candidate, write_candidate_toml
from vibeserve_ray.search.propose import Proposal

if TYPE_CHECKING:  # loaded only where agents run: an offline inner loop starts without them
    from vibeserve_ray.agents.session import SessionResult
    from vibeserve_ray.agents.team import AgentTask
    from vibeserve_ray.design_space import DesignSpace
    from vibeserve_ray.target import Target


def apply_design(proposal: Proposal, candidate_dir: Path, knobs: dict[str, Any] | None = None) -> str:
    """The offline implementer: the seed engine implements every option of the design
    space, so a design change is a rewrite of `[design]` (and of the `knobs` that go with
    it). Returns the commit message."""
    spec = load_candidate(candidate_dir)
    moved = {k: v for k, v in (knobs or {}).items() if spec.knobs.get(k) != v}
    write_candidate_toml(candidate_dir, spec.entrypoint, proposal.design, {**spec.knobs, **moved})
    with_knobs = f"; knobs {', '.join(f'{k}={v}' for k, v in sorted(moved.items()))}" if moved else ""
    return f"offline: {proposal.rationale}{with_knobs}"


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
    from vibeserve_ray.agents.gateway import via_actor
    from vibeserve_ray.agents.implementer import implement

    h = proposal.hypothesis
    assert h is not None
    settings = agents.roles["implementer"]
    session = implement(h, target, space, candidate_dir, scratch, agents.parent, settings, via_actor(agents.gateway), eval_id, transcript, say)
    outcome = (session.result or {}).get("outcome", "")
    summary = (session.result or {}).get("summary", "")
    message = f"anthropic:{settings.model}: {h.brief()}\n\n{summary}".rstrip()
    if outcome == "implemented":
        return Implemented(message, "", summary, session)
    if outcome == "disproven":
        return Implemented(message, "rejected", f"disproven: {summary}", session)
    reason = f"blocked: {summary}" if outcome == "blocked" else f"{session.outcome}: {session.reason}"
    return Implemented(message, "failed", reason, session)
