"""Runs an untrusted candidate: a subprocess behind the shared HTTP front, with limits.

The process runs in the sandbox (`vibeserve_ray.sandbox`: no network, only the candidate,
the model and the Python environment to read, only allow-listed environment variables,
rlimits) in its own session (so its whole group can be killed), with a start-up
timeout, and a watchdog that kills it past its memory limit. Its front accepts on a loopback socket
this process listens on and passes in, so `base_url` is known before it starts and
serves plain aiohttp clients. Whatever goes wrong becomes a `CandidateFailure` (phase,
reason, log tail): a recorded result, never a hung or crashed caller.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import psutil

from vibeserve_ray.candidate import CandidateSpec
from vibeserve_ray.sandbox import Rlimits, SandboxUnavailable, View, confine
from vibeserve_ray.sandbox.env import scratch_env

LOG_TAIL_BYTES = 4000


@dataclass(frozen=True)
class Limits:
    """The target's [limits] (`LimitsSpec`), as the runner applies them."""

    startup_timeout_s: float = 120.0
    request_timeout_s: float = 60.0
    memory_mb: int = 6144
    sandbox: str = "required"  # or "best-effort": run unconfined, with a warning, where no sandbox works
    processes: int = Rlimits.processes
    open_files: int = Rlimits.open_files
    cpu_time_s: float | None = Rlimits.cpu_time_s
    disk_mb: int = Rlimits.disk_mb
    output_mb: int = Rlimits.file_mb

    def rlimits(self) -> Rlimits:
        return Rlimits(self.processes, self.open_files, self.cpu_time_s, self.output_mb, self.disk_mb)


@dataclass(frozen=True)
class CandidateFailure:
    """Why a candidate did not produce a result; `phase` is where it happened
    (startup, crash, memory, check, bench, ...)."""

    phase: str
    reason: str
    log_tail: str = ""

    def to_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        return f"FAIL ({self.phase}): {self.reason}\n--- log tail ---\n{self.log_tail.rstrip()}"


class CandidateFailed(Exception):
    def __init__(self, failure: CandidateFailure):
        super().__init__(f"{failure.phase}: {failure.reason}")
        self.failure = failure


class CandidateProcess:
    """A running candidate server. Use as a context manager; `stop()` is idempotent."""

    def __init__(self, spec: CandidateSpec, model_dir: Path, tokenizer_dir: Path, served_name: str, device: str, limits: Limits, workdir: Path,
                 knobs: dict | None = None, profile_dir: Path | None = None, cancel: threading.Event | None = None):
        self.spec, self.limits, self.served_name = spec, limits, served_name
        workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = workdir / "server.log"
        listener = socket.create_server(("127.0.0.1", 0), backlog=1024)
        self.base_url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        cmd = [sys.executable, "-m", "vibeserve_ray.serve.worker", "--candidate", str(spec.path), "--model", str(model_dir),
               "--tokenizer", str(tokenizer_dir), "--device", device, "--served-name", served_name, "--listen-fd", str(listener.fileno())]
        if knobs:
            cmd += ["--knobs", json.dumps(knobs)]
        if profile_dir is not None:
            profile_dir.mkdir(parents=True, exist_ok=True)
            cmd += ["--profile", str(profile_dir.resolve())]
        view = View(readable=(spec.path, model_dir, tokenizer_dir), writable=(profile_dir,) if profile_dir else (), device=device)
        try:
            self._box = confine(cmd, scratch_env(workdir), view, limits.rlimits(), limits.sandbox, workdir / "sandbox-root")
        except SandboxUnavailable as exc:
            listener.close()
            raise CandidateFailed(CandidateFailure("sandbox", str(exc))) from None
        box = self._box
        self.sandbox_backend, self.sandbox_warning = box.backend, box.warning
        self._log = open(self.log_path, "wb")  # a fresh file: the output limit counts this process's bytes
        try:
            self.proc = subprocess.Popen(
                box.argv, cwd=str(workdir), env=box.env, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
                start_new_session=True, preexec_fn=box.preexec, pass_fds=(listener.fileno(),),
            )
        finally:
            listener.close()  # the child holds it now: once it dies, connections are refused, not queued
        self._failure: CandidateFailure | None = None
        self._ready = False
        self._cancel = cancel or threading.Event()
        self._stopping = threading.Event()
        self._watchdog = threading.Thread(target=self._watch, name=f"watchdog-{self.proc.pid}", daemon=True)
        self._watchdog.start()
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    # --- lifecycle ------------------------------------------------------------------

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.limits.startup_timeout_s
        while time.monotonic() < deadline:
            if self._failure:
                raise CandidateFailed(self._failure)
            if self._cancel.is_set():
                raise CandidateFailed(CandidateFailure("startup", "cancelled by the caller", self.log_tail()))
            if self._healthy():
                self._ready = True
                return
            time.sleep(0.1)
        self._fail("startup", f"not healthy within {self.limits.startup_timeout_s:g}s")
        raise CandidateFailed(self._failure)  # type: ignore[arg-type]

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.base_url + "/health", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def _watch(self) -> None:
        limit = self.limits.memory_mb * 1024 * 1024
        tree = _Tree(self.proc.pid, self._box.pids)
        while not self._stopping.wait(0.1):
            code = self.proc.poll()
            if code is not None:
                self._fail("startup" if not self._ready else "crash", self._exit_reason(code), kill=False)
                return
            rss = tree.rss()
            if rss > limit:
                self._fail("memory", f"used {rss / 2**20:.0f} MiB, over the {self.limits.memory_mb} MiB limit")
                return
            if self._box.forks_refused():  # an engine has no use for that many tasks: a fork bomb
                self._fail("processes", f"hit its limit of {self.limits.processes} processes (threads included)")
                return

    def _exit_reason(self, code: int) -> str:
        reason = f"process exited with code {code}"
        try:
            flooded = self.log_path.stat().st_size >= self.limits.output_mb << 20
        except OSError:
            flooded = False
        if flooded or code == -signal.SIGXFSZ:  # Python ignores SIGXFSZ: its writes fail with EFBIG instead
            reason += f": its output reached the {self.limits.output_mb} MiB limit"
        elif code == -signal.SIGXCPU:
            reason += f": used more than its {self.limits.cpu_time_s:g} s of CPU time"
        return reason

    def _fail(self, phase: str, reason: str, kill: bool = True) -> None:
        if self._failure is None and not self._stopping.is_set():
            if kill:
                self._kill_group()
            self._failure = CandidateFailure(phase, reason, self.log_tail())

    def failure(self) -> CandidateFailure | None:
        """Set by the watchdog when the process died or went over its memory limit."""
        return self._failure

    def explain(self, phase: str, reason: str) -> CandidateFailure:
        """The failure to record after a client-side error: the watchdog's, if any, knows more."""
        time.sleep(0.2)  # let the watchdog notice a death that caused the client error
        return self._failure or CandidateFailure(phase, reason, self.log_tail())

    def log_tail(self) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(max(0, f.seek(0, 2) - LOG_TAIL_BYTES))
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def _kill_group(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()

    def stop(self) -> None:
        """SIGTERM to the process group, SIGKILL after 3 s; waits until it is gone."""
        self._stopping.set()
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=3)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
        self._kill_group()
        self._box.release()
        self._log.close()

    def __enter__(self) -> "CandidateProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


