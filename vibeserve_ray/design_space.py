"""The design space (`search_spaces/*.toml`): what a candidate may choose and tune.

Design choices are named options the engine template implements; knobs are numbers
(or categories) Optuna tunes. Constraints say which options need which others
(`requires`), which only run on some devices (`devices`), which compute below float32
(`precision`: a target's accuracy contract admits them or not, `DesignSpace.under`),
and which knobs matter for which options (`applies_when`). The search moves through this space; `vibeserve
candidate new` writes any point of it as a candidate directory.

This is the search's view of the one file the engine reads too: each family's space
ships inside the engine template (`vibeserve_ray/engine/models/<family>.toml`, linked
from `search_spaces/`), so every candidate carries the space its code implements. Here
the file's shape is checked with messages naming the field, and the knobs' ranges are
read for tuning; the choices and the rule that checks a design against them are the
engine's own (`vibeserve_ray/engine/space.py`, which imports no torch).
"""

from __future__ import annotations

import itertools
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from vibeserve_ray.engine.space import PRECISIONS, Choice, admits, design_problems, space_path
from vibeserve_ray.errors import BadInput
from vibeserve_ray.seed import materialise_seed

Design = dict[str, str]


@dataclass(frozen=True)
class KnobSpec:
    name: str
    kind: str  # "int" | "float" | "categorical"
    default: Any
    low: float | None = None
    high: float | None = None
    choices: tuple[Any, ...] = ()
    log: bool = False
    tune: bool = True
    per_core: bool = False  # tuned no higher than the CPU cores the target holds (threads past them only oversubscribe)
    doc: str = ""
    applies_when: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def applies(self, design: Design) -> bool:
        return all(design.get(c) in opts for c, opts in self.applies_when.items())

    def upper(self, cores: int) -> float:
        """The highest value worth trying on `cores` CPU cores (a per-core knob stops at them)."""
        return max(self.low, min(self.high, cores)) if self.per_core and cores >= 1 else self.high

    def check(self, value: Any) -> str | None:
        """Why `value` is not a valid setting, or None."""
        if self.kind == "categorical":
            return None if value in self.choices else f"must be one of {list(self.choices)}"
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (self.kind == "int" and not isinstance(value, int)):
            return f"must be {'an integer' if self.kind == 'int' else 'a number'}"
        return None if self.low <= value <= self.high else f"must be in [{self.low}, {self.high}]"

    def parse(self, text: str) -> Any:
        """A command-line value as this knob's type."""
        kinds = {"int": int, "float": float}
        if self.kind in kinds:
            return kinds[self.kind](text)
        for c in self.choices:
            if str(c) == text:
                return c
        return text


@dataclass(frozen=True)
class DesignSpace:
    path: Path
    family: str
    engine: str
    choices: dict[str, Choice]
    knobs: dict[str, KnobSpec]
    lowest: str | None = None  # the lowest precision the target's accuracy contract admits (None: every option)

    def under(self, lowest: str) -> DesignSpace:
        """The points a target whose accuracy contract admits down to `lowest` may take
        (the search never proposes the others; the inner loop rejects them)."""
        return replace(self, lowest=lowest)

    def defaults(self) -> tuple[Design, dict[str, Any]]:
        return {c.name: c.default for c in self.choices.values()}, {k.name: k.default for k in self.knobs.values()}

    def validate(self, design: Design, knobs: dict[str, Any], device: str) -> list[str]:
        """Every way this point breaks the space, as sentences naming the field; [] if valid."""
        problems = design_problems(self.choices, design, device, self.lowest)
        for name, value in knobs.items():
            if name not in self.knobs:
                problems.append(f"knobs.{name}: unknown knob (known: {', '.join(self.knobs)})")
            elif (why := self.knobs[name].check(value)) is not None:
                problems.append(f"knobs.{name} = {value!r}: {why}")
        return problems

    def is_valid(self, design: Design, device: str) -> bool:
        return not design_problems(self.choices, design, device, self.lowest)

    def active_knobs(self, design: Design) -> list[KnobSpec]:
        """The knobs worth tuning for this design."""
        return [k for k in self.knobs.values() if k.tune and k.applies(design)]

    def all_designs(self, device: str) -> list[Design]:
        names = list(self.choices)
        points = (dict(zip(names, opts)) for opts in itertools.product(*(self.choices[n].options for n in names)))
        return [d for d in points if self.is_valid(d, device)]

    def repair(self, design: Design, device: str) -> Design | None:
        """The nearest valid design: unmet requirements get their first allowed option,
        device-unsupported options and those below the admitted precision fall back to the
        default. None if that is not enough."""
        fixed = {**self.defaults()[0], **design}
        dev = _device_type(device)
        for _ in range(len(self.choices)):
            for name, choice in self.choices.items():
                option = fixed[name]
                refused = self.lowest is not None and not admits(self.lowest, choice.precision.get(option, PRECISIONS[0]))
                if refused or (option in choice.devices and dev not in choice.devices[option]):
                    fixed[name] = choice.default
                for other, allowed in choice.requires.get(fixed[name], {}).items():
                    if fixed[other] not in allowed:
                        fixed[other] = allowed[0]
        return fixed if self.is_valid(fixed, device) else None

    def neighbours(self, design: Design, device: str) -> list[Design]:
        """Valid designs one choice away, plus what that choice's new option requires."""
        base = {**self.defaults()[0], **design}
        out, seen = [], set()
        for name, choice in self.choices.items():
            for option in choice.options:
                if option == base[name]:
                    continue
                moved = {**base, name: option}
                unmet = {o: allowed for o, allowed in choice.requires.get(option, {}).items() if moved[o] not in allowed}
                variants = [moved] if not unmet else [
                    {**moved, **dict(zip(unmet, combo))} for combo in itertools.product(*unmet.values())
                ]
                for d in variants:
                    key = tuple(sorted(d.items()))
                    if key not in seen and self.is_valid(d, device):
                        seen.add(key)
                        out.append(d)
        return out

    def interacting(self) -> list[tuple[str, str]]:
        """Pairs of choices linked by a requirement or a knob condition."""
        pairs = set()
        for c in self.choices.values():
            for reqs in c.requires.values():
                pairs.update(tuple(sorted((c.name, other))) for other in reqs)
        for k in self.knobs.values():
            pairs.update(itertools.combinations(sorted(k.applies_when), 2))
        return sorted(pairs)


