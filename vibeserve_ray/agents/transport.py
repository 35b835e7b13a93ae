"""How a session reaches the API: one request in, a `Reply` out.

Sessions run anywhere in the cluster and never hold the key: `via_actor` sends each
request to the run's gateway actor, which alone talks to the API. Kept apart from the
gateway so that a session, and the inner loop that runs one, loads neither
`anthropic` nor the gateway.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from vibeserve_ray.agents.ledger import ApiUsage
from vibeserve_ray.errors import BadInput


@dataclass(frozen=True)
class Reply:
    """The API's message as a dict, or why there is none (`stop`: budget spent, key
    refused, error)."""

    message: dict | None
    stop: str = ""
    reason: str = ""
    usage: ApiUsage | None = None


Transport = Callable[[str, str, dict], Reply]  # (role, eval_id, request) -> Reply


def via_actor(handle) -> Transport:
    """A transport for sessions anywhere in the cluster: calls go through the actor."""
    import ray  # ray: sessions also run outside Ray (the tests' local transports); only this one needs it

    return lambda role, eval_id, request: ray.get(handle.call.remote(role, eval_id, request))


class KeyRefused(BadInput):
    """The API refused the key (401): the whole search stops at once, with this one line."""

    def __init__(self, reason: str):
        super().__init__("ANTHROPIC_API_KEY", "key", f"{reason}; the search stopped")
