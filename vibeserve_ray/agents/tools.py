"""Tools an agent may call: a name, a JSON schema for its input, and a function.

A tool's output is text (cut to its head and tail past a limit, so one long log cannot
fill the context); a tool that cannot do what was asked raises `ToolError`, which the
session returns as an error `tool_result`. The terminal tool `submit` has the role's
result as its input schema: a structured result, never a regex over prose.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import jsonschema

OUTPUT_LIMIT = 12_000  # characters of one tool result (~3k tokens)
SUBMIT = "submit"


class ToolError(Exception):
    """The call was well-formed but could not be done; the message goes back to the agent."""


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    input_schema: dict[str, Any]
    run: Callable[[dict[str, Any]], str]
    api_type: str = ""  # set for Anthropic-defined tools (the text editor): sent as {type, name}
    extra: dict[str, Any] = field(default_factory=dict)  # more fields of an Anthropic-defined tool

    def api(self) -> dict[str, Any]:
        """How the tool is declared in a request."""
        if self.api_type:
            return {"type": self.api_type, "name": self.name, **self.extra}
        return {"name": self.name, "description": self.description, "input_schema": self.input_schema}

    def problem(self, tool_input: Any) -> str:
        """'' when the input fits the schema, else what is wrong (a malformed call)."""
        try:
            jsonschema.validate(tool_input, self.input_schema)
        except jsonschema.ValidationError as exc:
            where = "/".join(str(p) for p in exc.absolute_path)
            return f"input{'.' + where if where else ''}: {exc.message}"
        return ""


def submit_tool(description: str, result_schema: dict[str, Any]) -> Tool:
    """The terminal tool: its input is the role's result; the session ends on it."""

    def not_run(_: dict) -> str:  # the session intercepts submit; reaching here is a bug
        raise AssertionError("submit is handled by the session")

    return Tool(SUBMIT, description, result_schema, not_run)


def cut(text: str, limit: int = OUTPUT_LIMIT) -> str:
    """`text`, or its head and tail with a marker saying how much was left out."""
    if len(text) <= limit:
        return text
    head = limit * 2 // 3
    tail = limit - head
    return f"{text[:head]}\n[... {len(text) - head - tail} characters cut ...]\n{text[-tail:]}"


def schema(properties: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    """A closed object schema: the properties given, `required` of them (default all)."""
    return {"type": "object", "properties": properties, "required": list(properties) if required is None else required,
            "additionalProperties": False}
