"""The seed: the engine template every search starts from, written out as a candidate.

Above both the candidate contract and the engine package: it copies `engine/` (with its
family's design space inside) into a directory and writes the `candidate.toml` that
selects a point of that space. The contract (`candidate.py`) knows nothing of the
template, so the engine may import the contract without a circle.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from vibeserve_ray.candidate import CandidateSpec, load_candidate, write_candidate_toml
from vibeserve_ray.engine.space import read_space

SEED_ENGINE_DIR = Path(__file__).parent / "engine"
SEED_ENTRYPOINT = "engine:create_engine"


def materialise_seed(dest: str | Path, design: dict[str, str] | None = None, knobs: dict[str, Any] | None = None, family: str = "llama") -> Path:
    """Copies the seed engine template into `dest` as a self-contained candidate (its
    family's design space travels inside it), `design` and `knobs` over the space's defaults."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    target = dest / "engine"
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(SEED_ENGINE_DIR, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    space = read_space(family)
    write_candidate_toml(dest, SEED_ENTRYPOINT, {**space.default_design(), **(design or {})}, {**space.knob_defaults, **(knobs or {})})
    return dest


def resolve_candidate(arg: str, workdir: Path, family: str) -> CandidateSpec:
    """`seed` materialises the template, at `family`'s seed design, under `workdir`;
    anything else is a candidate's path (which carries its own design)."""
    if arg == "seed":
        return load_candidate(materialise_seed(workdir / "seed", family=family))
    return load_candidate(arg)
