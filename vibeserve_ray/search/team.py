"""The agents of one search, as the driver sees them: the gateway they all call through,
their settings per role, the Orchestrator's plan each round, and the state that stops
the search (a refused key at once; a spent budget once the work in flight is done).
The outer loop's handle, not runtime: it reads the results table and the run repository.
"""

from __future__ import annotations

import json
from typing import Callable

import ray

from vibeserve_ray.agents.client import ApiKey
from vibeserve_ray.agents.gateway import BUDGET, GatewayState, start_gateway
from vibeserve_ray.agents.ledger import ApiUsage
from vibeserve_ray.agents.settings import AgentConfig
from vibeserve_ray.agents.transport import KeyRefused, via_actor
from vibeserve_ray.inner.task import AgentTask, Hypothesis
from vibeserve_ray.search import orchestrator
from vibeserve_ray.search.orchestrator import Plan
from vibeserve_ray.search.results import Evaluation
from vibeserve_ray.search.state import RunRepo
from vibeserve_ray.target import Objective

class AgentTeam:
    def __init__(self, run: str, key: ApiKey, url: str, config: AgentConfig, say: Callable[[str], None] = print):
        self.config, self.url, self.say = config, url, say
        self.gateway = start_gateway(run, key, url, config.prices, config.budget, config.max_retries, config.request_timeout_s)
        self.transport = via_actor(self.gateway)

    @property
    def name(self) -> str:
        return f"anthropic:{self.config.role('implementer').model}"

    def state(self) -> GatewayState:
        return ray.get(self.gateway.state.remote())

    def check_key(self) -> None:
        refused = ray.get(self.gateway.check_key.remote(self.config.role("orchestrator").model))
        if refused:
            raise KeyRefused(refused)

    def stop_reason(self) -> str:
        """'' while agent work may start; "budget spent" once the budget refused a call.
        A refused key raises: the search stops at once."""
        st = self.state()
        if st.key_refused:
            raise KeyRefused(st.key_refused)
        return BUDGET if st.budget_spent else ""

    def session_limit_s(self) -> float:
        """The wall time an inner loop's agent sessions may add (Implementer, Judge, Evaluator)."""
        return sum(self.config.role(r).time_limit_s for r in ("implementer", "judge", "evaluator"))

    def usage(self, eval_id: str) -> dict[str, ApiUsage]:
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
        return orchestrator.plan(rnd, want, repo, rows, objective, self.config.role("orchestrator"), self.transport, self.say)

    def record_round(self, rnd: int, repo: RunRepo, outcomes: list[tuple[Hypothesis, Evaluation]]) -> None:
        """Marks the round's hypotheses in BACKLOG.md with what became of them."""
        orchestrator.record_round(rnd, repo, outcomes)
