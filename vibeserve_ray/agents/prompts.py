"""The roles' system prompts, kept as Markdown files beside this module so they read as prose."""

from __future__ import annotations

from functools import cache
from pathlib import Path

PROMPTS_DIR = Path(__file__).resolve().parent / "prompts"


@cache
def system_prompt(role: str) -> str:
    return (PROMPTS_DIR / f"{role}.md").read_text()
