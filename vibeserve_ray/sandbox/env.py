"""What candidate code may see of this machine's environment: an allow-list, defined once.

Candidate code is untrusted, and what it prints reaches its log, whose tail goes into
results, transcripts and the agents' context. A deny-list of secret-looking names let
every credential named otherwise through (a DATABASE_URL with a password in it,
AWS_ACCESS_KEY_ID, GOOGLE_APPLICATION_CREDENTIALS: 6 of 10 common shapes), so a candidate
process gets only the host's variables named here, the settings below, and what its
caller passes explicitly. `confine` builds every candidate process's environment with
`candidate_env` (the runner's candidates, `sandbox.run`); the processes a candidate
starts itself (an engine's worker processes) inherit it. The judge's scan reads the
same list: candidate code reading any other variable is a finding.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from vibeserve_ray.sandbox.view import package_dir

# Taken from the host by name: what Python, the engine's libraries and the device need.
HOST = frozenset({
    "PATH",  # the compilers torch.compile, Triton and flashinfer's JIT run
    "LANG", "LANGUAGE", "TZ",  # with every LC_* (HOST_PREFIXES)
    "PYTHONPATH",  # a source checkout stays importable (the package's root goes first)
    # Thread counts: Ray sets OMP_NUM_THREADS to the task's num_cpus; what was measured depends on them.
    "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS", "VECLIB_MAXIMUM_THREADS",
    "TOKENIZERS_PARALLELISM",
    # Device selection (Ray sets CUDA_VISIBLE_DEVICES to the GPUs a task holds) and the CUDA toolchain.
    "CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER", "NVIDIA_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES",
    "CUDA_HOME", "TORCH_CUDA_ARCH_LIST", "LD_LIBRARY_PATH",
})
HOST_PREFIXES = ("LC_",)
# The same in every candidate process, whatever the host has.
FIXED = {"PYTHONDONTWRITEBYTECODE": "1",  # keeps candidate trees free of __pycache__
         "PYTHONUNBUFFERED": "1"}  # a crash's last lines reach the log
# Scratch space, per process: in the sandbox its private /tmp (`inside_env`); unconfined, the
# runner's work directory (`scratch_env`). No vibeserve_ray variable: the engine and the front read none.
SCRATCH_DIRS = {"TMPDIR": "tmp", "TORCHINDUCTOR_CACHE_DIR": "torch-cache", "TRITON_CACHE_DIR": "triton-cache"}
INSIDE = {"HOME": "/tmp", "TMPDIR": "/tmp", "USER": "sandbox",
          "TORCHINDUCTOR_CACHE_DIR": "/tmp/torchinductor", "TRITON_CACHE_DIR": "/tmp/triton"}
BY_WRAPPER = frozenset({"PWD"})  # bubblewrap sets it to the directory it starts the command in


def passes(name: str) -> bool:
    """Whether the host's variable `name` is passed on to candidate code."""
    return name in HOST or name.startswith(HOST_PREFIXES)


def may_see(name: str) -> bool:
    """Whether candidate code may see (and read) the environment variable `name`."""
    return passes(name) or name in FIXED or name in INSIDE or name in BY_WRAPPER


def candidate_env(extra: Mapping[str, str] | None = None, host: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a candidate process: the allow-listed part of `host` (this
    process's environment), the fixed settings, the package importable, then `extra`."""
    host = os.environ if host is None else host
    env = {k: v for k, v in host.items() if passes(k)} | FIXED
    root = str(package_dir().parent)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    return env | dict(extra or {})


def inside_env(env: Mapping[str, str]) -> dict[str, str]:
    """`env` for a process inside the sandbox: everything temporary goes to its private /tmp."""
    return dict(env) | INSIDE


def scratch_env(workdir: Path) -> dict[str, str]:
    """Scratch space of an unconfined candidate process in its work directory: temporary
    files and torch.compile's caches stay out of /tmp and the home directory."""
    env = {}
    for var, name in SCRATCH_DIRS.items():
        (Path(workdir) / name).mkdir(parents=True, exist_ok=True)
        env[var] = str((Path(workdir) / name).resolve())
    return env
