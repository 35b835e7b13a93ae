"""A pids cgroup per confined process: the process limit that holds for root too.

RLIMIT_NPROC is not enforced for tasks whose kernel uid is 0, and a sandbox run by root
keeps kernel uid 0 (a user namespace maps its users onto the caller's, and the model
and the Python environment may be readable by root alone), so a fork bomb there would
be stopped only by the host's pid_max (32768 on the machine this was built on). Where
a pids controller is writable (cgroup v1 `pids`, or v2 with `pids` delegated), each
confined process gets a child cgroup with `pids.max`; elsewhere the rlimit is all there is.
"""

from __future__ import annotations

import functools
import itertools
import os
import signal
import time
from pathlib import Path

_names = itertools.count()


def _own_path(controller: str) -> str:
    """This process's cgroup path in the v1 hierarchy holding `controller` ('' = v2)."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if (controller and controller in controllers.split(",")) or (not controller and controllers == ""):
            return path
    raise LookupError(controller)


@functools.cache
def pids_parent() -> Path | None:
    """The directory under which this process may create pids cgroups, or None."""
    try:
        mounts = [line.split(" - ") for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    except OSError:
        return None
    candidates = []
    for left, right in mounts:
        fstype, _, options = right.split()[:3]
        point = left.split()[4]
        if fstype == "cgroup" and "pids" in options.split(","):
            candidates.append(Path(point) / _own_path("pids").lstrip("/"))
        elif fstype == "cgroup2":
            base = Path(point) / _own_path("").lstrip("/")
            try:
                if "pids" in (base / "cgroup.subtree_control").read_text().split():
                    candidates.append(base)
            except OSError:
                pass
    for base in candidates:
        probe = base / f"vibeserve-probe-{os.getpid()}"
        try:
            probe.mkdir()
            probe.rmdir()
            return base
        except OSError:
            continue
    return None


def create(max_pids: int) -> Path | None:
    """A fresh cgroup allowing `max_pids` tasks, or None where none can be made."""
    parent = pids_parent()
    if parent is None:
        return None
    path = parent / f"vibeserve-{os.getpid()}-{next(_names)}"
    try:
        path.mkdir()
        (path / "pids.max").write_text(str(max_pids))
    except OSError:
        remove(path)
        return None
    return path


def join(path: Path) -> None:
    """Moves the calling process into `path` (a child's preexec, before exec)."""
    with open(path / "cgroup.procs", "w") as f:
        f.write("0")


def members(path: Path) -> list[int]:
    """The pids in the cgroup now (the confined process and everything it started)."""
    try:
        return [int(pid) for pid in (path / "cgroup.procs").read_text().split()]
    except (OSError, ValueError):
        return []


def refused(path: Path | None) -> int:
    """Forks refused at pids.max so far (the 'max' count in pids.events)."""
    if path is None:
        return 0
    try:
        for line in (path / "pids.events").read_text().splitlines():
            key, value = line.split()
            if key == "max":
                return int(value)
    except (OSError, ValueError):
        pass
    return 0


def remove(path: Path | None, wait_s: float = 2.0) -> None:
    """Kills whatever is left in the cgroup and removes it (best effort: an empty
    leftover is harmless)."""
    if path is None:
        return
    deadline = time.monotonic() + wait_s
    while True:
        try:
            for pid in (path / "cgroup.procs").read_text().split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except ProcessLookupError:
                    pass
            path.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            if time.monotonic() > deadline:
                return
            time.sleep(0.05)
