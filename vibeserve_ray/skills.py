"""The skills library: Markdown notes on how to make serving faster, by layer.

Each file in `skills/<layer>/` starts with YAML front matter:

    ---
    name: continuous-batching
    applies_to: {scheduler: continuous}      # the design choices this skill points at
    when: {min_concurrency: 2}                 # target conditions (optional)
    prior: 2.0                                 # how much the offline implementer trusts it
    ---
    Why and how, for agents and people.

The offline implementer ranks design changes by the skills that apply; LLM agents get
the relevant skills' text in their prompt.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from vibeserve_ray.errors import BadInput
from vibeserve_ray.target import Target

SKILLS_DIR = Path(__file__).resolve().parent.parent / "skills"
CONDITIONS = ("min_concurrency", "device", "shared_prefix", "predictions")


@dataclass(frozen=True)
class Skill:
    name: str
    layer: str
    applies_to: dict[str, str]
    when: dict[str, object] = field(default_factory=dict)
    prior: float = 1.0
    text: str = ""

    def applies(self, target: Target) -> bool:
        b, w = target.spec.benchmark, self.when
        if "min_concurrency" in w and b.concurrency < int(w["min_concurrency"]):  # type: ignore[arg-type]
            return False
        if "device" in w and target.spec.hardware.device != w["device"]:
            return False
        if w.get("shared_prefix") and not (b.synthetic and b.synthetic.shared_prefix_len > 0):
            return False
        if w.get("predictions") and b.dataset is None:
            return False
        return True

    def matches(self, changes: dict[str, str]) -> bool:
        """True when a design change switches on what this skill is about."""
        return bool(self.applies_to) and all(changes.get(k) == v for k, v in self.applies_to.items())


def load_skills(root: Path = SKILLS_DIR) -> list[Skill]:
    skills = []
    for path in sorted(Path(root).rglob("*.md")):
        if path.name == "README.md":
            continue
        text = path.read_text()
        if not text.startswith("---\n") or "\n---\n" not in text[4:]:
            raise BadInput(str(path), "front matter", "a skill starts with a '---' YAML block")
        head, body = text[4:].split("\n---\n", 1)
        try:
            meta = yaml.safe_load(head) or {}
        except yaml.YAMLError as exc:
            raise BadInput(str(path), "front matter", f"not valid YAML: {exc}") from None
        unknown = set(meta) - {"name", "applies_to", "when", "prior"}
        if unknown:
            raise BadInput(str(path), sorted(unknown)[0], "unknown key")
        bad_when = set(meta.get("when") or {}) - set(CONDITIONS)
        if bad_when:
            raise BadInput(str(path), f"when.{sorted(bad_when)[0]}", f"unknown condition (one of {', '.join(CONDITIONS)})")
        skills.append(Skill(
            name=str(meta.get("name", path.stem)),
            layer=path.parent.name,
            applies_to={str(k): str(v) for k, v in (meta.get("applies_to") or {}).items()},
            when=dict(meta.get("when") or {}),
            prior=float(meta.get("prior", 1.0)),
            text=body.strip(),
        ))
    return skills
