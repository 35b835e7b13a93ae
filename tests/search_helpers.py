"""Helpers for search tests: small target copies, a real `ray start --head`, a search watched while it runs."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import psutil
from conftest import TINY_TARGET

from vibeserve_ray import raycluster
from vibeserve_ray.raycluster import free_port

# 6 of the tiny target's 16 held-out prompts, short and long (5, 56, 133, 196, 228 and 81
# tokens: they span several KV blocks and prefill chunks): a judging sends a third as many.
KEPT_PROMPTS = [0, 4, 9, 11, 12, 15]


def small_target(tmp_path: Path, name: str = "t", held_out: list[int] | None = KEPT_PROMPTS, source: Path = TINY_TARGET, **search) -> Path:
    """A copy of the tiny target (or `source`) with its [search] (and optionally [hardware])
    edited, the held-out prompts cut to `held_out` (None: all 16); no finalist tuning pass
    unless asked (`finalist_trials=N`)."""
    search.setdefault("finalist_trials", 0)
    dest = tmp_path / name
    shutil.copytree(source, dest)
    if held_out is not None:
        prompts = dest / "checker" / "prompts.jsonl"
        lines = prompts.read_text().splitlines()
        prompts.write_text("".join(lines[i] + "\n" for i in held_out))
    text = (dest / "target.toml").read_text()
    gpus = search.pop("num_gpus", None)
    if gpus is not None:
        text = text.replace("num_gpus = 0", f"num_gpus = {gpus}").replace("num_cpus = 2", "num_cpus = 0.5")
    for key, value in search.items():
        text, n = re.subn(rf"(?m)^{key} = .*$", f"{key} = {value}", text)
        if n == 0:
            text = text.replace("[search]\n", f"[search]\n{key} = {value}\n")
    (dest / "target.toml").write_text(text)
    return dest


class RayHead:
    """`ray start --head --block` in its own process group; killed with SIGKILL (SIGTERM is slow)."""

    def __init__(self, num_cpus: int, num_gpus: int = 0, env: dict | None = None, status_env: dict | None = None, temp_dir: Path | None = None):
        """`env`: the head's environment; `status_env`: the readiness probe's (default `env`); `temp_dir`: Ray's (its logs)."""
        self.port, self.dashboard_port = free_port(), free_port()
        # HAProxy ports of its own, as deploy gives the head it starts (another Ray of this test run may hold the last ones)
        env = (os.environ if env is None else env) | {name: str(raycluster.listen_port()) for name in raycluster.HAPROXY_PORTS}
        self.proc = subprocess.Popen(
            ["ray", "start", "--head", "--block", f"--port={self.port}", f"--dashboard-port={self.dashboard_port}",
             "--dashboard-host=127.0.0.1", f"--num-cpus={num_cpus}", f"--num-gpus={num_gpus}", "--include-dashboard=true", "--disable-usage-stats"] + ([f"--temp-dir={temp_dir}"] if temp_dir else []),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, env=env)
        self.address = f"127.0.0.1:{self.port}"
        self.dashboard = f"http://127.0.0.1:{self.dashboard_port}"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            r = subprocess.run(["ray", "status", f"--address={self.address}"], capture_output=True, text=True, env=status_env or env)
            # "No cluster status" (rc 0) until the head's node registers: a driver joining before
            # then fails with "No node info found"; `ray job submit` talks to the dashboard, up later
            if r.returncode == 0 and "node_" in r.stdout.partition("Pending:")[0] and self._dashboard_up():
                return
            time.sleep(1)
        self.stop()
        raise RuntimeError("ray head did not start")

    def submit(self, entrypoint: list[str], working_dir: Path, timeout: float) -> subprocess.CompletedProcess:
        """`ray job submit`, retried while the head's job agent is still registering (a start-up race)."""
        deadline = time.monotonic() + 90
        while True:
            r = subprocess.run(["ray", "job", "submit", "--address", self.dashboard, "--working-dir", str(working_dir), "--", *entrypoint],
                               capture_output=True, text=True, timeout=timeout, cwd=working_dir)
            if "No available agent" not in r.stdout + r.stderr or time.monotonic() > deadline:
                return r
            time.sleep(2)

    def _dashboard_up(self) -> bool:
        try:
            with urllib.request.urlopen(self.dashboard + "/api/version", timeout=2) as r:
                return r.status == 200
        except urllib.error.HTTPError:  # it answered (401 where token auth is on): it is up
            return True
        except OSError:
            return False

    def stop(self) -> None:
        # Serve's HAProxy runs in a process group of its own, out of the SIGKILL's reach: stopped
        # with the head, never left holding its ports
        haproxies = _haproxies(self.proc.pid)
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()
        for p in haproxies:
            with contextlib.suppress(psutil.Error):
                p.kill()
        # A SIGKILLed head leaves its address in Ray's "current cluster" file, which a later
        # plain ray.init() would try to join.
        current = Path("/tmp/ray/ray_current_cluster")
        if current.is_file() and current.read_text().strip().endswith(f":{self.port}"):
            current.unlink()