class _Tree:
    """The candidate's processes and their resident memory, for the watchdog's 10 checks a
    second. Listing a process's descendants reads every process's /proc entry on the node
    (psutil: ~1 ms with 100 processes, 1% of a core at 10 Hz, beside an engine that fills
    the node's cores); the sandbox's pids cgroup names them in one read, and without one
    the list is refreshed once a second while the known members' memory is read each time."""

    REFRESH_S = 1.0

    def __init__(self, pid: int, cgroup_pids: Callable[[], list[int] | None]):
        self.pid, self.cgroup_pids = pid, cgroup_pids
        self.procs: dict[int, psutil.Process] = {}
        self.listed_at = -self.REFRESH_S

    def rss(self) -> int:
        self._refresh()
        total = 0
        for p in self.procs.values():
            try:
                total += p.memory_info().rss
            except psutil.Error:
                pass
        return total

    def _refresh(self) -> None:
        pids = self.cgroup_pids()
        if not pids:  # no cgroup (or not joined yet): the process tree, listed at most once a REFRESH_S
            now = time.monotonic()
            if now - self.listed_at < self.REFRESH_S:
                return
            self.listed_at = now
            try:
                root = psutil.Process(self.pid)
                pids = [root.pid, *(c.pid for c in root.children(recursive=True))]
            except psutil.Error:
                pids = []
        for pid in set(self.procs) - set(pids):
            del self.procs[pid]
        for pid in pids:
            if pid not in self.procs:
                try:
                    self.procs[pid] = psutil.Process(pid)
                except psutil.Error:
                    pass


def start_candidate(spec: CandidateSpec, model_dir: Path, tokenizer_dir: Path, served_name: str, device: str, limits: Limits, workdir: Path,
                    knobs: dict | None = None, profile_dir: Path | None = None, cancel: threading.Event | None = None) -> CandidateProcess:
    """Starts the candidate (its own knobs, or `knobs` over them; under torch.profiler, its
    trace written to `profile_dir`, with that) and waits until it is healthy; CandidateFailed
    otherwise (also once `cancel` is set)."""
    return CandidateProcess(spec, model_dir, tokenizer_dir, served_name, device, limits, workdir, knobs, profile_dir, cancel)
