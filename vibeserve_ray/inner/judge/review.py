"""The Accuracy Judge's LLM review: after the deterministic gates pass, an agent reads the
diff against the parent with read-only tools and checks it against a reward-hacking
checklist (the prompt). A "fail" rejects the candidate at gate `llm-judge`; so does a
review that ends without a verdict, since an unreviewed change is not a validated one.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from vibeserve_ray.agents.editor import ConfinedRoot, read_tools
from vibeserve_ray.agents.prompts import system_prompt
from vibeserve_ray.agents.session import Role, RoleSettings, SessionResult, run_session
from vibeserve_ray.agents.tools import cut, schema, submit_tool
from vibeserve_ray.agents.transport import Transport

REVIEW_GATE = "llm-judge"
DIFF_LIMIT = 60_000  # characters of diff in the first message; the rest is read with the tools
VERDICT_SCHEMA = schema({"verdict": {"enum": ["pass", "fail"]},
                         "reasons": {"type": "array", "items": {"type": "string", "minLength": 1}, "minItems": 1}})


@dataclass(frozen=True)
class Review:
    passed: bool
    reason: str  # the reasons, one line each
    session: SessionResult


def judge_role(ws: Path) -> Role:
    return Role("judge", system_prompt("judge"), tuple(read_tools(ConfinedRoot(ws))),
                submit_tool("Ends the review with the verdict and its reasons.", VERDICT_SCHEMA))


def review_diff(diff: str, summary: str, ws: Path, settings: RoleSettings, transport: Transport, eval_id: str,
                transcript_path: Path | None = None, say: Callable[[str], None] = lambda s: None) -> Review:
    """Reviews the candidate in `ws` (read only) given its diff against the parent."""
    task = (f"## What the Implementer says it did\n\n{summary or '(nothing)'}\n\n## The diff against the parent\n\n```diff\n"
            f"{cut(diff, DIFF_LIMIT) or '(no change)'}\n```\n\nThe candidate tree is at /candidate. Review it, then call submit.")
    session = run_session(judge_role(ws), settings, transport, eval_id, task, transcript_path, say)
    if not session.submitted or session.result is None:
        return Review(False, f"no verdict ({session.outcome}: {session.reason})", session)
    reasons = "; ".join(session.result["reasons"])
    return Review(session.result["verdict"] == "pass", reasons, session)


def tree_diff(parent: Path, candidate: Path) -> str:
    """`git diff` of two candidate trees, with paths relative to each (a/engine/x.py, b/engine/x.py)."""
    parent, candidate = Path(parent).resolve(), Path(candidate).resolve()
    root = Path(os.path.commonpath([parent, candidate]))
    a, b = parent.relative_to(root).as_posix(), candidate.relative_to(root).as_posix()
    out = subprocess.run(["git", "diff", "--no-index", "--no-color", "--", a, b], cwd=root, capture_output=True, text=True, check=False)
    if out.returncode not in (0, 1):  # 1: the trees differ
        raise RuntimeError(f"git diff failed: {out.stderr.strip()}")
    return out.stdout.replace(f" a/{a}/", " a/").replace(f" b/{b}/", " b/").replace(f"--- a/{a}/", "--- a/").replace(f"+++ b/{b}/", "+++ b/")
