"""llama.cpp's own `llama-server` as a peer: built once from source outside the repository, and served.

llama.cpp publishes no binaries on the package registries, but the `llama-cpp-python`
source distribution carries llama.cpp's full source under `vendor/llama.cpp`. It is
fetched with pip, only `llama-server` is built (cmake + ninja, Release, -march=native, no
curl, static so the binary moves alone), under `nice -n 19` because the cores are shared,
into ~/.cache/vibeserve_ray/llama.cpp (as vllm_peer.py keeps vLLM's venv). `BUILD.json`
records what was built; a later call with the same version on the same CPU reuses it
(a -march=native binary may not run on another: SIGILL). ~7 minutes on 2 quiet cores
with gcc 12; 78 minutes at load 15-25.

Served as its users run it for throughput: continuous batching over `--parallel` slots
(one per request in flight), the GGUF itself (its own quantised kernels), its defaults
otherwise, with two exceptions this machine needs (`serve_llama`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tarfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from benchmarks.vllm_peer import answers, stop_group
from vibeserve_ray.tinymodel import cache_dir

Progress = Callable[[str], None]
VERSION = "0.3.36"  # llama-cpp-python, whose sdist vendors the llama.cpp source built here
CMAKE_FLAGS = ("-DCMAKE_BUILD_TYPE=Release", "-DLLAMA_CURL=OFF", "-DGGML_NATIVE=ON", "-DLLAMA_BUILD_TESTS=OFF",
               "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_SERVER=ON", "-DBUILD_SHARED_LIBS=OFF")
BUILD_RECORD = "BUILD.json"


def default_dir() -> Path:
    return cache_dir() / "llama.cpp"


def ensure_llama_server(build_dir: Path | None = None, say: Progress = print, version: str = VERSION, jobs: int = 2) -> Path:
    """The `llama-server` binary for `version`, building it on first use (minutes)."""
    build_dir = Path(build_dir or default_dir())
    binary, record = build_dir / "bin" / "llama-server", build_dir / BUILD_RECORD
    if binary.is_file() and _recorded(record) == (version, _cpu()):
        return binary
    t0 = time.monotonic()
    build_dir.mkdir(parents=True, exist_ok=True)
    for tool in ("cmake", "ninja", "c++"):
        if shutil.which(tool) is None:
            raise SystemExit(f"building llama-server needs `{tool}` on PATH (apt-get install cmake ninja-build g++, or pip install cmake ninja)")
    sdist = _download_sdist(build_dir / "download", version, say)
    src = _extract_llama_cpp(sdist, build_dir / "src" / f"llama.cpp-{version}", say)
    build = build_dir / "build"
    shutil.rmtree(build, ignore_errors=True)  # a half build of another version or other flags
    nice = ["nice", "-n", "19"]  # the cores are shared: the build yields to everything else
    say(f"llama.cpp: configuring ({' '.join(CMAKE_FLAGS)})")
    _run([*nice, "cmake", "-S", str(src), "-B", str(build), "-G", "Ninja", *CMAKE_FLAGS], build_dir / "configure.log")
    say(f"llama.cpp: building llama-server with -j{jobs} (several minutes; log {build_dir / 'build.log'})")
    t_build = time.monotonic()
    _run([*nice, "cmake", "--build", str(build), "--target", "llama-server", f"-j{jobs}"], build_dir / "build.log")
    binary.parent.mkdir(exist_ok=True)
    shutil.copy2(build / "bin" / "llama-server", binary.with_suffix(".tmp"))
    binary.with_suffix(".tmp").rename(binary)
    reported = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=30)
    record.write_text(json.dumps({
        "llama_cpp_python": version, "sdist": sdist.name, "sdist_sha256": hashlib.sha256(sdist.read_bytes()).hexdigest(),
        "llama_server_version": (reported.stdout + reported.stderr).strip(), "cmake_flags": list(CMAKE_FLAGS),
        "compiler": _compiler(), "cpu": _cpu(), "build_s": round(time.monotonic() - t_build), "total_s": round(time.monotonic() - t0),
    }, indent=2) + "\n")
    shutil.rmtree(build, ignore_errors=True)  # ~100 MB of objects; the static binary is all that is kept
    say(f"llama.cpp: llama-server ready at {binary} ({time.monotonic() - t0:.0f} s)")
    return binary


def _recorded(record: Path) -> tuple[str, str] | None:
    try:
        data = json.loads(record.read_text())
    except (OSError, ValueError):
        return None
    return data.get("llama_cpp_python"), data.get("cpu")


def _cpu_flags() -> list[str]:
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    return next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), [])


def _cpu() -> str:
    """The CPU model and a hash of its flags: what a -march=native build depends on."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), platform.machine())
    return f"{model} [{hashlib.sha256(' '.join(sorted(_cpu_flags())).encode()).hexdigest()[:12]}]"


def _download_sdist(dest: Path, version: str, say: Progress) -> Path:
    want = dest / f"llama_cpp_python-{version}.tar.gz"
    if want.is_file():
        return want
    say(f"llama.cpp: downloading the llama-cpp-python {version} source distribution (~77 MB)")
    # --no-binary names only this package: with :all:, pip also builds the sdist's build
    # dependencies (scikit-build-core, setuptools-scm, ...) from source just to read its metadata.
    _run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", "llama-cpp-python", "-d", str(dest),
          f"llama-cpp-python=={version}"], dest.parent / "download.log")
    if not want.is_file():
        raise SystemExit(f"pip download left no {want.name} in {dest}")
    return want


