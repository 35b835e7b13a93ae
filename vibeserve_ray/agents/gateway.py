"""The gateway: the one process that holds the API key and talks to the API.

One named Ray actor per run, on the head node like the islands. Agents anywhere in the
cluster send their requests through it, so the key is in no task's environment, no
runtime_env and no dashboard page; it reaches the actor by a method call (not a
constructor argument, which Ray keeps to restart actors) or as a file path on the
head. Every call is admitted against the budget and charged to the ledger here.
Failures come back as values (`Reply.stop`): a 401 is remembered, and every later
call is refused at once, so the driver can stop the whole search on it.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

import anthropic
import ray

from vibeserve_ray.agents.client import ApiKey, make_client
from vibeserve_ray.agents.ledger import ApiUsage, Ledger, LedgerState, Price, SpendLimit, charge, estimate, price_for
from vibeserve_ray.agents.transport import Reply
from vibeserve_ray.raycluster import HEAD_NODE


KEY_REFUSED = "key refused"
BUDGET = "budget spent"
ERROR = "error"


@dataclass(frozen=True)
class GatewayState:
    ledger: LedgerState
    key_refused: str  # '' or the one line saying so

    @property
    def budget_spent(self) -> bool:
        return self.ledger.exhausted


class Gateway:
    def __init__(self, url: str, prices: dict[str, Price], budget: SpendLimit, max_retries: int = 8, timeout_s: float = 600.0):
        self.url, self.prices, self.max_retries, self.timeout_s = url, prices, max_retries, timeout_s
        self.ledger = Ledger(budget)
        self._client: anthropic.Anthropic | None = None
        self._refused = ""
        self._lock = threading.Lock()

    def unlock(self, key: ApiKey) -> None:
        """Takes the key (its value, or a file on this node to read)."""
        self._client = make_client(key.read(), self.url, self.max_retries, self.timeout_s)

    def check_key(self, model: str) -> str:
        """'' unless the API refuses the key, checked with the free token-counting endpoint
        before any work is spent; an endpoint without it (a self-hosted one) passes."""
        try:
            assert self._client is not None
            self._client.messages.count_tokens(model=model, messages=[{"role": "user", "content": "ping"}])
        except anthropic.AuthenticationError as exc:
            self._refused = f"the API at {self.url} refused the key (401: {_api_message(exc)})"
        except (anthropic.APIStatusError, anthropic.APIConnectionError):
            pass  # not a verdict on the key: the first real call will tell
        return self._refused

    def call(self, role: str, eval_id: str, request: dict[str, Any]) -> Reply:
        """One `messages.create`, if the budget admits it; retries are the client's."""
        if self._refused:
            return Reply(None, KEY_REFUSED, self._refused)
        if self._client is None:
            return Reply(None, ERROR, "the gateway has no key")
        price = price_for(self.prices, request["model"])
        est = estimate(request, price)
        why = self.ledger.admit(est)
        if why:
            return Reply(None, BUDGET, why)
        usage = None
        t0 = time.monotonic()
        try:
            message = self._client.messages.create(**request).model_dump(mode="json", exclude_none=True)
            usage = charge(message.get("usage", {}), price, time.monotonic() - t0)
            return Reply(message, usage=usage)
        except anthropic.AuthenticationError as exc:
            with self._lock:
                self._refused = self._refused or f"the API at {self.url} refused the key (401: {_api_message(exc)})"
            return Reply(None, KEY_REFUSED, self._refused)
        except anthropic.APIStatusError as exc:
            return Reply(None, ERROR, f"{exc.status_code}: {_api_message(exc)}")
        except anthropic.APIConnectionError as exc:
            return Reply(None, ERROR, f"no connection to {self.url} after {self.max_retries} retries: {exc}")
        finally:
            self.ledger.settle(est, role, eval_id, usage)

    def state(self) -> GatewayState:
        return GatewayState(self.ledger.snapshot(), self._refused)

    def usage_for(self, eval_id: str) -> dict[str, ApiUsage]:
        return self.ledger.for_eval(eval_id)


def _api_message(exc: anthropic.APIStatusError) -> str:
    body = exc.body if isinstance(exc.body, dict) else {}
    err = body.get("error") if isinstance(body.get("error"), dict) else {}
    return str(err.get("message") or exc.message)[:300]


def gateway_name(run: str) -> str:
    return f"vibeserve:{run}:gateway"


def start_gateway(run: str, key: ApiKey, url: str, prices: dict[str, Price], budget: SpendLimit, max_retries: int, timeout_s: float):
    """The run's gateway actor on the head node, unlocked with `key`; returns its handle."""
    actor = ray.remote(Gateway).options(name=gateway_name(run), get_if_exists=True, resources={HEAD_NODE: 0.001}, max_concurrency=64,
                                        num_cpus=0).remote(url, prices, budget, max_retries, timeout_s)
    ray.get(actor.unlock.remote(key))
    return actor
