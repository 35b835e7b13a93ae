"""The Orchestrator: once per round, an agent reads the search's memory, backlog, results
and hints, and writes the round's hypotheses and a new MEMORY.md; the outer loop's plan
step when LLM agents are on. Its plans and what became of them are kept on the run
repository's planning branch (BACKLOG.md), its transcripts on the transcripts branch.

The plateau rule is enforced, not only asked for: when the best of the last rounds
stayed within a few percent, a plan that neither pivots nor says why not in `plateau`
is refused and the agent asked again.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Callable

from vibeserve_ray.agents.prompts import system_prompt
from vibeserve_ray.agents.session import Role, RoleSettings, SessionResult, run_session
from vibeserve_ray.agents.skill_tools import skill_tools
from vibeserve_ray.agents.tools import schema, submit_tool
from vibeserve_ray.agents.transport import Transport
from vibeserve_ray.inner.task import Hypothesis
from vibeserve_ray.search.results import Evaluation
from vibeserve_ray.search.state import TRANSCRIPTS_BRANCH, RunRepo
from vibeserve_ray.target import Objective

PLATEAU_ROUNDS = 3  # as VibeServe: three rounds within 5% force a pivot
PLATEAU_WITHIN = 0.05
RESULTS_SHOWN = 40  # rows of the results table the Orchestrator reads (the best and the latest)
BACKLOG_HEAD = "# Backlog\n\nThe Orchestrator's hypotheses, round by round, and what became of them.\n"


def plateaued(best_by_round: list[float], rounds: int = PLATEAU_ROUNDS, within: float = PLATEAU_WITHIN) -> bool:
    """True when the running best speed-up over the last `rounds` rounds grew by less than `within`."""
    running, best = [], -math.inf
    for v in best_by_round:
        best = max(best, v) if not math.isnan(v) else best
        running.append(best)
    if len(running) < rounds or running[-rounds] <= 0 or math.isinf(running[-rounds]):
        return False
    return running[-1] / running[-rounds] < 1 + within


def plan_schema(max_hypotheses: int) -> dict:
    hypothesis = schema({"what": {"type": "string", "minLength": 1}, "why": {"type": "string", "minLength": 1},
                         "expected_effect": {"type": "string", "minLength": 1}, "skills": {"type": "array", "items": {"type": "string"}},
                         "parent": {"type": "string"}}, ["what", "why", "expected_effect"])
    return schema({"hypotheses": {"type": "array", "items": hypothesis, "minItems": 1, "maxItems": max_hypotheses},
                   "memory": {"type": "string", "minLength": 1}, "plateau": {"type": "string"}}, ["hypotheses", "memory"])


@dataclass(frozen=True)
class Plan:
    hypotheses: list[Hypothesis]  # parents resolved to full commits
    memory: str
    plateau: str
    session: SessionResult


def _resolve(parent: str, commits: list[str]) -> str | None:
    if not parent:
        return ""
    found = [c for c in commits if c.startswith(parent.strip())]
    return found[0] if len(found) == 1 else None


def plan_round(rnd: int, want: int, memory: str, backlog: str, results: str, hints: str, plateau: bool, parents: list[str],
               settings: RoleSettings, transport: Transport, say: Callable[[str], None] = lambda s: None) -> Plan:
    """Asks for up to `want` hypotheses; each `parent` must be one of `parents` (validated commits)."""

    def check(result: dict) -> str:
        bad = [h["parent"] for h in result["hypotheses"] if _resolve(h.get("parent", ""), parents) is None]
        if bad:
            return f"unknown parent {bad[0]!r}: give a validated commit from the results table (or leave parent empty for the best)"
        if plateau and not result.get("plateau", "").strip():
            return "the search is on a plateau: pivot to another layer and say so in `plateau`, or say there why staying is right"
        return ""

    role = Role("orchestrator", system_prompt("orchestrator"), tuple(skill_tools()),
                submit_tool("Ends planning with the round's hypotheses and the new MEMORY.md.", plan_schema(want)), check)
    note = (f"\n\n**The search is on a plateau**: the best of the last {PLATEAU_ROUNDS} rounds stayed within {PLATEAU_WITHIN:.0%}. "
            "Apply the plateau rule.") if plateau else ""
    task = (f"# Round {rnd}: write up to {want} hypotheses{note}\n\n## MEMORY.md\n\n{memory or '(empty)'}\n\n## Backlog\n\n{backlog or '(empty)'}\n\n"
            f"## Results\n\n{results}\n\n## Hints on the best candidates\n\n{hints or '(none yet)'}")
    session = run_session(role, settings, transport, f"round-{rnd}", task, None, say)
    if not session.submitted or session.result is None:
        return Plan([], "", "", session)
    r = session.result
    hyps = [Hypothesis.from_dict({**h, "parent": _resolve(h.get("parent", ""), parents)}) for h in r["hypotheses"]]
    return Plan(hyps, r["memory"], r.get("plateau", ""), session)


def plan(rnd: int, want: int, repo: RunRepo, rows: list[Evaluation], objective: Objective, settings: RoleSettings, transport: Transport,
         say: Callable[[str], None] = lambda s: None) -> Plan:
    """The round's hypotheses, written to BACKLOG.md with the new MEMORY.md and the transcript."""
    validated = sorted((r for r in rows if r.validated), key=lambda r: -objective.score(r.headline_value))
    by_round = [max((r.speedup for r in rows if r.round == n and r.validated), default=math.nan)
                for n in range(max((r.round for r in rows), default=0) + 1)]
    hints = "\n".join(f"- {r.commit[:12]} ({r.speedup:.2f}x): " + "; ".join(h.text for h in r.hints) for r in validated[:3] if r.hints)
    backlog = repo.read_planning("BACKLOG.md")
    planned = plan_round(rnd, want, repo.read_planning("MEMORY.md"), backlog, results_table(repo, rows, validated), hints,
                         plateaued(by_round), [r.commit for r in validated], settings, transport, say)
    repo.write_files(TRANSCRIPTS_BRANCH, {f"rounds/{rnd}/orchestrator.json": planned.session.transcript.to_json()},
                     f"round {rnd}: the Orchestrator's transcript")
    if planned.hypotheses:
        section = f"## Round {rnd}\n\n" + "\n".join(f"- [ ] {h.markdown()}" for h in planned.hypotheses) + "\n"
        repo.write_planning({"MEMORY.md": planned.memory, "BACKLOG.md": _with_section(backlog, rnd, section)},
                            f"round {rnd}: {len(planned.hypotheses)} hypotheses")
    return planned


