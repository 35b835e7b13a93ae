"""What agent calls cost, and the budget that stops them before it is overshot.

Billed input is `input_tokens + cache_creation_input_tokens + cache_read_input_tokens`
(the API's `input_tokens` excludes the other two), each at its own price. A call is
admitted only while spent + in flight + its own estimate fits the budget (as
ShinkaEvolve's committed-cost cap), so the budget is overshot by at most what one
call costs beyond its estimate; the estimate charges every input token at the dearer
of the input and cache-write prices and `max_tokens` of output, so in practice not at all.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field, replace


@dataclass(frozen=True)
class Price:
    """US dollars per million tokens."""

    input: float
    output: float
    cache_write: float
    cache_read: float


# Anthropic's list prices (USD per million tokens, 5-minute cache writes), as published
# in November 2026. A model not listed here (a self-hosted one) is charged at "default";
# `[agent.prices.<model>]` in the target overrides or adds entries.
DEFAULT_PRICES: dict[str, Price] = {
    "claude-opus-5": Price(5.0, 25.0, 6.25, 0.50),
    "claude-opus-4-8": Price(5.0, 25.0, 6.25, 0.50),
    "claude-opus-4-7": Price(5.0, 25.0, 6.25, 0.50),
    "claude-opus-4-6": Price(5.0, 25.0, 6.25, 0.50),
    "claude-opus-4-5": Price(5.0, 25.0, 6.25, 0.50),
    "claude-sonnet-5-5": Price(2.0, 10.0, 2.50, 0.10),
    "claude-sonnet-5": Price(2.0, 10.0, 2.50, 0.20),
    "claude-sonnet-4-6": Price(3.0, 15.0, 3.75, 0.30),
    "claude-sonnet-4-5": Price(3.0, 15.0, 3.75, 0.30),
    "claude-haiku-5-5": Price(0.10, 0.50, 0.125, 0.01),  # prompts up to 100k tokens
    "claude-haiku-4-5": Price(1.0, 5.0, 1.25, 0.10),
    "default": Price(3.0, 15.0, 3.75, 0.30),
}


@dataclass(frozen=True)
class ApiUsage:
    """Tokens and cost of one or more calls, as the API reports them."""

    calls: int = 0
    input_tokens: int = 0  # uncached input only, as the API counts it
    output_tokens: int = 0
    cache_write_tokens: int = 0
    cache_read_tokens: int = 0
    cost_usd: float = 0.0
    seconds: float = 0.0  # wall time spent waiting for the API (retries included)

    @property
    def billed_input_tokens(self) -> int:
        return self.input_tokens + self.cache_write_tokens + self.cache_read_tokens

    @property
    def tokens(self) -> int:
        return self.billed_input_tokens + self.output_tokens

    def __add__(self, other: "ApiUsage") -> "ApiUsage":
        return ApiUsage(*(a + b for a, b in zip(self._values(), other._values())))

    def _values(self) -> tuple:
        return (self.calls, self.input_tokens, self.output_tokens, self.cache_write_tokens, self.cache_read_tokens, self.cost_usd, self.seconds)

    def to_dict(self) -> dict:
        return {"calls": self.calls, "input_tokens": self.input_tokens, "output_tokens": self.output_tokens,
                "cache_write_tokens": self.cache_write_tokens, "cache_read_tokens": self.cache_read_tokens,
                "cost_usd": round(self.cost_usd, 6), "seconds": round(self.seconds, 3)}

    @staticmethod
    def from_dict(d: dict) -> "ApiUsage":
        return ApiUsage(**{k: d.get(k, 0) for k in ("calls", "input_tokens", "output_tokens", "cache_write_tokens", "cache_read_tokens",
                                                   "cost_usd", "seconds")})


def price_for(prices: dict[str, Price], model: str) -> Price:
    return prices.get(model) or prices["default"]


def charge(api_usage: dict, price: Price, seconds: float) -> ApiUsage:
    """One call's ApiUsage from the `usage` object of a Messages API response."""
    n_in = int(api_usage.get("input_tokens") or 0)
    n_out = int(api_usage.get("output_tokens") or 0)
    n_write = int(api_usage.get("cache_creation_input_tokens") or 0)
    n_read = int(api_usage.get("cache_read_input_tokens") or 0)
    cost = (n_in * price.input + n_out * price.output + n_write * price.cache_write + n_read * price.cache_read) / 1e6
    return ApiUsage(1, n_in, n_out, n_write, n_read, cost, seconds)


