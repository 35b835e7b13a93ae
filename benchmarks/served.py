"""What users are served: a candidate started with `vibeserve deploy`, as they start it.

`deployed` runs `vibeserve deploy` in the foreground (its own embedded Ray, Serve's HAProxy
ingress, the candidate's sandboxed engine under a replica) on a free loopback port until
the block ends, then sends it Ctrl-C, as a user stops it; benchmarks measure the URL it
yields the way `vibeserve bench --url` does. `serve_processes` names the Serve processes
under a process (replica, ingress, controller), for CPU accounting and py-spy.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import psutil

from vibeserve_ray.raycluster import listen_port

ROOT = Path(__file__).resolve().parent.parent
# Serve's processes, by the title Ray gives its actors (HAProxy's own binary is the ingress too)
SERVE_ROLES = (("ray::ServeReplica", "serve_replica"), ("ray::ProxyActor", "serve_ingress"), ("ray::HAProxyManager", "serve_ingress"),
               ("ray::ServeController", "serve_controller"))


@dataclass(frozen=True)
class Deployment:
    """A running `vibeserve deploy`: its URL (without /v1) and the CLI's process (Ray's processes are under it)."""

    base_url: str
    pid: int
    log: Path


@contextlib.contextmanager
def deployed(target_dir: Path, workdir: Path, *, candidate: str | Path | None = None, run: Path | None = None,
             knobs: dict | None = None, ready_timeout_s: float = 600.0, say: Callable[[str], None] = print) -> Iterator[Deployment]:
    """`vibeserve deploy` of `candidate` (or of `run`'s best) for `target_dir`, until the block ends."""
    port = listen_port()  # below the ephemeral range: an outgoing connection took a free_port() before HAProxy bound it
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / "deploy.log"
    what = ["--candidate", str(candidate)] if candidate is not None else [str(run)]
    cmd = [sys.executable, "-m", "vibeserve_ray.cli", "deploy", *what, "--target", str(target_dir), "--port", str(port), "--quiet"]
    if knobs:
        cmd += ["--knobs", *(f"{k}={v}" for k, v in knobs.items())]
    say(f"served: `vibeserve {' '.join(cmd[3:])}` (log {log})")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"PYTHONPATH": str(ROOT)}
    with open(log, "ab") as err:
        proc = subprocess.Popen(cmd, cwd=str(ROOT), env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err,
                                text=True, start_new_session=True)
    try:
        url = _url_line(proc, ready_timeout_s)
        if not url:
            raise SystemExit(f"served: deploy exited with code {proc.poll()} or was not healthy in {ready_timeout_s:g} s; see {log}")
        yield Deployment(url.removesuffix("/v1"), proc.pid, log)
    finally:
        proc.send_signal(signal.SIGINT)  # Ctrl-C: the CLI shuts the application and its Ray down
        try:
            proc.wait(timeout=180)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _url_line(proc: subprocess.Popen, timeout_s: float) -> str | None:
    """The URL deploy prints on stdout once healthy (its only line there), or None."""
    line: list[str] = []
    reader = threading.Thread(target=lambda: line.append(proc.stdout.readline().strip()), daemon=True)
    reader.start()
    reader.join(timeout_s)
    return line[0] if line and line[0].startswith("http") else None


def serve_processes(root: int) -> dict[int, str]:
    """Serve's processes under `root`, by role: serve_replica, serve_ingress, serve_controller."""
    try:
        procs = psutil.Process(root).children(recursive=True)
    except psutil.Error:
        return {}
    return {p.pid: role for p in procs if (role := serve_role(p)) is not None}


def serve_role(p: psutil.Process) -> str | None:
    try:
        cmd, name = " ".join(p.cmdline()), p.name()
    except psutil.Error:
        return None
    return next((role for title, role in SERVE_ROLES if cmd.startswith(title)), "serve_ingress" if name == "haproxy" else None)