def record_round(rnd: int, repo: RunRepo, outcomes: list[tuple[Hypothesis, Evaluation]]) -> None:
    """Marks the round's hypotheses in BACKLOG.md with what became of them."""
    lines = []
    for h, row in outcomes:
        how = f"{row.verdict}" + (f" {row.speedup:.2f}x" if row.validated else f" ({row.failure_phase}: {row.failure_reason[:120]})")
        lines.append(f"- [x] {h.markdown()}\n  - result: {how} at {row.commit[:12]}")
    backlog = repo.read_planning("BACKLOG.md")
    repo.write_planning({"BACKLOG.md": _with_section(backlog, rnd, f"## Round {rnd}\n\n" + "\n".join(lines) + "\n")},
                        f"round {rnd}: results in the backlog")


def _with_section(backlog: str, rnd: int, section: str) -> str:
    """BACKLOG.md with round `rnd`'s section replaced by (or appended as) `section`."""
    body = backlog if backlog.startswith("# Backlog") else BACKLOG_HEAD
    old = re.compile(rf"(?ms)^## Round {rnd}\n.*?(?=^## Round |\Z)")
    if old.search(body):
        return old.sub(lambda m: section.rstrip() + "\n\n", body, count=1).rstrip() + "\n"
    return body.rstrip() + "\n\n" + section


def results_table(repo: RunRepo, rows: list[Evaluation], validated: list[Evaluation]) -> str:
    """The results as the Orchestrator reads them: the best validated and the latest rows."""
    shown = {r.eval_id: r for r in validated[:10]} | {r.eval_id: r for r in rows[-RESULTS_SHOWN:]}
    lines = ["| commit | parent | round | verdict | headline | speed-up | what | why not |", "|---|---|---|---|---|---|---|---|"]
    for r in sorted(shown.values(), key=lambda r: (r.round, r.finished_at)):
        what = repo._git("log", "-1", "--format=%s", r.commit)[:100]
        head = "-" if math.isnan(r.headline_value) else f"{r.headline_value:.2f}"
        speed = "-" if math.isnan(r.speedup) else f"{r.speedup:.2f}x"
        why = f"{r.failure_phase}: {r.failure_reason[:100]}" if r.failure_phase else ""
        lines.append(f"| {r.commit[:12]} | {r.parent[:12]} | {r.round} | {r.verdict} | {head} | {speed} | {what} | {why} |".replace("\n", " "))
    return "\n".join(lines)
