"""The unshare backend's second stage, run inside fresh namespaces as their root.

`unshare` gives new user (or, as root, none), mount, network, pid, ipc and uts
namespaces but no filesystem view; this builds one on a tmpfs (the plan's mounts, a
proc, a size-limited /tmp, a few device nodes), pivots into it, drops every capability
and execs the command. Light imports only: it runs before every confined process.

    python -m vibeserve_ray.sandbox.enter PLAN_JSON -- COMMAND...
"""

from __future__ import annotations

import ctypes
import json
import os
import platform
import sys
from pathlib import Path

from vibeserve_ray.sandbox.view import SHM_BYTES

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT, MS_BIND, MS_REC = 1, 2, 4, 8, 32, 4096, 16384
MNT_DETACH = 2
PR_SET_NO_NEW_PRIVS, PR_CAPBSET_DROP = 38, 24
SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41}
DEV_NODES = ("null", "zero", "full", "random", "urandom")

_libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount(src: str | None, dest: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    enc = lambda s: s.encode() if s is not None else None  # noqa: E731
    _check(_libc.mount(enc(src), enc(dest), enc(fstype), ctypes.c_ulong(flags), enc(data)), f"mount {src} on {dest}")


def _bind(src: str, dest: str, kind: str) -> None:
    if Path(src).is_dir():
        os.makedirs(dest, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        Path(dest).touch()
    _mount(src, dest, None, MS_BIND | MS_REC)
    if kind == "ro":
        # A remount in a user namespace must keep the flags the host's mount locked.
        locked = os.statvfs(src).f_flag & (MS_NOSUID | MS_NODEV | MS_NOEXEC)
        _mount(None, dest, None, MS_REMOUNT | MS_BIND | MS_RDONLY | locked)


def _tmpfs(dest: str, size: int, mode: str = "1777") -> None:
    os.makedirs(dest, exist_ok=True)
    _mount("tmpfs", dest, "tmpfs", MS_NOSUID | MS_NODEV, f"size={size},mode={mode}")


def _drop_capabilities() -> None:
    """Nothing survives exec: no new privileges, an empty bounding set, then empty
    effective, permitted and inheritable sets (capset, version 3)."""
    _libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    for cap in range(64):
        _libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0)
    header = (ctypes.c_uint32 * 2)(0x20080522, 0)
    _check(_libc.capset(header, (ctypes.c_uint32 * 6)()), "capset")


def enter(plan: dict, argv: list[str]) -> None:
    """Builds the root on the plan's empty directory, pivots into it, execs `argv`."""
    root = plan["root"]
    _tmpfs(root, 4 << 20, "755")
    os.makedirs(root + "/proc")
    _mount("proc", root + "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    _bind(root + "/proc/sys", root + "/proc/sys", "ro")
    _tmpfs(root + "/tmp", plan["disk_bytes"])
    for node in DEV_NODES:
        _bind(f"/dev/{node}", f"{root}/dev/{node}", "dev")
    _tmpfs(root + "/dev/shm", SHM_BYTES)
    for name, to in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2")):
        os.symlink(to, f"{root}/dev/{name}")
    for kind, src, dest in plan["mounts"]:
        if kind == "symlink":
            os.symlink(src, root + dest)
        else:
            _bind(src, root + dest, kind)
    _mount(None, root, None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)
    os.chdir(root)
    _check(_libc.syscall(SYS_PIVOT_ROOT[platform.machine()], b".", b"."), "pivot_root")
    _check(_libc.umount2(b".", MNT_DETACH), "umount the host's root")
    os.chdir(plan["workdir"])
    _drop_capabilities()
    os.execvpe(argv[0], argv, os.environ)


if __name__ == "__main__":
    split = sys.argv.index("--")
    enter(json.loads(sys.argv[1]), sys.argv[split + 1:])
