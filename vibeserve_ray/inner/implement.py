"""The Implementer: turns a proposal into a candidate tree in the inner loop's workspace."""

from __future__ import annotations

from pathlib import Path

from vibeserve_ray.candidate import load_candidate, write_candidate_toml
from vibeserve_ray.search.propose import Proposal


def apply_design(proposal: Proposal, candidate_dir: Path) -> str:
    """The offline implementer: the seed engine implements every option of the design
    space, so a design change is a rewrite of `[design]`. Returns the commit message."""
    spec = load_candidate(candidate_dir)
    write_candidate_toml(candidate_dir, spec.entrypoint, proposal.design, spec.knobs)
    return f"offline: {proposal.rationale}"
