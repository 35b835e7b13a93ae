"""A hypothesis: what one Implementer session is asked to try, and why.

The Orchestrator writes them each round (the backlog's entries); one travels with
each candidate's inner loop to its Implementer.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Hypothesis:
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
