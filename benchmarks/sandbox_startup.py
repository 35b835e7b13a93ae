"""What the sandbox adds to starting a candidate process (the search starts thousands).

Starts the seed candidate until its front answers /health, unconfined and under each
backend this machine has, in interleaved rounds; reports the median start-up time per
backend and its ratio to the unconfined start in the same run. The wrapper alone
(`bwrap ... /bin/true`, `unshare ... /bin/true`) is timed too.

    python benchmarks/sandbox_startup.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vibeserve_ray import sandbox  # noqa: E402
from vibeserve_ray.candidate import load_candidate  # noqa: E402
from vibeserve_ray.runner import Limits, start_candidate  # noqa: E402
from vibeserve_ray.seed import materialise_seed  # noqa: E402
from vibeserve_ray.target import load_target  # noqa: E402

TARGET = Path(__file__).resolve().parent.parent / "targets" / "tiny-llama-cpu"


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def use(backend: str) -> None:
    os.environ[sandbox.FORCE_ENV] = backend
    sandbox.probe.cache_clear()


def wrapper_ms(backend: str, repeats: int) -> float:
    use(backend)
    cap = sandbox.probe()
    argv = sandbox.confine(["/bin/true"], dict(os.environ), sandbox.View(), sandbox.Rlimits(), "required", Path(tempfile.mkdtemp()) / "root").argv
    times = []
    for _ in range(repeats * 4):
        t0 = time.perf_counter()
        subprocess.run(argv, check=True)
        times.append((time.perf_counter() - t0) * 1000)
    assert cap.backend == backend
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    available = []
    for backend in sandbox.BACKENDS:
        use(backend)
        if sandbox.probe().backend == backend:
            available.append(backend)
    target = load_target(TARGET)
    with tempfile.TemporaryDirectory(prefix="vibeserve-sandbox-startup-") as tmp:
        spec = load_candidate(materialise_seed(Path(tmp) / "seed"))
        kinds = ["none", *available]
        times: dict[str, list[float]] = {k: [] for k in kinds}
        for r in range(args.repeats):
            for kind in kinds:
                use(kind)
                limits = Limits(**{**target.spec.limits.model_dump(), "sandbox": "best-effort" if kind == "none" else "required"})
                t0 = time.perf_counter()
                with start_candidate(spec, target.model_dir(), target.tokenizer_dir(), target.served_name, "cpu", limits,
                                     Path(tmp) / f"{kind}-{r}") as proc:
                    times[kind].append(time.perf_counter() - t0)
                    assert proc.sandbox_backend == ("" if kind == "none" else kind)
                say(f"round {r + 1}: {kind}: {times[kind][-1]:.2f} s")
        base = statistics.median(times["none"])
        out = {
            "what": "seed candidate start to healthy front, median of interleaved repeats",
            "repeats": args.repeats,
            "unconfined_s": round(base, 3),
            "backends": {k: {"startup_s": round(statistics.median(times[k]), 3), "ratio_to_unconfined": round(statistics.median(times[k]) / base, 3),
                             "added_s": round(statistics.median(times[k]) - base, 3), "wrapper_alone_ms": round(wrapper_ms(k, args.repeats), 1)}
                         for k in available},
        }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
