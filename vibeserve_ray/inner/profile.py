"""Where a candidate's time goes: a short benchmark under torch.profiler, and py-spy where installed.

The candidate runs through the sandboxed runner as always; with `profile_dir` (the one
directory it may write to) its worker starts torch.profiler (all threads: the engine steps in its own) before the
engine is built and serves the table of the operators that took the most time on a
route only that flag adds. py-spy, when installed, samples the worker's Python stacks
from outside during the same run and adds the hottest Python functions.
"""

from __future__ import annotations

import asyncio
import collections
import json
import shutil
import signal
import subprocess
import urllib.request
from dataclasses import replace
from pathlib import Path
from typing import Callable

from vibeserve_ray.candidate import CandidateSpec
from vibeserve_ray.inner.evaluate import bench_running
from vibeserve_ray.inner.workload import target_workload
from vibeserve_ray.runner import CandidateFailed, Limits, start_candidate
from vibeserve_ray.serve.worker import PROFILE_PATH
from vibeserve_ray.target import Target

TOP_FUNCTIONS = 15
TRACE_MB = 1024
TOP_OPS = 25


def profile_candidate(target: Target, spec: CandidateSpec, workdir: Path, num_requests: int, say: Callable[[str], None] = lambda s: None) -> str:
    """The benchmark's headline, the top-operators table and (with py-spy) the hottest
    Python functions of a short run; or why the candidate did not run."""
    requests = target_workload(target, num_requests)
    # the trace is ~260 bytes an operator call: a short run of the tiny model writes tens of MB,
    # over the sandbox's default cap on one file's size
    limits = replace(Limits(**target.spec.limits.model_dump()), output_mb=TRACE_MB)
    try:
        with start_candidate(spec, target.model_dir(), target.tokenizer_dir(), target.served_name, target.spec.hardware.device, limits,
                             workdir, profile_dir=workdir / "profile") as proc:
            spy = _start_py_spy(proc.proc.pid, workdir / "py-spy.txt")
            report = asyncio.run(bench_running(proc, target, requests, say))
            stacks = _stop_py_spy(spy, workdir / "py-spy.txt")
            with urllib.request.urlopen(proc.base_url + PROFILE_PATH, timeout=120) as r:
                trace = workdir / "profile" / json.loads(r.read())["trace"]
            if not trace.is_file():
                return f"the profiler wrote no trace; the candidate's log ends:\n{proc.log_tail()}"
            table = op_table(json.loads(trace.read_text()).get("traceEvents", []))
    except CandidateFailed as exc:
        return exc.failure.describe()
    head = f"{report.headline_name} = {report.headline_value:.2f} over {report.metrics.completed} requests (profiling slows it down)\n\n"
    return head + "torch.profiler, operators by self time:\n" + table + (f"\n\npy-spy, Python functions by samples:\n{stacks}" if stacks else "")


def op_table(events: list[dict], rows: int = TOP_OPS) -> str:
    """Operators by self time (an op's time minus the ops it called, per thread) from a
    Chrome trace; GPU kernels by their own time."""
    self_us: collections.Counter[str] = collections.Counter()
    total_us: collections.Counter[str] = collections.Counter()
    calls: collections.Counter[str] = collections.Counter()
    by_thread: dict[tuple, list[dict]] = collections.defaultdict(list)
    for e in events:
        if e.get("ph") == "X" and e.get("cat") in ("cpu_op", "kernel"):
            by_thread[(e.get("cat"), e.get("pid"), e.get("tid"))].append(e)
    for thread in by_thread.values():
        thread.sort(key=lambda e: (e["ts"], -e["dur"]))
        stack: list[tuple[float, str]] = []  # (end time, name) of the ops still open
        for e in thread:
            while stack and stack[-1][0] <= e["ts"]:
                stack.pop()
            if stack:
                self_us[stack[-1][1]] -= e["dur"]  # the caller's self time excludes this call
            name = ("kernel " if e["cat"] == "kernel" else "") + e["name"]
            self_us[name] += e["dur"]
            total_us[name] += e["dur"]
            calls[name] += 1
            stack.append((e["ts"] + e["dur"], name))
    all_self = sum(v for v in self_us.values() if v > 0) or 1.0
    lines = [f"{'self ms':>10} {'self %':>7} {'total ms':>10} {'calls':>8}  operator"]
    for name, us in self_us.most_common(rows):
        lines.append(f"{us / 1e3:10.1f} {100 * us / all_self:6.1f}% {total_us[name] / 1e3:10.1f} {calls[name]:8d}  {name}")
    return "\n".join(lines)


def _start_py_spy(pid: int, out: Path) -> subprocess.Popen | None:
    exe = shutil.which("py-spy")
    if exe is None:
        return None
    return subprocess.Popen([exe, "record", "--pid", str(pid), "--format", "raw", "--output", str(out), "--rate", "50", "--nonblocking",
                             "--subprocesses"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def _stop_py_spy(spy: subprocess.Popen | None, out: Path) -> str:
    """The leaf functions that were on the CPU most often ('' without py-spy, or if it could not attach)."""
    if spy is None:
        return ""
    spy.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
    try:
        spy.wait(timeout=20)
    except subprocess.TimeoutExpired:
        spy.kill()
        spy.wait()
    if not out.is_file():
        return ""
    counts: collections.Counter[str] = collections.Counter()
    for line in out.read_text(errors="replace").splitlines():
        stack, _, n = line.rpartition(" ")
        if stack and n.isdigit():
            counts[stack.split(";")[-1]] += int(n)
    total = sum(counts.values()) or 1
    return "\n".join(f"{100 * n / total:5.1f}%  {frame}" for frame, n in counts.most_common(TOP_FUNCTIONS))
