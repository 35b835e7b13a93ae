"""The skills library: what we know about making serving faster, in the Agent Skills layout.

A skill is a folder `skills/<layer>/<name>/` holding `SKILL.md` (YAML front matter, then
Markdown) and, where useful, longer material in sub-folders (`references/`, ...):

    ---
    name: continuous-batching              # the folder's name
    description: One paragraph: what it does and when to use it.
    layer: serving                         # the parent folder: models | serving | hardware | workloads
    applies_to: {scheduler: continuous}    # design choices of its family's space it switches on ({} if none)
    families: [llama]                      # the model families it is about (optional; default: every family
                                           # whose space has its applies_to and knobs, search_spaces/<family>.toml)
    when: {min_concurrency: 2}             # target conditions (optional)
    keywords: [batching, scheduler]
    prior: 2.0                             # weight the offline implementer gives a matching move
    knobs: {max_num_seqs: 32}              # knob settings to try together once the design has it (optional;
                                           # "cores" = the target's CPU cores): the finalist's tuning pass tries them first
    ---

The offline implementer and the backlog policy score design changes by the priors of
the skills that apply; LLM agents find skills with `search_skills` and open them with
`read_skill` rather than having the library pasted into their prompts.
"""

from __future__ import annotations

import difflib
import json
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from vibeserve_ray.design_space import DesignSpace
from vibeserve_ray.errors import BadInput
from vibeserve_ray.target import Target

SKILLS_DIR = Path(__file__).resolve().parent.parent / "skills"
LAYERS = ("models", "serving", "hardware", "workloads")
CONDITIONS = {"min_concurrency": int, "device": str, "shared_prefix": bool, "predictions": bool, "response_format": bool}  # -> the value's type
# ours, then the optional fields of the Agent Skills specification (so a standard skill loads)
KEYS = {"name", "description", "layer", "applies_to", "families", "when", "keywords", "prior", "knobs",
        "license", "compatibility", "metadata", "allowed-tools"}
NAME = re.compile(r"[a-z0-9]+(-[a-z0-9]+)*")


@dataclass(frozen=True)
class Skill:
    name: str
    layer: str
    applies_to: dict[str, str]
    when: dict[str, object] = field(default_factory=dict)
    prior: float = 0.0
    text: str = ""  # the Markdown body
    description: str = ""
    keywords: tuple[str, ...] = ()
    path: Path | None = None  # its SKILL.md
    references: tuple[str, ...] = ()  # other files of its folder, relative to it
    knobs: dict[str, object] = field(default_factory=dict)  # settings to try together where applies_to holds ("cores": the target's)
    families: tuple[str, ...] = ()  # the model families it is about; () = every family whose space has its applies_to and knobs

    def applies(self, target: Target) -> bool:
        b, w = target.spec.benchmark, self.when
        if "min_concurrency" in w and b.concurrency < int(w["min_concurrency"]):  # type: ignore[arg-type]
            return False
        if "device" in w and target.spec.hardware.device != w["device"]:
            return False
        if w.get("shared_prefix") and not (b.synthetic and b.synthetic.shared_prefix_len > 0):
            return False
        if w.get("predictions") and not _dataset_carries(target, "prediction"):  # a dataset without them (JSON) has nothing to look up
            return False
        if w.get("response_format") and not _dataset_carries(target, "response_format"):
            return False
        return True

    def for_family(self, space: DesignSpace) -> bool:
        """Whether this skill is about engines of `space`'s family: one it names, or (none
        named) one whose space holds its applies_to options and its knobs."""
        if self.families:
            return space.family in self.families
        return all(o in getattr(space.choices.get(c), "options", ()) for c, o in self.applies_to.items()) and set(self.knobs) <= set(space.knobs)

    def matches(self, changes: dict[str, str]) -> bool:
        """True when a design change (or a whole design) has what this skill is about switched on."""
        return bool(self.applies_to) and all(changes.get(k) == v for k, v in self.applies_to.items())