def covering_designs(space: DesignSpace, device: str) -> list[Design]:
    """A small set of valid designs holding every option of every choice at least once,
    and every valid pair of options of interacting choices (greedy set cover)."""
    designs = space.all_designs(device)
    wanted: set[tuple] = set()
    for d in designs:
        wanted.update((n, o) for n, o in d.items())
        wanted.update(((a, d[a]), (b, d[b])) for a, b in space.interacting())

    def covers(d: Design) -> set[tuple]:
        return {(n, o) for n, o in d.items()} | {((a, d[a]), (b, d[b])) for a, b in space.interacting()}

    chosen: list[Design] = []
    while wanted:
        best = max(designs, key=lambda d: (len(covers(d) & wanted), -sum(o != space.choices[n].default for n, o in d.items())))
        chosen.append(best)
        wanted -= covers(best)
    return chosen


def parse_assignments(items: list[str], file: str, section: str) -> dict[str, str]:
    """`k=v` command-line items (a list of lists from argparse is flattened)."""
    out = {}
    for item in items:
        if "=" not in item:
            raise BadInput(file, f"--{section} {item}", "expected name=value")
        k, v = item.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def materialise(space: DesignSpace, dest: Path, design: Design, knobs: dict[str, Any], device: str = "cpu", source: str = "command line") -> Path:
    """Writes a self-contained candidate for this point of the space (BadInput naming
    `source` and the field if the point is invalid)."""
    full_design, full_knobs = space.defaults()
    full_design.update(design)
    full_knobs.update(knobs)
    problems = space.validate(full_design, full_knobs, device)
    if problems:
        field_name = problems[0].split(" ")[0].split(":")[0]
        raise BadInput(source, field_name, problems[0][len(field_name):].lstrip(" :="))
    return materialise_seed(dest, full_design, full_knobs, family=space.family)


def default_space_path() -> Path:
    return space_path("llama")


def _device_type(device: str) -> str:
    return device.split(":")[0]


# --- loading -----------------------------------------------------------------------


def load_space(path: str | Path) -> DesignSpace:
    path = Path(path)
    file = str(path)
    if not path.is_file():
        raise BadInput(file, "search space", "file not found")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise BadInput(file, "search space", f"not valid TOML: {exc}") from None
    unknown = set(raw) - {"family", "engine", "choices", "knobs"}
    if unknown:
        raise BadInput(file, sorted(unknown)[0], "unknown key")
    for key in ("family", "engine"):
        if not isinstance(raw.get(key), str):
            raise BadInput(file, key, "missing or not a string")
    if not isinstance(raw.get("choices"), dict) or not raw["choices"]:
        raise BadInput(file, "choices", "missing: the space needs at least one design choice")
    choices = {name: _choice(file, name, spec) for name, spec in raw["choices"].items()}
    for c in choices.values():
        for option, reqs in c.requires.items():
            if option not in c.options:
                raise BadInput(file, f"choices.{c.name}.requires.{option}", f"{option!r} is not an option of {c.name}")
            for other, allowed in reqs.items():
                if other not in choices:
                    raise BadInput(file, f"choices.{c.name}.requires.{option}.{other}", "unknown choice")
                bad = [a for a in allowed if a not in choices[other].options]
                if bad:
                    raise BadInput(file, f"choices.{c.name}.requires.{option}.{other}", f"{bad[0]!r} is not an option of {other}")
        for option in c.devices:
            if option not in c.options:
                raise BadInput(file, f"choices.{c.name}.devices.{option}", f"{option!r} is not an option of {c.name}")
    if not isinstance(raw.get("knobs", {}), dict):
        raise BadInput(file, "knobs", "must be a table")
    knobs = {name: _knob(file, name, spec, choices) for name, spec in raw.get("knobs", {}).items()}
    return DesignSpace(path=path.resolve(), family=raw["family"], engine=raw["engine"], choices=choices, knobs=knobs)


