"""The two ways of confining (bubblewrap, else util-linux `unshare` + our second stage),
and which of them works on this machine."""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from vibeserve_ray.sandbox import cgroup
from vibeserve_ray.sandbox.env import candidate_env
from vibeserve_ray.sandbox.view import SHM_BYTES, Rlimits, View

BACKENDS = ("bwrap", "unshare")
FORCE_ENV = "VIBESERVE_SANDBOX_BACKEND"  # bwrap | unshare | none: use this one (tests, benchmarks, a broken bwrap)
NOBODY = 65534


@dataclass(frozen=True)
class Capability:
    """What this machine can do: the backend used ('' when none), whether the sandbox has
    a user namespace of its own, whether a pids cgroup holds its process count, and why
    better options are not there."""

    backend: str
    userns: bool = False
    pids_cgroup: bool = False
    notes: tuple[str, ...] = ()

    def missing(self) -> str:
        return "; ".join(self.notes) or "no sandbox backend"

    @property
    def process_limit(self) -> bool:
        """RLIMIT_NPROC binds only tasks of a kernel uid other than 0."""
        return self.pids_cgroup or os.geteuid() != 0


def bwrap_argv(view: View, rlimits: Rlimits, userns: bool) -> list[str]:
    argv = ["bwrap", "--unshare-net", "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try", "--die-with-parent",
            "--cap-drop", "ALL"]
    if userns:
        argv += ["--unshare-user", "--uid", str(NOBODY), "--gid", str(NOBODY), "--disable-userns"]
    # /dev and / are read-only: bwrap's own tmpfs there would be a disk with no size limit.
    argv += ["--proc", "/proc", "--dev", "/dev", "--size", str(SHM_BYTES), "--tmpfs", "/dev/shm", "--remount-ro", "/dev",
             "--size", str(rlimits.disk_mb << 20), "--tmpfs", "/tmp"]
    flag = {"ro": "--ro-bind", "rw": "--bind", "dev": "--dev-bind"}
    for kind, src, dest in view.mounts():
        argv += ["--symlink", src, dest] if kind == "symlink" else [flag[kind], src, dest]
    return argv + ["--remount-ro", "/", "--chdir", view.workdir, "--"]


def unshare_argv(view: View, rlimits: Rlimits, userns: bool, stage: Path) -> list[str]:
    """`stage`: an empty directory the second stage mounts the new root on."""
    stage.mkdir(parents=True, exist_ok=True)
    argv = ["unshare", "--net", "--mount", "--pid", "--ipc", "--uts", "--fork", "--kill-child", "--propagation", "private"]
    argv += ["--user", "--map-root-user"] if userns else []
    plan = {"root": str(stage), "mounts": view.mounts(), "disk_bytes": rlimits.disk_mb << 20, "workdir": view.workdir}
    return argv + [sys.executable, "-s", "-m", "vibeserve_ray.sandbox.enter", json.dumps(plan), "--"]


def wrapper(backend: str, userns: bool, view: View, rlimits: Rlimits, stage: Path) -> list[str]:
    return bwrap_argv(view, rlimits, userns) if backend == "bwrap" else unshare_argv(view, rlimits, userns, stage)


def _works(backend: str, userns: bool) -> str:
    """'' when the backend confines /bin/true and it exits 0, else its error's last line."""
    with tempfile.TemporaryDirectory(prefix="vibeserve-sandbox-probe-") as tmp:
        argv = wrapper(backend, userns, View(), Rlimits(), Path(tmp) / "root") + ["/bin/true"]
        try:
            r = subprocess.run(argv, capture_output=True, text=True, timeout=30, env=candidate_env())
        except (OSError, subprocess.TimeoutExpired) as exc:
            return str(exc)
    return "" if r.returncode == 0 else (r.stderr.strip().splitlines() or [f"exit {r.returncode}"])[-1]


@functools.cache
def probe() -> Capability:
    """Tries each way of confining once per process (tens of ms), best first: with a user
    namespace of its own, then (as root) without one."""
    forced = os.environ.get(FORCE_ENV, "")
    notes: list[str] = []
    if forced and forced not in (*BACKENDS, "none"):
        notes.append(f"{FORCE_ENV}={forced!r} is not one of bwrap, unshare, none")
    order = []
    for backend in BACKENDS:
        if forced and forced != backend:
            continue
        if shutil.which(backend) is None:
            notes.append(f"{backend} not installed" + (" (apt-get install bubblewrap)" if backend == "bwrap" else ""))
        else:
            order.append(backend)
    errors: dict[str, str] = {}
    pids = cgroup.pids_parent() is not None
    for userns in (True, False):
        for backend in order:
            if not userns and os.geteuid() != 0:
                errors.setdefault(backend, "no user namespaces, and not root")
                continue
            err = _works(backend, userns)
            if not err:
                if not userns:
                    notes.append("no user namespaces: the candidate runs as root without capabilities")
                return Capability(backend, userns, pids, tuple(notes))
            errors[backend] = err
    notes += [f"{b} cannot create namespaces: {e}" for b, e in errors.items()]
    if forced == "none":
        notes.append(f"{FORCE_ENV}=none")
    return Capability("", False, pids, tuple(notes))


def doctor_lines() -> list[str]:
    """What the sandbox on this machine does, for `vibeserve doctor`."""
    cap = probe()
    if not cap.backend:
        lines = ["sandbox: NONE: candidate code would run with the host's network and files",
                 "  [limits] sandbox = \"required\" (the default) refuses to run it; \"best-effort\" runs it with a warning"]
        return lines + [f"  note: {n}" for n in cap.notes]
    who = {("bwrap", True): f"uid {NOBODY} of a user namespace of its own", ("unshare", True): "root of a user namespace of its own"}
    procs = ("a pids cgroup per process (pids.max) and RLIMIT_NPROC" if cap.pids_cgroup else
             "RLIMIT_NPROC" if cap.process_limit else "NOT LIMITED (root, and no writable pids cgroup)")
    lines = [
        f"sandbox: {cap.backend} ({shutil.which(cap.backend)}): candidate code runs confined, as "
        f"{who.get((cap.backend, cap.userns), 'root')}, with no capabilities",
        "  network: a namespace of its own, no route out (its front accepts on a socket passed in)",
        "  processes: a pid namespace of its own (killing its root kills all it forked); count limited by " + procs,
        "  files: system libraries, the Python environment, the vibeserve_ray package, the candidate and the model "
        "(read-only); a private size-limited /tmp; no home, run or target directory",
        "  limits: memory (RSS watchdog), open files, CPU time, bytes per file and output (rlimits), disk (the /tmp size)",
    ]
    return lines + [f"  note: {n}" for n in cap.notes]