def _dataset_carries(target: Target, key: str) -> bool:
    """Whether the target's benchmark requests carry `key` (its dataset's first row says)."""
    b = target.spec.benchmark
    if b.dataset is None:
        return False
    with open(target.path(b.dataset)) as f:
        return key in json.loads(f.readline() or "{}")


@dataclass(frozen=True)
class SkillHit:
    """One search result: enough for an agent to decide whether to read the skill."""

    name: str
    layer: str
    description: str
    score: float


class SkillError(LookupError):
    """An agent asked for a skill, file or layer that does not exist (its tool reports the message)."""


# --- loading -------------------------------------------------------------------------


def load_skills(root: Path = SKILLS_DIR, spaces: dict[str, DesignSpace] | None = None) -> list[Skill]:
    """Every skill under `root`, validated, strongest prior first (so the reasons a
    proposal or backlog task gives lead with the strongest); with `spaces` (each family's),
    `families` must name families of it and `applies_to` and `knobs` must name choices,
    options and knobs of the skill's families' spaces (of one of them, where it names none)."""
    root = Path(root)
    skills: dict[str, Skill] = {}
    for layer_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        if layer_dir.name not in LAYERS:
            raise BadInput(str(layer_dir), "layer", f"not a layer (one of {', '.join(LAYERS)})")
        for entry in sorted(layer_dir.iterdir()):
            if entry.is_file() and entry.name == "README.md":
                continue
            if not (entry / "SKILL.md").is_file():
                raise BadInput(str(entry), "layout", f"a skill is a folder {layer_dir.name}/<name>/ holding SKILL.md")
            skill = _parse(entry / "SKILL.md", layer_dir.name, spaces)
            if skill.name in skills:
                raise BadInput(str(skill.path), "name", f"also the name of {skills[skill.name].path}")
            skills[skill.name] = skill
    return sorted(skills.values(), key=lambda s: (-s.prior, s.layer, s.name))


def applicable(target: Target, space: DesignSpace) -> list[Skill]:
    """The library's skills about `space`'s family (the one serving the target's model)
    whose conditions the target meets, strongest prior first."""
    return [s for s in load_skills() if s.applies(target) and s.for_family(space)]


def _parse(path: Path, layer: str, spaces: dict[str, DesignSpace] | None) -> Skill:
    file = str(path)
    text = path.read_text()
    if not text.startswith("---\n") or "\n---\n" not in text[4:]:
        raise BadInput(file, "front matter", "SKILL.md starts with a '---' YAML block closed by '---'")
    head, body = text[4:].split("\n---\n", 1)
    try:
        meta = yaml.safe_load(head) or {}
    except yaml.YAMLError as exc:
        raise BadInput(file, "front matter", f"not valid YAML: {' '.join(str(exc).split())}") from None
    if not isinstance(meta, dict):
        raise BadInput(file, "front matter", "must be a mapping of fields")
    if unknown := sorted(set(meta) - KEYS):
        raise BadInput(file, unknown[0], f"unknown field (known: {', '.join(sorted(KEYS))})")
    name, folder = meta.get("name"), path.parent.name
    if not isinstance(name, str) or not NAME.fullmatch(name) or len(name) > 64:
        raise BadInput(file, "name", "required: lowercase letters, digits and single hyphens, at most 64 characters")
    if name != folder:
        raise BadInput(file, "name", f"{name!r} differs from its folder {folder!r}")
    description = meta.get("description")
    if not isinstance(description, str) or not description.strip() or len(description) > 1024:
        raise BadInput(file, "description", "required: what the skill does and when to use it, at most 1024 characters")
    if meta.get("layer") != layer:
        raise BadInput(file, "layer", f"must be {layer!r}, the folder it sits in")
    families = _families(file, meta.get("families"), spaces)
    # the spaces its applies_to and knobs must fit: its families' (all of them), or any one family's
    candidates = [spaces[f] for f in families] if spaces and families else list((spaces or {}).values())
    applies_to = _fitting(candidates, bool(families), lambda space: _applies_to(file, meta.get("applies_to"), space))
    when = meta.get("when") or {}
    if not isinstance(when, dict):
        raise BadInput(file, "when", f"a mapping of conditions ({', '.join(CONDITIONS)})")
    if bad := sorted(set(when) - set(CONDITIONS)):
        raise BadInput(file, f"when.{bad[0]}", f"unknown condition (one of {', '.join(CONDITIONS)})")
    for key, value in when.items():
        if type(value) is not CONDITIONS[key] or (key == "device" and value not in ("cpu", "cuda")):
            raise BadInput(file, f"when.{key}", f"{value!r} is not a {'device (cpu or cuda)' if key == 'device' else CONDITIONS[key].__name__}")
    keywords = meta.get("keywords") or []
    if not isinstance(keywords, list) or not all(isinstance(k, str) for k in keywords):
        raise BadInput(file, "keywords", "a list of strings")
    prior = meta.get("prior", 0.0)
    if applies_to and "prior" not in meta:
        raise BadInput(file, "prior", "required when applies_to names a design choice")
    if isinstance(prior, bool) or not isinstance(prior, (int, float)) or prior < 0:
        raise BadInput(file, "prior", "a number >= 0")
    references = tuple(sorted(str(p.relative_to(path.parent)) for p in path.parent.rglob("*") if p.is_file() and p != path))
    return Skill(name=name, layer=layer, applies_to=applies_to, when=dict(when), prior=float(prior), text=body.strip(),
                 description=" ".join(description.split()), keywords=tuple(keywords), path=path, references=references,
                 knobs=_fitting(candidates, bool(families), lambda space: _knobs(file, meta.get("knobs"), space)), families=families)


