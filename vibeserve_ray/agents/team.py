"""The agents of one search, as the driver sees them: the gateway they all call through,
their settings per role, the Orchestrator's plan each round, and the state that stops
the search (a refused key at once; a spent budget once the work in flight is done).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any, Callable

from vibeserve_ray.agents.client import ApiKey
from vibeserve_ray.agents.gateway import GatewayState, start_gateway, via_actor
from vibeserve_ray.agents.hypothesis import Hypothesis
from vibeserve_ray.agents.ledger import Usage
from vibeserve_ray.agents.orchestrator import Plan, plan_round, plateaued
from vibeserve_ray.agents.session import RoleSettings
from vibeserve_ray.agents.settings import AgentConfig
from vibeserve_ray.errors import BadInput
from vibeserve_ray.search.results import Evaluation
from vibeserve_ray.search.state import TRANSCRIPTS_BRANCH, RunRepo
from vibeserve_ray.target import Objective

BUDGET_SPENT = "budget spent"
RESULTS_SHOWN = 40  # rows of the results table the Orchestrator reads (the best and the latest)


@dataclass(frozen=True)
class AgentTask:
    """What one inner loop needs to run its agents; travels in the InnerTask."""

    gateway: Any  # the gateway actor's handle: calls go through it, the key stays there
    roles: dict[str, RoleSettings]
    parent: str  # the parent's figures in words, for the Implementer
    parent_metrics: dict[str, Any]  # for the Evaluator


class AgentTeam:
    def __init__(self, run: str, key: ApiKey, url: str, config: AgentConfig, say: Callable[[str], None] = print):
        self.config, self.url, self.say = config, url, say
        self.gateway = start_gateway(run, key, url, config.prices, config.budget, config.max_retries, config.request_timeout_s)
        self.transport = via_actor(self.gateway)

    @property
    def name(self) -> str:
        return f"anthropic:{self.config.role('implementer').model}"

    def state(self) -> GatewayState:
        import ray

        return ray.get(self.gateway.state.remote())

    def check_key(self) -> None:
        import ray

        refused = ray.get(self.gateway.check_key.remote(self.config.role("orchestrator").model))
        if refused:
            raise key_refused(refused)

    def stop_reason(self) -> str:
        """'' while agent work may start; BUDGET_SPENT once the budget refused a call.
        A refused key raises: the search stops at once."""
        st = self.state()
        if st.key_refused:
            raise key_refused(st.key_refused)
        return BUDGET_SPENT if st.budget_spent else ""

    def session_limit_s(self) -> float:
        """The wall time an inner loop's agent sessions may add (Implementer, Judge, Evaluator)."""
        return sum(self.config.role(r).time_limit_s for r in ("implementer", "judge", "evaluator"))

    def usage(self, eval_id: str) -> dict[str, Usage]:
        import ray

        return ray.get(self.gateway.usage_for.remote(eval_id))

    def task(self, parent: Evaluation | None) -> AgentTask:
        if parent is None:  # the seed itself, measured in round 0
            return AgentTask(self.gateway, dict(self.config.roles), "(none: this is the seed)", {})
        words = (f"commit {parent.commit[:12]}: {parent.headline_name} = {parent.headline_value:.2f} ({parent.speedup:.2f}x the seed); "
                 f"design {json.dumps(parent.design, sort_keys=True)}; knobs {json.dumps(parent.knobs, sort_keys=True)}\n"
                 f"Metrics: {json.dumps(parent.metrics, sort_keys=True)}")
        return AgentTask(self.gateway, dict(self.config.roles), words, dict(parent.metrics))

    # --- the Orchestrator ----------------------------------------------------------------

    def plan(self, rnd: int, want: int, repo: RunRepo, rows: list[Evaluation], objective: Objective) -> Plan:
        """The round's hypotheses, written to BACKLOG.md with the new MEMORY.md and the transcript."""
        validated = sorted((r for r in rows if r.validated), key=lambda r: -objective.score(r.headline_value))
        by_round = [max((r.speedup for r in rows if r.round == n and r.validated), default=math.nan)
                    for n in range(max((r.round for r in rows), default=0) + 1)]
        hints = "\n".join(f"- {r.commit[:12]} ({r.speedup:.2f}x): " + "; ".join(h.text for h in r.hints) for r in validated[:3] if r.hints)
        backlog = repo.read_planning("BACKLOG.md")
        plan = plan_round(rnd, want, repo.read_planning("MEMORY.md"), backlog, results_table(repo, rows, validated), hints,
                          plateaued(by_round), [r.commit for r in validated], self.config.role("orchestrator"), self.transport, self.say)
        repo.write_files(TRANSCRIPTS_BRANCH, {f"rounds/{rnd}/orchestrator.json": plan.session.transcript.to_json()},
                         f"round {rnd}: the Orchestrator's transcript")
        if plan.hypotheses:
            section = f"## Round {rnd}\n\n" + "\n".join(f"- [ ] {h.markdown()}" for h in plan.hypotheses) + "\n"
            repo.write_planning({"MEMORY.md": plan.memory, "BACKLOG.md": _with_section(backlog, rnd, section)},
                                f"round {rnd}: {len(plan.hypotheses)} hypotheses")
        return plan

    def record_round(self, rnd: int, repo: RunRepo, outcomes: list[tuple[Hypothesis, Evaluation]]) -> None:
        """Marks the round's hypotheses in BACKLOG.md with what became of them."""
        lines = []
        for h, row in outcomes:
            how = f"{row.verdict}" + (f" {row.speedup:.2f}x" if row.validated else f" ({row.failure_phase}: {row.failure_reason[:120]})")
            lines.append(f"- [x] {h.markdown()}\n  - result: {how} at {row.commit[:12]}")
        backlog = repo.read_planning("BACKLOG.md")
        repo.write_planning({"BACKLOG.md": _with_section(backlog, rnd, f"## Round {rnd}\n\n" + "\n".join(lines) + "\n")},
                            f"round {rnd}: results in the backlog")


class KeyRefused(BadInput):
    """The API refused the key (401): the whole search stops at once, with this one line."""

    def __init__(self, reason: str):
        super().__init__("ANTHROPIC_API_KEY", "key", f"{reason}; the search stopped")


def key_refused(reason: str) -> KeyRefused:
    return KeyRefused(reason)


BACKLOG_HEAD = "# Backlog\n\nThe Orchestrator's hypotheses, round by round, and what became of them.\n"


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
