"""A session's whole transcript: messages, tool calls and results, usage per call.

Saved after every step (an atomic rewrite), so a session cut short still leaves what it
did; the driver commits it in the run repository beside the candidate it produced,
never inside the candidate tree. Sessions never see the key (the gateway holds it),
and anything shaped like a credential is masked before writing, in case a tool's
output carried one.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vibeserve_ray.agents.ledger import ApiUsage

SECRET_SHAPES = re.compile(r"sk-ant-[A-Za-z0-9_\-]{8,}|(?i:bearer)\s+[A-Za-z0-9_\-.=]{16,}")
MASK = "[redacted]"


def mask_secrets(text: str) -> str:
    return SECRET_SHAPES.sub(MASK, text)


@dataclass
class Transcript:
    role: str
    eval_id: str
    model: str
    system: str
    tools: list[str]
    path: Path | None = None  # where it is saved after every step (None: kept in memory)
    started_at: float = field(default_factory=time.time)
    ended_at: float | None = None  # set when the session ends; a transcript saved mid-session has none
    messages: list[dict] = field(default_factory=list)
    calls: list[dict] = field(default_factory=list)
    outcome: str = "running"
    reason: str = ""
    result: dict | None = None
    usage: ApiUsage = ApiUsage()

    def step(self, messages: list[dict], usage: ApiUsage | None, stop_reason: str) -> None:
        """After each API call and the tool results that answer it."""
        self.messages = messages
        if usage is not None:
            self.usage = self.usage + usage
        self.calls.append({"at": round(time.time() - self.started_at, 3), "stop_reason": stop_reason,
                           "usage": usage.to_dict() if usage else None})
        self.save()

    def end(self, outcome: str, reason: str = "", result: dict | None = None) -> None:
        self.outcome, self.reason, self.result, self.ended_at = outcome, reason, result, time.time()
        self.save()

    def to_dict(self) -> dict[str, Any]:
        return {"role": self.role, "eval_id": self.eval_id, "model": self.model, "started_at": self.started_at,
                "ended_at": self.ended_at, "outcome": self.outcome, "reason": self.reason, "result": self.result,
                "usage": self.usage.to_dict(), "tools": self.tools, "system": self.system, "calls": self.calls, "messages": self.messages}

    def to_json(self) -> str:
        return mask_secrets(json.dumps(self.to_dict(), indent=1, ensure_ascii=False))

    def save(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(self.to_json())
        tmp.replace(self.path)
