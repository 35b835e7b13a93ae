"""The sandbox every piece of candidate code runs in: check, bench, evaluate, every Serve
replica (all through `runner.start_candidate`) and the agents' commands (`run`).

A confined process gets its own network namespace (no route anywhere, the host's
loopback included: its HTTP front accepts on a listening socket the caller made and
passed in), its own pid namespace (killing its root kills all it forked), a filesystem
holding only the system libraries, the Python environment, the package and the paths
the caller names (the candidate tree and the model, read-only), a private size-limited
/tmp, no capabilities, only the allow-listed environment variables (`env`), and limits
on processes (a pids cgroup where one can be made, and RLIMIT_NPROC), open files, CPU
time and bytes per file, its log included. Memory is the runner's RSS watchdog.

Built on bubblewrap where it works, else on util-linux `unshare` plus `enter`. Where
neither works, policy "required" refuses to run candidate code; "best-effort" runs it
unconfined (rlimits only) and every result carries `UNCONFINED`. Measured on a 2-core
VM: bwrap adds ~35 ms to a process start, unshare ~0.3 s (its second stage is Python),
against ~10 s for the seed candidate to import and load (benchmarks/sandbox_startup.py).
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from vibeserve_ray.sandbox import cgroup
from vibeserve_ray.sandbox.backends import BACKENDS, FORCE_ENV, Capability, doctor_lines, probe, wrapper
from vibeserve_ray.sandbox.env import candidate_env, inside_env
from vibeserve_ray.sandbox.view import Rlimits, View

__all__ = ["BACKENDS", "FORCE_ENV", "POLICIES", "UNCONFINED", "Capability", "Confined", "Rlimits", "SandboxUnavailable", "View",
           "confine", "doctor_lines", "ensure", "probe", "run"]

POLICIES = ("required", "best-effort")
UNCONFINED = 'unconfined: no sandbox on this machine ([limits] sandbox = "best-effort"); candidate code ran with the host\'s network and files'


class SandboxUnavailable(Exception):
    """Policy 'required' on a machine that cannot confine: one line naming what is missing."""


@dataclass(frozen=True)
class Confined:
    """A command ready for Popen (argv, env, preexec); `release()` once it has exited."""

    argv: list[str]
    env: dict[str, str]
    rlimits: Rlimits
    backend: str  # '' when unconfined (best-effort)
    warning: str = ""
    cgroup: Path | None = None

    def preexec(self) -> None:
        """In the child before exec: die with the parent, rlimits, the pids cgroup."""
        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except OSError:
            pass
        self.rlimits.apply()
        if self.cgroup is not None:
            cgroup.join(self.cgroup)

    def pids(self) -> list[int] | None:
        """The confined processes now, from the pids cgroup; None where there is none."""
        return None if self.cgroup is None else cgroup.members(self.cgroup)

    def forks_refused(self) -> int:
        """How many times the process limit refused a fork (0 where no cgroup counts it)."""
        return cgroup.refused(self.cgroup)

    def release(self) -> None:
        cgroup.remove(self.cgroup)


def confine(argv: list[str], env: dict[str, str], view: View, rlimits: Rlimits, policy: str, stage: Path) -> Confined:
    """`argv` wrapped to run in the sandbox (`stage`: a directory of the caller's that the
    unshare backend mounts its root on), in the allow-listed environment plus `env`.
    SandboxUnavailable when policy is 'required' and nothing confines on this machine."""
    cap = probe()
    if cap.backend:
        argv = wrapper(cap.backend, cap.userns, view, rlimits, stage) + argv
        return Confined(argv, inside_env(candidate_env(env)), rlimits, cap.backend, cgroup=cgroup.create(rlimits.processes))
    if policy == "best-effort":
        return Confined(argv, candidate_env(env), rlimits, "", UNCONFINED)
    raise SandboxUnavailable(f"no sandbox for candidate code on this machine ({cap.missing()}); install bubblewrap "
                             '(apt-get install bubblewrap) or set [limits] sandbox = "best-effort" in the target')


def ensure(policy: str) -> str:
    """'' when candidate code will be confined; the warning each result carries when it will
    run unconfined; SandboxUnavailable when it may not run at all."""
    if probe().backend:
        return ""
    return confine(["true"], {}, View(), Rlimits(), policy, Path("/nonexistent")).warning


def run(argv: list[str], view: View, rlimits: Rlimits = Rlimits(), policy: str = "required", timeout_s: float = 60,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Runs a command in the sandbox and waits: the agents' tools (their workspace in
    `view.writable`), in the allow-listed environment plus `env`. Its whole process tree is killed at the timeout (returncode -9)."""
    stage = Path(tempfile.mkdtemp(prefix="vibeserve-sandbox-"))
    box = confine(argv, env or {}, view, rlimits, policy, stage / "root")
    try:
        proc = subprocess.Popen(box.argv, env=box.env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                start_new_session=True, preexec_fn=box.preexec)
        try:
            out, err = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
        return subprocess.CompletedProcess(argv, proc.returncode, out.decode(errors="replace"), err.decode(errors="replace"))
    finally:
        box.release()
        shutil.rmtree(stage, ignore_errors=True)