def _extract_llama_cpp(sdist: Path, dest: Path, say: Progress) -> Path:
    if (dest / "CMakeLists.txt").is_file():
        return dest
    say(f"llama.cpp: extracting vendor/llama.cpp from {sdist.name}")
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    prefix = f"{sdist.name.removesuffix('.tar.gz')}/vendor/llama.cpp/"
    with tarfile.open(sdist) as tar:
        members = []
        for m in tar.getmembers():
            if m.name.startswith(prefix) and m.name != prefix:
                m.name = m.name[len(prefix):]
                members.append(m)
        if not members:
            raise SystemExit(f"{sdist} holds no {prefix}")
        tar.extractall(tmp, members=members, filter="data")
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    return dest


def _run(cmd: list[str], log: Path) -> None:
    with open(log, "w") as out:
        done = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        raise SystemExit(f"`{' '.join(cmd)}` failed with code {done.returncode}; see {log}:\n{log.read_text(errors='replace')[-2000:]}")


def _compiler() -> str:
    try:
        return subprocess.run(["c++", "--version"], capture_output=True, text=True, timeout=10).stdout.splitlines()[0]
    except (OSError, IndexError, subprocess.TimeoutExpired):
        return "unknown"


def safe_cpu_args() -> tuple[str, ...]:
    """`--no-repack` where the CPU has AMX: this llama.cpp's AMX matmul segfaults on the first
    forward of SmolLM2's Q4_1 GGUF on Sapphire Rapids (in ggml_backend_amx_mul_mat; upstream
    ggml-org/llama.cpp#20824, closed without a fix). The flag turns off the extra weight
    buffers (AMX and CPU_REPACK), so ggml's plain CPU kernels run the matmuls."""
    flags = _cpu_flags()
    return ("--no-repack",) if "amx_int8" in flags or "amx_tile" in flags else ()


@dataclass(frozen=True)
class LlamaServer:
    """A running llama-server: where to send load, its process and its log."""

    base_url: str
    pid: int
    log: Path
    args: tuple[str, ...]
    env: dict[str, str]


@contextlib.contextmanager
def serve_llama(binary: Path, gguf: Path, alias: str, workdir: Path, *, threads: int, parallel: int, ctx_per_slot: int = 2048,
                omp_wait_policy: str = "PASSIVE", ready_timeout_s: float = 300, say: Progress = print) -> Iterator[LlamaServer]:
    """`llama-server -m GGUF -t THREADS --parallel SLOTS -c SLOTS*CTX_PER_SLOT --metrics` on a
    free loopback port, until the block ends.

    Two departures from its defaults, both for this machine: `safe_cpu_args()` (AMX), and
    OMP_WAIT_POLICY=PASSIVE (`omp_wait_policy`; '' keeps OpenMP's default): its OpenMP threads
    otherwise spin at every barrier, and with `-t 2` on 2 shared cores one descheduled thread
    stalls every step (measured at load ~4.5: 7.8 output tok/s spinning, 39.7 passive; 44.7
    with `-t 1`). On a dedicated machine spinning is what its users get, and likely faster.
    """
    port = _free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / "llama-server.log"
    args = ("-m", str(gguf), "--alias", alias, "-t", str(threads), "--parallel", str(parallel), "-c", str(parallel * ctx_per_slot),
            "--host", "127.0.0.1", "--port", str(port), "--metrics", *safe_cpu_args())
    env = {"OMP_WAIT_POLICY": omp_wait_policy} if omp_wait_policy else {}
    say(f"llama.cpp: starting `{' '.join(f'{k}={v}' for k, v in env.items())} llama-server {' '.join(args)}` (log {log})")
    with open(log, "ab") as out:
        proc = subprocess.Popen([str(binary), *args], cwd=str(workdir), env=os.environ | env, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        t0 = time.monotonic()
        while not answers(base + "/health"):  # 503 while it loads the model
            if proc.poll() is not None:
                raise SystemExit(f"llama-server exited with code {proc.returncode} while starting; see {log}:\n"
                                 + log.read_text(errors="replace")[-2000:])
            if time.monotonic() - t0 > ready_timeout_s:
                raise SystemExit(f"llama-server not healthy within {ready_timeout_s:g} s; see {log}")
            time.sleep(0.25)
        say(f"llama.cpp: ready in {time.monotonic() - t0:.1f} s at {base}")
        yield LlamaServer(base, proc.pid, log, args, env)
    finally:
        stop_group(proc)


def metrics(base_url: str) -> dict[str, float]:
    """Its Prometheus counters (`--metrics`): seconds spent on prompts and on generated
    tokens, tokens of each, decode calls and busy slots per decode."""
    with urllib.request.urlopen(base_url + "/metrics", timeout=10) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith("llamacpp:"):
            name, _, value = line.partition(" ")
            out[name.removeprefix("llamacpp:")] = float(value)
    return out


def where_time_goes(before: dict[str, float], after: dict[str, float], seconds: float, busy_cores: float) -> dict:
    """What a run spent, from two `metrics` readings around it: llama-server is C++, which
    py-spy does not see, so its own counters say how its time split between prefill and decode."""
    d = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
    prompt_s, decode_s = d.get("prompt_seconds_total", 0.0), d.get("tokens_predicted_seconds_total", 0.0)
    return {"busy_cores": round(busy_cores, 2), "wall_s": round(seconds, 1),
            "prefill_s": round(prompt_s, 1), "decode_s": round(decode_s, 1),
            "prompt_tokens": int(d.get("prompt_tokens_total", 0)), "generated_tokens": int(d.get("tokens_predicted_total", 0)),
            "decode_calls": int(d.get("n_decode_total", 0)), "mean_busy_slots_per_decode": round(after.get("n_busy_slots_per_decode", 0.0), 2),
            "note": "prefill_s and decode_s sum the per-slot time of each phase (overlapping slots count each)"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


if __name__ == "__main__":
    print(ensure_llama_server(say=lambda m: print(m, file=sys.stderr, flush=True)))