@dataclass(frozen=True)
class Estimate:
    tokens: int
    cost_usd: float


def estimate(request: dict, price: Price) -> Estimate:
    """An upper-leaning guess of a call's cost before it is made: ~3 characters per input
    token (English and code run 3.5-4), every one at the dearer input price, and the
    whole of `max_tokens` as output."""
    text = json.dumps([request.get("system"), request.get("tools"), request.get("messages")])
    n_in = len(text) // 3 + 1
    n_out = int(request.get("max_tokens") or 0)
    return Estimate(n_in + n_out, (n_in * max(price.input, price.cache_write) + n_out * price.output) / 1e6)


@dataclass(frozen=True)
class SpendLimit:
    """What the agents of one search may spend in all, in dollars and in tokens."""

    usd: float = 0.0  # 0: no limit
    tokens: int = 0  # 0: no limit


@dataclass
class Ledger:
    """Every call's charge, by role and by candidate; thread-safe (the gateway serves
    many sessions at once)."""

    budget: SpendLimit = SpendLimit()
    by_role: dict[str, ApiUsage] = field(default_factory=dict)
    by_eval: dict[str, dict[str, ApiUsage]] = field(default_factory=dict)
    in_flight: Estimate = Estimate(0, 0.0)
    refused_for_budget: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def total(self) -> ApiUsage:
        return sum(self.by_role.values(), ApiUsage())

    def admit(self, est: Estimate) -> str:
        """'' and the estimate held as in flight when the call fits the budget, else why not."""
        with self._lock:
            spent = self.total
            b = self.budget
            why = ""
            if b.usd and spent.cost_usd + self.in_flight.cost_usd + est.cost_usd > b.usd:
                why = f"budget spent: ${spent.cost_usd:.4f} spent and ${self.in_flight.cost_usd:.4f} in flight of ${b.usd:g}"
            elif b.tokens and spent.tokens + self.in_flight.tokens + est.tokens > b.tokens:
                why = f"budget spent: {spent.tokens} tokens spent and {self.in_flight.tokens} in flight of {b.tokens}"
            if why:
                self.refused_for_budget += 1
                return why
            self.in_flight = Estimate(self.in_flight.tokens + est.tokens, self.in_flight.cost_usd + est.cost_usd)
            return ""

    def settle(self, est: Estimate, role: str, eval_id: str, usage: ApiUsage | None) -> None:
        """Releases the call's estimate and charges what it really cost (nothing if it failed)."""
        with self._lock:
            self.in_flight = Estimate(self.in_flight.tokens - est.tokens, self.in_flight.cost_usd - est.cost_usd)
            if usage is None:
                return
            self.by_role[role] = self.by_role.get(role, ApiUsage()) + usage
            per = self.by_eval.setdefault(eval_id, {})
            per[role] = per.get(role, ApiUsage()) + usage

    @property
    def exhausted(self) -> bool:
        """A call was refused for the budget: no new agent work should start."""
        return self.refused_for_budget > 0

    def for_eval(self, eval_id: str) -> dict[str, ApiUsage]:
        with self._lock:
            return dict(self.by_eval.get(eval_id, {}))

    def snapshot(self) -> "LedgerState":
        with self._lock:
            return LedgerState(dict(self.by_role), replace(self.budget), self.exhausted)


@dataclass(frozen=True)
class LedgerState:
    by_role: dict[str, ApiUsage]
    budget: SpendLimit
    exhausted: bool

    @property
    def total(self) -> ApiUsage:
        return sum(self.by_role.values(), ApiUsage())

    def to_dict(self) -> dict:
        return {"budget_usd": self.budget.usd, "token_budget": self.budget.tokens, "budget_spent": self.exhausted,
                "total": self.total.to_dict(), "by_role": {r: u.to_dict() for r, u in sorted(self.by_role.items())}}
