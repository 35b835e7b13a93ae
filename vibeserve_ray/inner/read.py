"""The Performance Evaluator's reading of a measurement: after the benchmark and the knob
tuning, an agent reads the metrics (and, if it asks, a profile and the code) and writes
the hints the next round plans from. A `suggest` must name a design choice and option
the search space has (the schema says which), so hints stay usable by every policy.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from vibeserve_ray.agents.editor import ConfinedRoot, read_tools
from vibeserve_ray.agents.prompts import system_prompt
from vibeserve_ray.agents.session import Role, RoleSettings, SessionResult, run_session
from vibeserve_ray.agents.tools import Tool, schema, submit_tool
from vibeserve_ray.agents.transport import Transport
from vibeserve_ray.inner.hints import Hint


def hints_schema(choices: dict[str, tuple[str, ...]]) -> dict[str, Any]:
    suggest = {"type": "object", "properties": {c: {"enum": list(opts)} for c, opts in choices.items()}, "additionalProperties": False}
    hint = schema({"text": {"type": "string", "minLength": 1}, "suggest": suggest, "weight": {"type": "number", "minimum": 0, "maximum": 10}},
                  ["text"])
    return schema({"summary": {"type": "string", "minLength": 1}, "hints": {"type": "array", "items": hint, "minItems": 1, "maxItems": 8}})


@dataclass(frozen=True)
class Reading:
    hints: list[Hint]  # empty when the session ended without a result
    summary: str
    session: SessionResult


def evaluator_role(ws: Path, choices: dict[str, tuple[str, ...]], profile: Tool | None) -> Role:
    tools = (*read_tools(ConfinedRoot(ws)), *([profile] if profile else []))
    return Role("evaluator", system_prompt("evaluator"), tools, submit_tool("Ends the session with the hints for the next round.",
                                                                            hints_schema(choices)))


def read_measurement(measured: dict[str, Any], parent: dict[str, Any] | None, design: dict[str, str], choices: dict[str, tuple[str, ...]],
                     ws: Path, settings: RoleSettings, transport: Transport, eval_id: str, profile: Tool | None = None,
                     transcript_path: Path | None = None, say: Callable[[str], None] = lambda s: None) -> Reading:
    """One Evaluator session over a validated candidate's measurement."""
    options = "\n".join(f"- {c}: {', '.join(opts)} (this candidate: {design.get(c, '?')})" for c, opts in choices.items())
    task = (f"## Measured (best tuned trial)\n\n```json\n{json.dumps(measured, indent=1, sort_keys=True)}\n```\n\n"
            f"## The parent, as measured\n\n```json\n{json.dumps(parent, indent=1, sort_keys=True) if parent else '(none: this is the seed)'}\n```\n\n"
            f"## Design choices the engine reads from [design]\n\n{options}\n\nThe candidate tree is at /candidate. "
            "Write the hints, then call submit.")
    session = run_session(evaluator_role(ws, choices, profile), settings, transport, eval_id, task, transcript_path, say)
    if not session.submitted or session.result is None:
        return Reading([], "", session)
    hints = [Hint.from_dict({"weight": 1.0, **h}) for h in session.result["hints"]]
    return Reading(hints, session.result["summary"], session)
