"""Proposing the next candidates: the outer loop's choice of what to try, with no LLM.

The offline proposer plans like an agent would, from the same evidence: the evaluator's
hints on the parent (measured), the skills that apply to the target (prior knowledge),
and what has already been tried (never twice). Its moves are one design change away
from the parent (with the dependencies the space requires); the inner loop's
implementer then applies the change to the candidate tree. The random proposer is the
baseline a directed search must beat.
"""

from __future__ import annotations

import random

from vibeserve_ray.inner.hints import Hint
from vibeserve_ray.inner.task import Proposal, design_key
from vibeserve_ray.skills import Skill


def _changes(parent: dict[str, str], design: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in design.items() if parent.get(k) != v}


class OfflineProposer:
    """Directed: the untried neighbour of the parent that the hints and skills favour."""

    name = "offline"

    def __init__(self, skills: list[Skill], seed: int = 0):
        self.skills = skills
        self.rng = random.Random(seed)

    def propose(self, parent_design: dict[str, str], hints: list[Hint], tried: set[str], neighbours: list[dict[str, str]]) -> Proposal | None:
        """The most promising untried neighbour of the parent, or None when all were tried."""
        scored = []
        for design in neighbours:
            if design_key(design) in tried:
                continue
            changes = _changes(parent_design, design)
            reasons, score = [], 0.0
            for hint in hints:
                if hint.suggest and any(changes.get(k) == v for k, v in hint.suggest.items()):
                    score += hint.weight
                    reasons.append(f"hint: {hint.text}")
            for skill in self.skills:
                if skill.matches(changes):
                    score += skill.prior
                    reasons.append(f"skill {skill.name}")
            # a small random tie-break keeps islands apart without drowning the evidence
            scored.append((score + self.rng.random() * 0.1, design, changes, reasons))
        if not scored:
            return None
        score, design, changes, reasons = max(scored, key=lambda s: s[0])
        change_text = ", ".join(f"{k}={v}" for k, v in sorted(changes.items()))
        return Proposal(design, changes, f"{change_text} ({'; '.join(reasons) or 'exploration'})")


class RandomProposer(OfflineProposer):
    """A uniformly random untried design of the whole space."""

    name = "random"

    def __init__(self, all_designs: list[dict[str, str]], seed: int = 0):
        super().__init__([], seed)
        self.all_designs = all_designs

    def propose(self, parent_design, hints, tried, neighbours):  # noqa: D102 - same contract
        options = [d for d in self.all_designs if design_key(d) not in tried]
        if not options:
            return None
        design = self.rng.choice(options)
        return Proposal(design, _changes(parent_design, design), "random sample of the space")
