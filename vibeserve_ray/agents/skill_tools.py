"""`search_skills` and `read_skill`: how agents find the skills library, a few at a time,
instead of having it pasted into their prompt."""

from __future__ import annotations

from vibeserve_ray.agents.tools import Tool, ToolError, schema
from vibeserve_ray.skills import LAYERS, SkillError, read_skill, search_skills


def _search(args: dict) -> str:
    try:
        hits = search_skills(args["query"], args.get("layer"), limit=args.get("limit", 5))
    except SkillError as exc:
        raise ToolError(str(exc)) from None
    return "\n".join(f"- {h.name} ({h.layer}): {h.description}" for h in hits) or "no skill matches; try other words"


def _read(args: dict) -> str:
    try:
        return read_skill(args["name"])
    except SkillError as exc:
        raise ToolError(str(exc)) from None


def skill_tools() -> list[Tool]:
    return [
        Tool("search_skills", "Searches the skills library (how to make serving faster in this engine: which files, which functions, what "
             "to measure) and lists the best matches with a one-line description.",
             schema({"query": {"type": "string", "minLength": 1}, "layer": {"enum": list(LAYERS)}, "limit": {"type": "integer", "minimum": 1,
                                                                                                               "maximum": 20}}, ["query"]),
             _search),
        Tool("read_skill", "Reads one skill by name (its SKILL.md and the list of its other files); 'NAME/PATH' reads one of those files.",
             schema({"name": {"type": "string", "minLength": 1}}), _read),
    ]