def _families(file: str, raw: object, spaces: dict[str, DesignSpace] | None) -> tuple[str, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list) or not raw or not all(isinstance(f, str) for f in raw):
        raise BadInput(file, "families", "a non-empty list of model family names")
    if spaces is not None and (unknown := [f for f in raw if f not in spaces]):
        raise BadInput(file, "families", f"no family {unknown[0]!r} (one of {', '.join(spaces)})")
    return tuple(raw)


def _fitting(spaces: list[DesignSpace], every: bool, check: Callable[[DesignSpace | None], dict[str, Any]]) -> dict[str, Any]:
    """`check(space)`'s result where it passes in every space (`every`) or in one of them
    (the first error otherwise); `check(None)` (shape alone) without spaces."""
    if not spaces:
        return check(None)
    if every:
        return [check(space) for space in spaces][-1]
    errors = []
    for space in spaces:
        try:
            return check(space)
        except BadInput as exc:
            errors.append(exc)
    raise errors[0]


def _knobs(file: str, raw: object, space: DesignSpace | None) -> dict[str, object]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise BadInput(file, "knobs", "a mapping {knob: value} (\"cores\": the target's CPU cores)")
    for knob, value in raw.items():
        if space is None:
            continue
        if knob not in space.knobs:
            raise BadInput(file, f"knobs.{knob}", f"no such knob in {space.path.name} (one of {', '.join(space.knobs)})")
        if value != "cores" and (why := space.knobs[knob].check(value)):
            raise BadInput(file, f"knobs.{knob}", f"{value!r} {why}")
    return {str(k): v for k, v in raw.items()}


def _applies_to(file: str, raw: object, space: DesignSpace | None) -> dict[str, str]:
    if raw is None or raw == "none":
        return {}
    if not isinstance(raw, dict):
        raise BadInput(file, "applies_to", "a mapping {choice: option} (or {} / none)")
    for choice, option in raw.items():
        where = f"applies_to.{choice}"
        if not isinstance(option, str):  # YAML reads a bare on/off as a boolean
            raise BadInput(file, where, f"the option must be a string, got {option!r} (quote it)")
        if space is not None:
            if choice not in space.choices:
                raise BadInput(file, where, f"no such design choice in {space.path.name} (one of {', '.join(space.choices)})")
            if option not in space.choices[choice].options:
                raise BadInput(file, where, f"{option!r} is not an option (one of {', '.join(space.choices[choice].options)})")
    return {str(k): v for k, v in raw.items()}


