"""What a confined process sees (`View`: the mounts) and what it may take (`Rlimits`)."""

from __future__ import annotations

import os
import resource
import site
import sys
from dataclasses import dataclass
from pathlib import Path

SYSTEM_DIRS = ("usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32")
SHM_BYTES = 64 << 20  # /dev/shm, beside the private /tmp
ETC_FILES = ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "localtime", "passwd", "group", "nsswitch.conf")


@dataclass(frozen=True)
class Rlimits:
    """What one confined process may take, beyond memory (the runner's RSS watchdog)."""

    processes: int = 1024  # tasks, threads included (a pids cgroup where one can be made, and RLIMIT_NPROC)
    open_files: int = 4096
    cpu_time_s: float | None = 3600.0  # None: unlimited (a long-running server)
    file_mb: int = 512  # bytes per file written, the log included: an output flood stops there (torch.compile writes a 128-256 MiB header)
    disk_mb: int = 1024  # the private /tmp, all files together

    def apply(self) -> None:
        """Sets the rlimits in this process (a child's preexec); they pass through the wrapper."""
        def cap(kind: int, value: int) -> None:
            hard = resource.getrlimit(kind)[1]
            value = value if hard == resource.RLIM_INFINITY else min(value, hard)
            resource.setrlimit(kind, (value, value))

        cap(resource.RLIMIT_NPROC, self.processes)
        cap(resource.RLIMIT_NOFILE, self.open_files)
        cap(resource.RLIMIT_FSIZE, self.file_mb << 20)
        cap(resource.RLIMIT_CORE, 0)
        if self.cpu_time_s is not None:
            cap(resource.RLIMIT_CPU, max(1, int(self.cpu_time_s)))


def package_dir() -> Path:
    """The vibeserve_ray package alone (never the repository around it: targets, tests)."""
    return Path(__file__).resolve().parent.parent


def python_paths() -> list[Path]:
    """The interpreter and its installed packages (not sys.path at large: under Ray it holds
    the job's working directory, targets included)."""
    paths = {sys.prefix, sys.base_prefix, sys.exec_prefix, *site.getsitepackages()}
    user_site = site.getusersitepackages()
    if user_site and Path(user_site).is_dir() and user_site in sys.path:
        paths.add(user_site)
    paths.add(str(Path(sys.executable).resolve().parent))
    return [Path(p) for p in paths if Path(p).exists()]


@dataclass(frozen=True)
class View:
    """The filesystem a confined process sees: the system libraries, Python, the package,
    and what the caller names (`readable` read-only, `writable` read-write)."""

    readable: tuple[Path, ...] = ()
    writable: tuple[Path, ...] = ()
    device: str = "cpu"
    workdir: str = "/tmp"  # the process's working directory inside

    def mounts(self) -> list[tuple[str, str, str]]:
        """(kind, source, destination), parents before children; kind is symlink, ro, rw or dev."""
        ops: list[tuple[str, str, str]] = []
        for name in SYSTEM_DIRS:
            host = Path("/") / name
            if host.is_symlink():
                ops.append(("symlink", os.readlink(host), str(host)))
            elif host.is_dir():
                ops.append(("ro", str(host), str(host)))
        binds: dict[str, str] = {f"/etc/{f}": "ro" for f in ETC_FILES if (Path("/etc") / f).exists()}
        for p in [*python_paths(), package_dir(), *self.readable]:
            for q in {Path(p).absolute(), Path(p).resolve()}:
                binds.setdefault(str(q), "ro")
        for p in self.writable:
            binds[str(Path(p).resolve())] = "rw"
        if self.device == "cuda":
            binds["/sys"] = "ro"
            for node in sorted(Path("/dev").glob("nvidia*")):
                binds[str(node)] = "dev"
        elif Path("/sys/devices/system/cpu").is_dir():
            binds["/sys/devices/system/cpu"] = "ro"  # core counts: torch sizes its thread pools from them
        covered: list[tuple[str, str]] = []
        for dest in sorted(binds, key=lambda d: (d.count("/"), d)):
            kind = binds[dest]
            if any(dest.startswith(c.rstrip("/") + "/") and k == kind for c, k in covered):
                continue
            covered.append((dest, kind))
            ops.append((kind, dest, dest))
        return ops
