"""A Serve config run on Ray: an embedded local Ray, the cluster at RAY_ADDRESS, or a head
started for `--detach`; healthy, then served until Ctrl-C (or left running)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Callable

import ray
from ray import serve
from ray.serve import Application

from vibeserve_ray import progress, raycluster
from vibeserve_ray.deploy.config import base_url
from vibeserve_ray.deploy.replica import build

PACKAGE_ROOT = Path(__file__).resolve().parents[2]


def application(config: dict) -> tuple[str, Application]:
    """(name, Application) for the config's one application, its options applied in code."""
    app = config["applications"][0]
    options = {k: v for k, v in app["deployments"][0].items() if k != "name"}
    if app.get("runtime_env"):
        options["ray_actor_options"] = {**options.get("ray_actor_options", {}), "runtime_env": app["runtime_env"]}
    return app["name"], build(app["args"], options)


def run(config: dict, *, detach: bool = False, say: Callable[[str], None] = print) -> int:
    """Runs the config's application: 0 once healthy (--detach) or after Ctrl-C; 1 if unhealthy."""
    owned = _connect(detach, say)
    name, app = application(config)
    url = base_url(config)
    try:
        serve.start(http_options=config["http_options"])
        progress.task(f"deploy: starting {name!r} (replicas, engine processes, health checks)", None)
        try:
            serve.run(app, name=name, route_prefix="/")
        except RuntimeError as exc:
            say(f"deploy: application {name!r} is unhealthy: {_last_line(exc)}")
            return _stop(owned, name, 1)
        if not _healthy(url.replace("//0.0.0.0:", "//127.0.0.1:") + "/health", 30):
            say(f"deploy: {url}/health does not answer (is Serve on this cluster listening elsewhere? see `serve config`)")
            return _stop(owned, name, 1)
        progress.done()
        print(f"{url}/v1", flush=True)
        if detach:
            say(f"deploy: {name!r} is running on the cluster; `serve status` to watch it, `serve shutdown` to stop it")
            return 0
        say("deploy: serving; Ctrl-C to shut the application down")
        # SIGINT too: a process started in the background (`cmd &`, nohup) inherits it ignored,
        # and Python then leaves it so: Ctrl-C or `kill -INT` would be lost and the app left up.
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, _interrupt)
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        say(f"deploy: shutting {name!r} down")
        return _stop(owned, name, 0)
    finally:
        if owned != "caller":
            raycluster.shutdown()


def _connect(detach: bool, say: Callable[[str], None]) -> str:
    """Who owns Ray: 'caller' (already connected), 'cluster' (RAY_ADDRESS, or a head started
    for --detach) or 'embedded' (a local Ray that ends with this process). No guessing of a
    running cluster: a stale /tmp/ray record makes Ray wait on a dead one for minutes."""
    if ray.is_initialized():
        return "caller"
    # Workers must import vibeserve_ray even when it runs from a source checkout.
    os.environ["PYTHONPATH"] = os.pathsep.join([str(PACKAGE_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    address = os.environ.get("RAY_ADDRESS")
    if not address and detach:
        address = _start_head(say)
    endpoints = raycluster.join(address) if address else raycluster.start_local()
    say(f"deploy: {endpoints.describe()}")
    return "cluster" if address else "embedded"


def _start_head(say: Callable[[str], None]) -> str:
    """A detached app needs a cluster that outlives this process: a local `ray start --head`."""
    port = raycluster.free_port()
    raycluster.set_ray_env()
    subprocess.run(["ray", "start", "--head", f"--port={port}", "--disable-usage-stats"], check=True, capture_output=True)
    say(f"deploy: started a Ray head at 127.0.0.1:{port} (stop it with `ray stop`)")
    return f"127.0.0.1:{port}"


def _stop(owned: str, name: str, code: int) -> int:
    if owned == "embedded":
        serve.shutdown()
    else:
        serve.delete(name)
    return code


def _healthy(url: str, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    return True
        except OSError:
            pass
        time.sleep(0.5)
    return False


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def _last_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return lines[-1] if lines else type(exc).__name__
