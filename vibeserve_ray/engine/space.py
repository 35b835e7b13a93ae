"""A model family's design space as the engine reads it: `models/<family>.toml`.

That TOML is the one place the space is written: each design choice's options (the
first is the default) and the rules between them (`requires`: an option needs options of
other choices; `devices`: an option runs only on some device types; `precision`: an
option computes below float32, so only a target whose accuracy contract admits that
precision may use it), and each knob's default. It lives in this package, beside the
family's model code, because the package is copied whole into every candidate: a
candidate carries the space its own code implements, and an option is added by editing
that file and the code behind it, nothing else. The search reads the same file (`vibeserve_ray/design_space.py` adds the knobs'
ranges and checks the file's shape, and uses `design_problems` below, so the rules are
applied by one function); `search_spaces/<family>.toml` is a link to it.

Only the standard library here: the search and `vibeserve candidate new` import this
module, and importing the engine package must not load torch (`entrypoint.py`).
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MODELS_DIR = Path(__file__).resolve().parent / "models"
# The precisions an option may compute in, most precise first: a target's accuracy contract
# admits one of them and every one before it (float32 alone when it asks for bit-exact
# float32 outputs).
PRECISIONS = ("float32", "float16", "bfloat16", "int8")


@dataclass(frozen=True)
class Choice:
    name: str
    options: tuple[str, ...]
    doc: str = ""
    requires: dict[str, dict[str, tuple[str, ...]]] = field(default_factory=dict)  # option -> {choice: allowed}
    devices: dict[str, tuple[str, ...]] = field(default_factory=dict)  # option -> device types
    precision: dict[str, str] = field(default_factory=dict)  # option -> the PRECISIONS entry it computes in (absent: float32)

    @property
    def default(self) -> str:
        return self.options[0]


@dataclass(frozen=True)
class Space:
    family: str
    choices: dict[str, Choice]
    knob_defaults: dict[str, Any]

    def default_design(self) -> dict[str, str]:
        return {name: choice.default for name, choice in self.choices.items()}


def design_problems(choices: dict[str, Choice], design: dict[str, str], device: str, lowest: str | None = None) -> list[str]:
    """Every way `design` breaks the options and rules of `choices` on `device` (a type
    such as "cpu", or "cuda:0"), as sentences naming the choice; [] if none. A choice
    `design` omits takes its default. `lowest`: the lowest precision the target's
    accuracy contract admits (None: any; the engine itself serves every option)."""
    problems = []
    for name, option in design.items():
        if name not in choices:
            problems.append(f"design.{name}: unknown choice (known: {', '.join(choices)})")
        elif option not in choices[name].options:
            problems.append(f"design.{name} = {option!r}: expected one of {', '.join(choices[name].options)}")
    if problems:
        return problems
    full = {**{name: choice.default for name, choice in choices.items()}, **design}
    device_type = device.split(":")[0]
    for name, option in full.items():
        choice = choices[name]
        for other, allowed in choice.requires.get(option, {}).items():
            if full[other] not in allowed:
                problems.append(f"design.{name} = {option!r} requires {other} in [{', '.join(allowed)}], got {full[other]!r}")
        if option in choice.devices and device_type not in choice.devices[option]:
            problems.append(f"design.{name} = {option!r} runs only on {', '.join(choice.devices[option])}, not {device_type}")
    if lowest is not None:
        problems += [f"design.{name} = {option!r} computes in {p}, below the {lowest} the target's accuracy contract admits"
                     for name, option, p in below(choices, full, lowest)]
    return problems


def below(choices: dict[str, Choice], design: dict[str, str], lowest: str) -> list[tuple[str, str, str]]:
    """(choice, option, its precision) for each option of `design` computing below `lowest`."""
    return [(name, option, p) for name, option in design.items() if name in choices
            and not admits(lowest, p := choices[name].precision.get(option, PRECISIONS[0]))]


def admits(lowest: str, precision: str) -> bool:
    """Whether a contract admitting down to `lowest` admits an option computing in `precision`."""
    return PRECISIONS.index(precision) <= PRECISIONS.index(lowest)


def design_precision(choices: dict[str, Choice], design: dict[str, str]) -> str:
    """The lowest precision any option of `design` computes in (float32 when none is reduced)."""
    used = [choices[name].precision.get(option, PRECISIONS[0]) for name, option in design.items() if name in choices]
    return max(used, key=PRECISIONS.index, default=PRECISIONS[0])


def space_path(family: str) -> Path:
    return MODELS_DIR / f"{family}.toml"


def read_space(family: str) -> Space:
    """The family's space from this package's copy of its TOML (its shape is checked
    where people edit it: `vibeserve candidate new` and the search load it first)."""
    raw = tomllib.loads(space_path(family).read_text())
    choices = {
        name: Choice(name, tuple(spec["options"]), spec.get("doc", ""),
                     {option: {other: tuple(allowed) for other, allowed in needs.items()} for option, needs in spec.get("requires", {}).items()},
                     {option: tuple(kinds) for option, kinds in spec.get("devices", {}).items()}, dict(spec.get("precision", {})))
        for name, spec in raw["choices"].items()
    }
    return Space(raw["family"], choices, {name: spec["default"] for name, spec in raw.get("knobs", {}).items()})
