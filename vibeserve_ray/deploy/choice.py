"""What to deploy: a run's best validated candidate (or the commit asked for), or a
candidate directory with its target; and the knobs to serve it with."""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import git

from vibeserve_ray.candidate import load_candidate
from vibeserve_ray.deploy.config import CLI, Chosen
from vibeserve_ray.deploy.remeasure import served_knobs
from vibeserve_ray.design_space import parse_assignments, target_family
from vibeserve_ray.errors import BadInput
from vibeserve_ray.search.state import RunRepo
from vibeserve_ray.search.status import run_status
from vibeserve_ray.seed import resolve_candidate
from vibeserve_ray.target import load_target


def choose(run: str | None, commit: str | None, candidate: str | None, target: str | None) -> Chosen:
    """RUN's best validated candidate (or --commit), or --candidate with --target."""
    if run and candidate:
        raise BadInput(CLI, "--candidate", "give a run directory or --candidate, not both")
    if commit and not run:
        raise BadInput(CLI, "--commit", "needs a run directory")
    if candidate:
        if not target:
            raise BadInput(CLI, "--target", "required with --candidate")
        tgt = load_target(target)
        if candidate == "seed":
            with tempfile.TemporaryDirectory() as tmp:
                knobs = resolve_candidate("seed", Path(tmp), target_family(tgt)).knobs
            return Chosen("seed", knobs, tgt, "the seed engine")
        spec = load_candidate(candidate)
        return Chosen(str(spec.path), spec.knobs, tgt, str(spec.path))
    if not run:
        raise BadInput(CLI, "run", "give a run directory, or --candidate PATH --target PATH")
    return _from_run(Path(run), commit, target)


def _from_run(run: Path, commit: str | None, target: str | None) -> Chosen:
    status = run_status(run)
    if commit is None:
        if status["best"] is None:
            raise BadInput(str(run), "best", "no validated candidate in this run (pass --commit to deploy another)")
        commit = status["best"]["commit"]
    repo = RunRepo(run / "repo")
    try:
        sha = repo.repo.git.rev_parse("--verify", f"{commit}^{{commit}}")
    except git.GitCommandError:
        raise BadInput(str(run / "repo"), "--commit", f"{commit!r} is not a commit of this run") from None
    target = target or status.get("target")
    if not target:
        raise BadInput(str(run / "search.json"), "target", "not recorded; pass --target")
    tgt = load_target(target)
    # Exported once per commit and reused: a tree is immutable, and a running deployment reads it.
    dest = run.resolve() / "deploy" / sha
    if not (dest / "candidate.toml").is_file():
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{sha[:12]}-", dir=dest.parent))
        repo.export(sha, tmp)
        try:
            tmp.rename(dest)
        except OSError:  # another deploy exported it first
            shutil.rmtree(tmp, ignore_errors=True)
    spec = load_candidate(dest)
    verdict = next((e["verdict"] for e in status["leaderboard"] if e["commit"] == sha), "not evaluated")
    label = f"commit {sha[:12]} of {run}" + ("" if verdict == "validated" else f" (NOT validated: {verdict})")
    knobs = served_knobs(run, sha)  # what the search's re-measure found fastest through Serve
    if knobs is None:
        return Chosen(str(spec.path), spec.knobs, tgt, label)
    return Chosen(str(spec.path), knobs, tgt, label + (", knobs as re-measured through Ray Serve" if knobs != spec.knobs else ""))


def with_knobs(chosen: Chosen, items: list[str]) -> Chosen:
    """`chosen` with `NAME=VALUE` knob overrides, each parsed as the type of the value it
    replaces (a candidate's knobs are its own: no design space is needed)."""
    knobs = dict(chosen.knobs)
    for name, text in parse_assignments(items, CLI, "knobs").items():
        if name not in knobs:
            raise BadInput(CLI, f"--knobs {name}", f"unknown knob (the candidate has {', '.join(sorted(knobs))})")
        knobs[name] = _parse_like(knobs[name], text, name)
    return replace(chosen, knobs=knobs)


def _parse_like(current: Any, text: str, name: str) -> Any:
    try:
        if isinstance(current, bool):
            if text.lower() not in ("true", "false"):
                raise ValueError
            return text.lower() == "true"
        return type(current)(text)
    except ValueError:
        raise BadInput(CLI, f"--knobs {name}", f"{text!r} is not a valid {type(current).__name__}") from None
