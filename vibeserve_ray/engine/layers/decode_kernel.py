"""The decode kernel of `attention = decode_kernel` (attention.DecodeKernelAttention).

decode_attention.cpp, beside this file (why, and what it computes, is its header), is C++
built with the host's compiler when the engine loads (~0.5 s, once per head shape per
machine: the library is kept in the temporary directory, named by a digest of the source,
the flags and the CPU) and called through ctypes, which releases the GIL for the call.
`-march=native`: the build is for the CPU it runs on.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("decode_attention.cpp")
# Vectorising the dot products' sums needs reassociation; not -ffast-math, whose startup
# code would set flush-to-zero for the whole process when the library loads.
# -fopenmp: its loop over (sequence, KV head) pairs runs on torch's OpenMP team (torch links
# libgomp.so.1, and the loader gives this library the copy already loaded).
FLAGS = ["-O3", "-march=native", "-fno-math-errno", "-fassociative-math", "-fno-signed-zeros", "-fno-trapping-math",
         "-ffp-contract=fast", "-fopenmp", "-shared", "-fPIC"]
SYMBOLS = {torch.bfloat16: "decode_attention_bf16", torch.float32: "decode_attention_f32"}
_i64, _ptr = ctypes.c_int64, ctypes.c_void_p
ARGTYPES = [_ptr, _i64, _i64, _ptr, _ptr, _i64, _i64, _i64, _ptr, _ptr, ctypes.c_int, ctypes.c_int, ctypes.c_float, _ptr, _ptr, _i64, ctypes.c_int]


def compiler() -> str:
    """The C++ compiler the build uses ($CXX, else g++ or c++ on PATH)."""
    for name in (os.environ.get("CXX"), "g++", "c++"):
        if name and (path := shutil.which(name)):
            return path
    raise RuntimeError("design.attention = 'decode_kernel' builds a C++ kernel when the engine loads: "
                       "no C++ compiler on PATH (install g++, or set CXX)")


@functools.cache
def kernel(head_dim: int, group: int, dtype: torch.dtype, plain: bool = False) -> ctypes._CFuncPtr:
    """The decode function for heads of `head_dim` with `group` query heads per KV head
    (`plain`: the portable loops even where the CPU has AVX-512, for tests to compare)."""
    cxx = compiler()
    flags = [*FLAGS, f"-DHEAD_DIM={head_dim}", f"-DGROUP={group}", *(["-DPLAIN"] if plain else [])]
    digest = hashlib.sha256("\0".join([SOURCE.read_text(), cxx, *flags, _cpu()]).encode()).hexdigest()[:16]
    library = Path(tempfile.gettempdir()) / "vibeserve-kernels" / f"decode_attention-{digest}.so"
    if not library.is_file():
        library.parent.mkdir(parents=True, exist_ok=True)
        partial = library.with_suffix(f".{os.getpid()}.tmp")  # engine processes may build at once: rename is atomic
        # then, for a compiler without OpenMP (clang without libomp), the one-thread build
        for build in (flags, [flag for flag in flags if flag != "-fopenmp"]):
            result = subprocess.run([cxx, *build, "-o", str(partial), str(SOURCE)], capture_output=True, text=True, timeout=300)
            if result.returncode == 0:
                break
        if result.returncode != 0:
            raise RuntimeError(f"building {SOURCE.name} with {cxx} failed:\n{result.stderr[-4000:]}")
        os.replace(partial, library)
    fn = getattr(ctypes.CDLL(str(library)), SYMBOLS[dtype])
    fn.argtypes, fn.restype = ARGTYPES, None
    return fn


def _cpu() -> str:
    """What `-march=native` builds for: the CPU's model and instruction-set flags (not all of
    /proc/cpuinfo, whose clock readings change between reads and would rebuild every time)."""
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.is_file():
        return platform.processor()
    return "\n".join(sorted({line for line in cpuinfo.read_text().splitlines() if line.startswith(("model name", "flags"))}))