def _choice(file: str, name: str, spec: Any) -> Choice:
    where = f"choices.{name}"
    if not isinstance(spec, dict):
        raise BadInput(file, where, "must be a table")
    unknown = set(spec) - {"options", "doc", "requires", "devices", "precision"}
    if unknown:
        raise BadInput(file, f"{where}.{sorted(unknown)[0]}", "unknown key")
    options = spec.get("options")
    if not isinstance(options, list) or not options or not all(isinstance(o, str) for o in options):
        raise BadInput(file, f"{where}.options", "must be a non-empty list of strings")
    if len(set(options)) != len(options):
        raise BadInput(file, f"{where}.options", "has duplicates")

    def table_of_lists(key: str, value: Any, depth: int) -> dict:
        if not isinstance(value, dict):
            raise BadInput(file, f"{where}.{key}", "must be a table")
        if depth == 1:
            for k, v in value.items():
                if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
                    raise BadInput(file, f"{where}.{key}.{k}", "must be a list of strings")
            return {k: tuple(v) for k, v in value.items()}
        return {k: table_of_lists(f"{key}.{k}", v, 1) for k, v in value.items()}

    precision = spec.get("precision", {})
    if not isinstance(precision, dict):
        raise BadInput(file, f"{where}.precision", "must be a table")
    for option, value in precision.items():
        if option not in options:
            raise BadInput(file, f"{where}.precision.{option}", f"{option!r} is not an option of {name}")
        if value not in PRECISIONS:
            raise BadInput(file, f"{where}.precision.{option}", f"must be one of {', '.join(PRECISIONS)}")
    return Choice(name=name, options=tuple(options), doc=str(spec.get("doc", "")),
                  requires=table_of_lists("requires", spec.get("requires", {}), 2), devices=table_of_lists("devices", spec.get("devices", {}), 1),
                  precision=dict(precision))


def _knob(file: str, name: str, spec: Any, choices: dict[str, Choice]) -> KnobSpec:
    where = f"knobs.{name}"
    if not isinstance(spec, dict):
        raise BadInput(file, where, "must be a table")
    unknown = set(spec) - {"type", "low", "high", "choices", "default", "log", "tune", "per_core", "doc", "applies_when"}
    if unknown:
        raise BadInput(file, f"{where}.{sorted(unknown)[0]}", "unknown key")
    kind = spec.get("type")
    if kind not in ("int", "float", "categorical"):
        raise BadInput(file, f"{where}.type", "must be 'int', 'float' or 'categorical'")
    if "default" not in spec:
        raise BadInput(file, f"{where}.default", "missing")
    for key in ("log", "tune", "per_core"):
        if not isinstance(spec.get(key, False), bool):
            raise BadInput(file, f"{where}.{key}", "must be true or false")
    if spec.get("per_core") and kind != "int":
        raise BadInput(file, f"{where}.per_core", "only an int knob can be bounded by the cores")
    applies = spec.get("applies_when", {})
    if not isinstance(applies, dict):
        raise BadInput(file, f"{where}.applies_when", "must be a table")
    for c, opts in applies.items():
        if c not in choices:
            raise BadInput(file, f"{where}.applies_when.{c}", "unknown choice")
        if not isinstance(opts, list) or any(o not in choices[c].options for o in opts):
            raise BadInput(file, f"{where}.applies_when.{c}", f"must list options of {c}")
    common = dict(name=name, kind=kind, default=spec["default"], log=bool(spec.get("log", False)), tune=bool(spec.get("tune", True)),
                  per_core=bool(spec.get("per_core", False)), doc=str(spec.get("doc", "")), applies_when={c: tuple(o) for c, o in applies.items()})
    if kind == "categorical":
        options = spec.get("choices")
        if not isinstance(options, list) or not options:
            raise BadInput(file, f"{where}.choices", "must be a non-empty list")
        knob = KnobSpec(**common, choices=tuple(options))
    else:
        num = int if kind == "int" else (int, float)
        for key in ("low", "high"):
            if isinstance(spec.get(key), bool) or not isinstance(spec.get(key), num):
                raise BadInput(file, f"{where}.{key}", f"missing or not {'an integer' if kind == 'int' else 'a number'}")
        if spec["low"] > spec["high"]:
            raise BadInput(file, f"{where}.low", "is greater than high")
        if common["log"] and spec["low"] <= 0 and common["tune"]:
            raise BadInput(file, f"{where}.log", "a log scale needs low > 0")
        knob = KnobSpec(**common, low=spec["low"], high=spec["high"])
    if (why := knob.check(knob.default)) is not None:
        raise BadInput(file, f"{where}.default", why)
    return knob