# --- what agents call ----------------------------------------------------------------

FIELD_WEIGHTS = {"name": 3, "keywords": 3, "description": 2, "text": 1}
STOPWORDS = frozenset("a an and are as at be by do for from how i in is it of on or the this to what when with".split())


def _terms(text: str) -> list[str]:
    """Lower-case words with a crude suffix strip, so 'caching', 'caches' and 'cache' meet."""
    out = []
    for w in re.findall(r"[a-z0-9]+", text.lower()):
        if w in STOPWORDS:
            continue
        for suffix in ("ing", "ed", "es", "s"):
            if len(w) > len(suffix) + 2 and w.endswith(suffix):
                w = w[:-len(suffix)]
                break
        out.append(w[:-1] if len(w) > 3 and w.endswith("e") else w)
    return out


def _names(query: list[str], phrase: list[str]) -> bool:
    """True when the query's words appear in `phrase` in a row ('prefix cache' in 'prefix caching')."""
    n = len(query)
    return any(phrase[i:i + n] == query for i in range(len(phrase) - n + 1))


def search_skills(query: str, layer: str | None = None, limit: int = 5, root: Path = SKILLS_DIR) -> list[SkillHit]:
    """Skills ranked by BM25 over name, keywords, description and body (weighted in that
    order), doubled where the query's words run together in the skill's name or one of
    its keywords; ties by name, so the same query always gives the same list."""
    if layer is not None and layer not in LAYERS:
        raise SkillError(f"no layer {layer!r} (one of {', '.join(LAYERS)})")
    skills = [s for s in load_skills(root) if layer is None or s.layer == layer]
    docs = []
    for s in skills:
        fields = {"name": s.name, "keywords": " ".join(s.keywords), "description": s.description, "text": s.text}
        tf: Counter[str] = Counter()
        for f, content in fields.items():
            for term in _terms(content):
                tf[term] += FIELD_WEIGHTS[f]
        docs.append(tf)
    query_words = _terms(query)
    query_terms = sorted(set(query_words))
    if not docs or not query_terms:
        return []
    k1, b = 1.2, 0.75
    avg_len = sum(sum(tf.values()) for tf in docs) / len(docs)
    hits = []
    for s, tf in zip(skills, docs):
        length, score = sum(tf.values()), 0.0
        for term in query_terms:
            if tf[term]:
                n = sum(1 for d in docs if d[term])
                idf = math.log(1 + (len(docs) - n + 0.5) / (n + 0.5))
                score += idf * tf[term] * (k1 + 1) / (tf[term] + k1 * (1 - b + b * length / avg_len))
        if any(_names(query_words, _terms(phrase)) for phrase in (s.name, *s.keywords)):
            score *= 2
        if score > 0:
            hits.append(SkillHit(s.name, s.layer, s.description, round(score, 4)))
    return sorted(hits, key=lambda h: (-h.score, h.name))[:max(limit, 0)]


def read_skill(name: str, root: Path = SKILLS_DIR) -> str:
    """A skill's SKILL.md with the list of its other files; 'NAME/PATH' reads one of those."""
    skill_name, _, rel = name.strip().strip("/").partition("/")
    skills = {s.name: s for s in load_skills(root)}
    if skill_name not in skills:
        close = difflib.get_close_matches(skill_name, list(skills), n=3)
        raise SkillError(f"no skill named {skill_name!r}" + (f" (did you mean {', '.join(close)}?)" if close else "; search_skills finds them"))
    skill = skills[skill_name]
    folder = skill.path.parent
    if rel:
        if rel not in skill.references:  # only the listed files: never a path outside the skill
            raise SkillError(f"skill {skill_name!r} has no file {rel!r} (it has: {', '.join(skill.references) or 'none'})")
        return (folder / rel).read_text()
    text = skill.path.read_text()
    if skill.references:
        text += "\n\nFiles of this skill (read one with read_skill('" + skill_name + "/PATH')):\n"
        text += "\n".join(f"- {r}" for r in skill.references) + "\n"
    return text
