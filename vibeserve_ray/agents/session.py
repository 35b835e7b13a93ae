"""One agent session: the tool-use loop over the Messages API, non-streaming.

    ask the model (through the gateway) -> run the tools it called -> answer with
    their results -> ... until it calls `submit`, or a limit ends it.

The tools + system prefix is stable for a role and carries a cache breakpoint, as do
the last two user turns, so a long session pays for its prefix once and each turn
reads the previous one from the cache (3 breakpoints; the API allows 4). A malformed
call (unknown tool, input not fitting the schema, no tool call at all) is answered
with an error result; three in a row end the session as failed. Limits: turns and
wall time, per role.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from vibeserve_ray.agents.ledger import ApiUsage
from vibeserve_ray.agents.tools import SUBMIT, Tool, ToolError, cut
from vibeserve_ray.agents.transcript import Transcript
from vibeserve_ray.agents.transport import Transport

CACHE = {"type": "ephemeral"}
MAX_MALFORMED = 3

SUBMITTED, FAILED, TURNS, TIME = "submitted", "failed", "turn limit", "time limit"


@dataclass(frozen=True)
class RoleSettings:
    """What one role may spend per session (from the target's [agent], or the command line)."""

    model: str
    max_tokens: int = 8192
    max_turns: int = 40
    time_limit_s: float = 900.0


@dataclass(frozen=True)
class Role:
    """A role's system prompt, its tools and its terminal `submit` tool."""

    name: str
    system: str
    tools: tuple[Tool, ...]
    submit: Tool
    check_result: Callable[[dict], str] = lambda result: ""  # '' or why the submitted result is refused


@dataclass(frozen=True)
class SessionResult:
    outcome: str  # submitted | failed | turn limit | time limit | budget spent | key refused | error
    result: dict[str, Any] | None
    reason: str
    usage: ApiUsage
    seconds: float
    transcript: Transcript

    @property
    def submitted(self) -> bool:
        return self.outcome == SUBMITTED


def run_session(role: Role, settings: RoleSettings, transport: Transport, eval_id: str, task: str,
                transcript_path: Path | None = None, say: Callable[[str], None] = lambda s: None) -> SessionResult:
    """Runs `role` on `task` until it submits or a limit ends it; never raises for what
    the model does."""
    tools = {t.name: t for t in (*role.tools, role.submit)}
    api_tools = [t.api() for t in tools.values()]
    messages: list[dict] = [{"role": "user", "content": [{"type": "text", "text": task}]}]
    transcript = Transcript(role.name, eval_id, settings.model, role.system, list(tools), transcript_path)
    started = time.monotonic()
    malformed = 0

    def end(outcome: str, reason: str = "", result: dict | None = None) -> SessionResult:
        transcript.end(outcome, reason, result)
        if outcome != SUBMITTED:
            say(f"{role.name}: session ended ({outcome}): {reason}")
        return SessionResult(outcome, result, reason, transcript.usage, time.monotonic() - started, transcript)

    for _ in range(settings.max_turns):
        if time.monotonic() - started > settings.time_limit_s:
            return end(TIME, f"no submit within {settings.time_limit_s:g}s")
        reply = transport(role.name, eval_id, request(settings, role.system, api_tools, messages))
        if reply.message is None:
            transcript.step(messages, None, reply.stop)
            return end(reply.stop, reply.reason)
        message = reply.message
        # the API refuses an assistant turn with no content in later requests
        messages.append({"role": "assistant", "content": message.get("content") or [{"type": "text", "text": "(no reply)"}]})
        uses = [b for b in message.get("content", []) if b.get("type") == "tool_use"]
        answers: list[dict] = []
        if not uses:
            malformed += 1
            cutoff = " (your reply was cut at max_tokens: do less per turn)" if message.get("stop_reason") == "max_tokens" else ""
            answers.append({"type": "text", "text": f"No tool was called{cutoff}. Call a tool; finish by calling `{SUBMIT}`."})
        for use in uses:
            tool = tools.get(use.get("name", ""))
            problem = f"unknown tool {use.get('name')!r} (tools: {', '.join(tools)})" if tool is None else tool.problem(use.get("input"))
            if problem:
                malformed += 1
                answers.append(_result(use, f"malformed call: {problem}", error=True))
                continue
            malformed = 0
            assert tool is not None
            if tool.name == SUBMIT:
                refused = role.check_result(use["input"])
                if not refused:
                    answers.append(_result(use, "submitted"))
                    messages.append({"role": "user", "content": answers})
                    transcript.step(messages, reply.usage, message.get("stop_reason", ""))
                    return end(SUBMITTED, result=use["input"])
                answers.append(_result(use, f"not accepted: {refused}", error=True))
                continue
            say(f"{role.name}: {tool.name} {_brief(use['input'])}")
            answers.append(_run(tool, use))
        messages.append({"role": "user", "content": answers})
        transcript.step(messages, reply.usage, message.get("stop_reason", ""))
        if malformed >= MAX_MALFORMED:
            return end(FAILED, f"{MAX_MALFORMED} malformed tool calls in a row")
    return end(TURNS, f"no submit within {settings.max_turns} turns")


def request(settings: RoleSettings, system: str, api_tools: list[dict], messages: list[dict]) -> dict[str, Any]:
    """The Messages API request, with cache breakpoints on the system prompt (caching
    tools + system) and on the last block of each of the last two user turns."""
    user_turns = [i for i, m in enumerate(messages) if m["role"] == "user"][-2:]
    marked = []
    for i, m in enumerate(messages):
        if i in user_turns and m["content"]:
            m = {"role": m["role"], "content": [*m["content"][:-1], {**m["content"][-1], "cache_control": CACHE}]}
        marked.append(m)
    return {"model": settings.model, "max_tokens": settings.max_tokens, "tools": api_tools,
            "system": [{"type": "text", "text": system, "cache_control": CACHE}], "messages": marked}


def _run(tool: Tool, use: dict) -> dict:
    try:
        return _result(use, cut(tool.run(use["input"])))
    except ToolError as exc:
        return _result(use, cut(str(exc)), error=True)
    except Exception as exc:  # noqa: BLE001 - a failing tool is the agent's information, not a crashed session
        return _result(use, cut(f"the tool failed: {type(exc).__name__}: {exc}"), error=True)


def _result(use: dict, text: str, error: bool = False) -> dict:
    out = {"type": "tool_result", "tool_use_id": use.get("id", ""), "content": text or "(no output)"}
    if error:
        out["is_error"] = True
    return out


def _brief(tool_input: Any) -> str:
    text = ", ".join(f"{k}={str(v)[:40]!s}" for k, v in tool_input.items()) if isinstance(tool_input, dict) else str(tool_input)
    return text[:120]
