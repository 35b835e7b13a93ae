"""Starting or joining Ray: the one place that calls `ray.init` for the CLI.

Ray >= 2.60 turns token authentication on for a head started where a token exists
(`~/.ray/auth_token`, which any local `ray.init` writes), but a driver joining by an
explicit address (`--address`, RAY_ADDRESS, the head `deploy --detach` starts) sends
the token only when RAY_AUTH_MODE=token: it would be refused by the very head started
on the same machine. `join` applies the head's rule to the driver, as Ray itself does
for `address="auto"`; RAY_AUTH_MODE set by the user always wins.
"""

from __future__ import annotations

from typing import Any

import ray


def join(address: str, **kwargs: Any) -> None:
    """Joins the cluster at `address`, sending the local token where the head would expect it."""
    try:
        from ray._private.authentication.authentication_token_setup import maybe_enable_token_auth_if_token_available
    except ImportError:  # a Ray without token authentication
        pass
    else:
        maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
    ray.init(address=address, **kwargs)


def start_local(**kwargs: Any) -> None:
    """A new Ray instance owned by this process. "local", not a plain `ray.init()`: that
    would join a cluster named in /tmp/ray from an earlier `ray start`, or hang on it if
    it died without cleaning up."""
    ray.init(address="local", **kwargs)
