"""Starting or joining Ray: the one place that calls `ray.init` for the CLI.

Ray >= 2.60 turns token authentication on for a head started where a token exists
(`~/.ray/auth_token`, which any local `ray.init` writes), but a driver joining by an
explicit address (`--address`, RAY_ADDRESS, the head `deploy --detach` starts) sends
the token only when RAY_AUTH_MODE=token: it would be refused by the very head started
on the same machine. `join` applies the head's rule to the driver, as Ray itself does
for `address="auto"`; RAY_AUTH_MODE set by the user always wins.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import ray

HEAD_NODE = "node:__internal_head__"  # the resource Ray puts on the head node alone: where the driver's actors live


@dataclass(frozen=True)
class Endpoints:
    """Where to watch the cluster this process joined or started."""

    dashboard: str | None  # the Ray dashboard; None when the cluster runs without one
    metrics: str | None  # this node's Prometheus export, the `vibeserve_*` metrics among Ray's

    def describe(self) -> str:
        return (f"Ray dashboard at {self.dashboard or '(none: this cluster runs without one)'}"
                + (f"; metrics at {self.metrics}" if self.metrics else ""))


def join(address: str, **kwargs: Any) -> Endpoints:
    """Joins the cluster at `address`, sending the local token where the head would expect it."""
    try:
        # a private module that Rays without token authentication lack
        from ray._private.authentication.authentication_token_setup import maybe_enable_token_auth_if_token_available
    except ImportError:  # a Ray without token authentication
        pass
    else:
        maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
    return _endpoints(ray.init(address=address, **kwargs))


def start_local(**kwargs: Any) -> Endpoints:
    """A new Ray instance owned by this process, with its dashboard on 127.0.0.1 (port 8265,
    or the next free one). "local", not a plain `ray.init()`: that would join a cluster
    named in /tmp/ray from an earlier `ray start`, or hang on it if it died without
    cleaning up."""
    return _endpoints(ray.init(address="local", **({"include_dashboard": True, "dashboard_host": "127.0.0.1"} | kwargs)))


def _endpoints(context) -> Endpoints:
    here = ray.get_runtime_context().get_node_id()
    node = next((n for n in ray.nodes() if n["NodeID"] == here), None)
    port = node.get("MetricsExportPort") if node else None
    return Endpoints(f"http://{context.dashboard_url}" if context.dashboard_url else None,
                     f"http://{node['NodeManagerAddress']}:{port}/metrics" if port else None)
