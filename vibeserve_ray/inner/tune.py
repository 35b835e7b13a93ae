"""The finalist's tuning pass: moves of its knobs, tried one at a time from the best so far.

A search candidate gets a couple of Optuna trials, and the first is its parent's knobs,
so a lineage carries its early knob draws down; TPE with so few trials samples at
random. The winner's knobs matter as much as its design here (the same design served
1.37x faster with 1 torch thread per engine worker than with 4 threads on 2 cores), so
the search ends with a pass over the winner's knobs alone: first the settings the
skills that apply recommend together (e.g. one engine worker per core with one thread
each), then each knob moved alone (doubled, halved, the other choices), every move
applied to the best knobs measured so far (a greedy local search; Optuna stores the
trials like any other). The pass measures the finalist's own knobs first: its moves are
compared with a baseline taken minutes apart at most, not with the evolution's figure
(a shared machine that slowed mid-search made every move look worse than a stale one).
"""

from __future__ import annotations

import math
from typing import Any

from vibeserve_ray.design_space import KnobSpec
from vibeserve_ray.skills import Skill
from vibeserve_ray.target import Objective

Move = dict[str, Any]  # knob -> value, applied over the best knobs so far


def knob_moves(design: dict[str, str], knobs: dict[str, Any], active: list[KnobSpec], cores: int, skills: list[Skill]) -> list[Move]:
    """The moves to try, skills' joint settings first, then one knob at a time (each
    knob's first move before any knob's second)."""
    moves = [m for skill in skills if skill.matches(design) and (m := _setting(skill, active, cores))]
    singles = [[{k.name: v} for v in _steps(k, knobs.get(k.name, k.default), cores)] for k in active]
    for depth in range(max((len(s) for s in singles), default=0)):
        moves += [s[depth] for s in singles if depth < len(s)]
    return [m for i, m in enumerate(moves) if m not in moves[:i]]


def skill_settings(changes: dict[str, str], active: list[KnobSpec], cores: int, skills: list[Skill]) -> Move:
    """The knobs that the skills behind a design change set with it (the engine-process
    skill's worker per core, one thread each): a process step loop measured at its
    default of one worker gains nothing, so the change is measured as the skill means it."""
    setting: Move = {}
    for skill in skills:
        if skill.matches(changes):
            setting.update(_setting(skill, active, cores))
    return setting


def _setting(skill: Skill, active: list[KnobSpec], cores: int) -> Move:
    """A skill's joint knob setting, over the active knobs, within their ranges."""
    names = {k.name: k for k in active}
    return {k: _clamp(names[k], cores if v == "cores" else v, cores) for k, v in skill.knobs.items() if k in names}


def _steps(k: KnobSpec, value: Any, cores: int) -> list[Any]:
    """One knob's moves from `value`: up then down for numbers, the other choices for a categorical."""
    if k.kind == "categorical":
        return [c for c in k.choices if c != value]
    if k.per_core:  # thread counts: one, or every core (0, torch's default, is every core too)
        return [v for v in (1, cores) if v != value and not (value == 0 and v == cores)]
    if k.kind == "int":
        up, down = int(value) * 2 if value else int(k.low) + 1, int(value) // 2
    else:
        up, down = (value * 2 if value else (k.low + k.high) / 2), value / 2
    return [v for v in dict.fromkeys(_clamp(k, x, cores) for x in (up, down)) if v != value]


def _clamp(k: KnobSpec, value: Any, cores: int) -> Any:
    if k.kind == "categorical":
        return value
    v = min(max(value, k.low), k.upper(cores))
    return int(v) if k.kind == "int" else float(v)


class Climb:
    """The tuning pass's greedy local search: `start` measured first, then each move applied
    to the best knobs measured so far (SLOs met first, then the headline)."""

    def __init__(self, start: dict[str, Any], objective: Objective, moves: list[Move], names: set[str]):
        self.best, self.key, self.objective, self.names = dict(start), (False, math.nan), objective, names
        self.moves = [{}, *moves]  # the empty move: start itself, the baseline
        self.tried: list[dict[str, Any]] = []

    def next_point(self, trials: list) -> dict[str, Any] | None:
        """The next move's knobs (the tuned ones), or None when the moves are spent."""
        last = trials[-1] if trials else None
        if last is not None and last.failure is None:
            key = (last.slo_passed, self.objective.score(last.value))
            if math.isnan(self.key[1]) or key > self.key:
                self.best, self.key = last.knobs, key
        while self.moves:
            point = self._tuned({**self.best, **self.moves.pop(0)})
            if point not in self.tried:
                self.tried.append(point)
                return point
        return None

    def _tuned(self, knobs: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in knobs.items() if k in self.names}