def _haproxies(pid: int) -> list[psutil.Process]:
    out = []
    with contextlib.suppress(psutil.Error):
        for p in psutil.Process(pid).children(recursive=True):
            with contextlib.suppress(psutil.Error):
                if p.name() == "haproxy":
                    out.append(p)
    return out


URLS = re.compile(r"Ray dashboard at (http://\S+); metrics at (http://\S+/metrics)")


@dataclass(frozen=True)
class WatchedSearch:
    target: Path
    run: Path
    returncode: int
    stderr: str
    dashboard: str  # the URL the search printed
    dashboard_version: dict  # what the dashboard answered while the search ran
    metrics: str  # the metrics endpoint's text once it served vibeserve_round ("" if it never did)
    mid_report: Path | None  # `vibeserve report` written while the search was still running


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.read().decode()


def watch_search(target: Path, run: Path, cwd: Path, timeout_s: float = 900) -> WatchedSearch:
    """Runs `vibeserve search TARGET --run RUN` as a user would and, while it runs, asks the
    dashboard it printed for its version, reads the metrics endpoint until `vibeserve_round`
    is there, and writes a report once the first result is recorded."""
    from vibeserve_ray.report.page import write_report

    # Ray exports metrics every 10 s by default; 1 s keeps the wait short.
    env = os.environ | {"RAY_metrics_report_interval_ms": "1000"}
    proc = subprocess.Popen([sys.executable, "-m", "vibeserve_ray.cli", "search", str(target), "--run", str(run)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=cwd, env=env)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stderr.readline, "")), daemon=True)
    reader.start()
    dashboard, version, metrics, mid = "", {}, "", None
    deadline = time.monotonic() + timeout_s
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            found = next((m for m in map(URLS.search, list(lines)) if m), None)
            if found and not version:
                dashboard = found.group(1)
                version = json.loads(_get(f"{dashboard}/api/version"))
            if found and not metrics:
                text = _get(found.group(2))
                metrics = text if "ray_vibeserve_round{" in text else ""
            if mid is None and (run / "results.parquet").is_file():
                mid = write_report(run, run.parent / "mid-run-report.html")
            time.sleep(1)
        proc.wait(timeout=max(1, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.join(timeout=10)
    return WatchedSearch(target, run, proc.returncode, "".join(lines), dashboard, version, metrics, mid)


def commits_lost_to_gc(repo: Path, commits: list[str]) -> list[str]:
    """`git gc --prune=now` in `repo` with its reflogs expired first (objects no ref reaches
    are deleted), then the commits of `commits` whose object or tree can no longer be read.
    Reflogs keep a branch's old heads for 90 days, and no clone has them: a commit they
    alone keep is lost by then."""
    subprocess.run(["git", "-C", str(repo), "reflog", "expire", "--expire=now", "--all"], check=True, capture_output=True)
    subprocess.run(["git", "-C", str(repo), "gc", "--prune=now", "--quiet"], check=True, capture_output=True)
    lost = []
    for commit in commits:
        readable = subprocess.run(["git", "-C", str(repo), "cat-file", "-e", f"{commit}^{{commit}}"], capture_output=True).returncode == 0
        if not readable or subprocess.run(["git", "-C", str(repo), "archive", "--format=tar", commit], capture_output=True).returncode != 0:
            lost.append(commit)
    return lost
