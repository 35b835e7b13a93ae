"""The agents' settings for one search: the target's `[agent]` with the command line over it.

Per role, a setting comes from the command line (`--model ROLE=MODEL`), else
`[agent.<role>]`, else `[agent] roles` (models only), else `[agent]`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from vibeserve_ray.agents.client import KEY_ENV, KEY_FILE_ENV, ApiKey, api_base_url
from vibeserve_ray.agents.ledger import DEFAULT_PRICES, Price, SpendLimit
from vibeserve_ray.agents.session import RoleSettings
from vibeserve_ray.errors import BadInput
from vibeserve_ray.target import AGENT_ROLES, AgentSpec


@dataclass(frozen=True)
class AgentConfig:
    roles: dict[str, RoleSettings]
    budget: SpendLimit
    prices: dict[str, Price]
    max_retries: int
    request_timeout_s: float

    def role(self, name: str) -> RoleSettings:
        return self.roles[name]


def agent_config(spec: AgentSpec, token_budget: int = 0, models: dict[str, str] | None = None, budget_usd: float | None = None) -> AgentConfig:
    models = models or {}
    roles = {}
    for name in AGENT_ROLES:
        r = getattr(spec, name)
        roles[name] = RoleSettings(
            model=models.get(name) or r.model or spec.roles.get(name) or spec.model,
            max_tokens=r.max_tokens or spec.max_tokens,
            max_turns=r.max_turns or spec.max_turns,
            time_limit_s=r.time_limit_s or spec.time_limit_s,
        )
    prices = {**DEFAULT_PRICES, **{m: Price(p.input, p.output, p.cache_write, p.cache_read) for m, p in spec.prices.items()}}
    usd = spec.budget_usd if budget_usd is None else budget_usd
    return AgentConfig(roles, SpendLimit(usd=usd, tokens=token_budget), prices, spec.max_retries, spec.request_timeout_s)


def parse_models(pairs: list[str]) -> dict[str, str]:
    """`ROLE=MODEL` pairs from the command line; BadInput naming the bad one."""
    out = {}
    for pair in pairs:
        role, sep, model = pair.partition("=")
        if not sep or not model.strip():
            raise BadInput("command line", "--model", f"{pair!r} is not ROLE=MODEL")
        if role not in AGENT_ROLES:
            raise BadInput("command line", "--model", f"unknown role {role!r} (one of {', '.join(AGENT_ROLES)})")
        out[role] = model.strip()
    return out


def choose_implementer(asked: str, backend: str, key: ApiKey, say: Callable[[str], None]) -> str:
    """anthropic | offline | random, from --implementer and [agent] backend; says which, once.
    `auto` means the LLM agents when a key is set (and the target does not ask for offline)."""
    if asked == "auto":
        asked = "offline" if backend == "offline" else "anthropic" if (key or backend == "anthropic") else "offline"
        if asked == "offline":
            say("search: no ANTHROPIC_API_KEY: using the offline implementer (design changes guided by hints and skills)"
                if backend != "offline" else "search: [agent] backend = offline: using the offline implementer")
    if asked == "anthropic":
        if not key:
            raise BadInput(KEY_ENV, "key", f"not set; the LLM agents need it (or {KEY_FILE_ENV}, a file holding it)")
        say(f"search: LLM agents on the Messages API at {api_base_url()}")
    return asked
