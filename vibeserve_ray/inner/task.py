"""The inner loop's input: one candidate to make from its parent, and how.

The driver writes an `InnerTask` per candidate; it travels to whichever node runs the
inner loop, so everything in it is plain data (the parent's tree as tar bytes, the
gateway as an actor handle). A `Proposal` says what changes; with LLM agents it
carries the `Hypothesis` the Orchestrator wrote for the Implementer.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

from vibeserve_ray.agents.session import RoleSettings


@dataclass(frozen=True)
class Hypothesis:
    """What one Implementer session is asked to try, and why (a backlog entry of the Orchestrator's)."""

    what: str  # the change, concretely enough to implement in one session
    why: str  # the evidence
    expected_effect: str  # what should move, by about how much
    skills: tuple[str, ...] = ()  # skills the Implementer should read
    parent: str = ""  # commit to start from ("" = the best validated candidate)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Hypothesis":
        return cls(str(d["what"]), str(d.get("why", "")), str(d.get("expected_effect", "")), tuple(str(s) for s in d.get("skills", ())),
                   str(d.get("parent", "")))

    def brief(self) -> str:
        return self.what if len(self.what) <= 100 else self.what[:97] + "..."

    def markdown(self) -> str:
        skills = f"\n  - skills: {', '.join(self.skills)}" if self.skills else ""
        return f"{self.what}\n  - why: {self.why}\n  - expected: {self.expected_effect}{skills}"


@dataclass(frozen=True)
class Proposal:
    """What the next candidate changes relative to its parent, and why."""

    design: dict[str, str]
    changes: dict[str, str]
    rationale: str
    hypothesis: Hypothesis | None = None  # set when an LLM Implementer writes the change

    def key(self) -> str:
        return design_key(self.design)


def design_key(design: dict[str, str]) -> str:
    """A design's identity, as the search's sets of tried designs hold it."""
    return json.dumps(design, sort_keys=True)


@dataclass(frozen=True)
class AgentTask:
    """What one inner loop needs to run its agents."""

    gateway: Any  # the gateway actor's handle: calls go through it, the key stays there
    roles: dict[str, RoleSettings]
    parent: str  # the parent's figures in words, for the Implementer
    parent_metrics: dict[str, Any]  # for the Evaluator


@dataclass(frozen=True)
class InnerTask:
    """One candidate's inner loop, as the driver dispatches it."""

    eval_id: str
    island: int
    round: int
    parent: str  # commit the candidate starts from
    parent_tree: bytes
    proposal: Proposal | None  # None: evaluate the parent as it is (the seed)
    warm_knobs: dict[str, Any]
    target_path: str
    space_path: str
    n_trials: int
    implementer: str = "offline"
    agents: AgentTask | None = None  # the LLM agents' gateway and settings; None: offline
    tune: bool = False  # the finalist's tuning pass: the parent's code as judged, only its knobs moved
    deadline: float = float("inf")  # unix time: the evaluator starts no trial that would end later
