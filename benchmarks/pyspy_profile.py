"""Where a server's time goes, from py-spy samples of its processes while it serves a load.

`profiling(pids)` samples the processes and their Python children (`py-spy record --threads
--nonblocking`, raw collapsed stacks, one py-spy each) for as long as the block runs; the
summary counts, per process, the busy share of each thread and of each part of a
serving stack (model forward, sampling, scheduling, detokenising, HTTP and SSE, IPC,
the event loop; in Ray Serve's own processes, its request path, its control loops and
Ray's core worker instead), by the frames on each sampled stack. Idle threads are not sampled, so
the shares are of the time the process was busy (for a sandboxed process, by the
innermost frame: IDLE_LEAVES), and `busy_cores` is how many cores'
worth of samples it took.
"""

from __future__ import annotations

import contextlib
import re
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Iterable, Iterator

RATE = 67  # samples/s per thread: cheap enough beside a 2-core load, ~4,000 samples a minute
# First match wins, in this order: a model forward holds no HTTP frames, an SSE write no forward.
PARTS = (
    ("model forward", ("forward (", "_call_impl", "execute_model", "ModelRunner.run", "compute_logits", "_compile", "compiled")),
    ("sampling", ("sampl", "Sampler")),
    ("scheduling", ("schedul", "ForwardBatch", "kv_cache", "block_pool", "KVCache", "Sequence", "postprocess", "update_from_output")),
    ("detokenising", ("detok", "Detokenizer", "tokenizers", "decode (", "convert_ids_to_tokens", "_Detokenizer")),
    ("http and sse", ("uvicorn", "starlette", "fastapi", "h11", "httptools", "_sse", "json", "aiohttp", "_events", "pieces", "pydantic",
                      "serving_completion", "openai")),
    ("ipc", ("zmq", "msgspec", "msgpack", "pickle", "serial_utils", "multiprocessing", "connection", "socket")),
    ("event loop", ("asyncio", "base_events", "uvloop", "selectors", "queue")),
)
# Ray Serve's processes (replica, proxy, controller): their stacks hold Serve's own frames
# around whatever they run, and names such as `deployment_scheduler` that the engine's
# parts would take for scheduling.
RAY_PARTS = (
    ("http and sse", ("uvicorn", "starlette", "fastapi", "h11", "httptools", "aiohttp", "vibeserve_ray/deploy", "asgi")),
    ("serve request path", ("replica.py", "proxy.py", "router", "replica_result", "proxy_response_generator", "handle.py",
                            "serve/_private/http_util")),
    ("serve control loops", ("controller.py", "deployment_state", "application_state", "long_poll", "metrics", "autoscaling",
                             "proxy_state", "haproxy")),
    ("ray core worker", ("_raylet", "ray/_private", "grpc", "ray/util")),
    ("event loop", ("asyncio", "base_events", "uvloop", "selectors", "queue")),
)
# py-spy cannot tell a waiting thread of a process in another pid namespace (a sandboxed
# candidate) from a running one: samples whose innermost frame is one of these waits count as idle.
IDLE_LEAVES = ("select", "EpollSelector.select", "poll", "_poll", "Condition.wait", "Event.wait", "Thread.join", "_admit",
               "serve_worker", "wait", "sleep", "accept", "_wait_for_tstate_lock")
_PROCESS = re.compile(r'^process (\d+):"([^"]*)"')


@contextlib.contextmanager
def profiling(pids: int | Iterable[int], out: Path) -> Iterator[dict]:
    """Samples each of `pids` and every Python process under them while the block runs,
    one py-spy each (`--subprocesses` missed vLLM's engine core and the sandboxed workers);
    the dict it yields is filled with the summary when the block ends."""
    out.parent.mkdir(parents=True, exist_ok=True)
    spies = []
    roots = [pids] if isinstance(pids, int) else list(pids)
    for proc in {p.pid: p for root in roots for p in _python_tree(root)}.values():
        raw = out.with_name(f"{out.stem}-{proc.pid}.txt")
        cmd = ["py-spy", "record", "--pid", str(proc.pid), "--threads", "--nonblocking", "--rate", str(RATE), "--format", "raw", "-o", str(raw)]
        spies.append((_name(proc), raw, subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)))
    t0 = time.monotonic()
    summary: dict = {}
    try:
        yield summary
    finally:
        seconds = time.monotonic() - t0
        errors = []
        for name, raw, spy in spies:
            spy.send_signal(signal.SIGINT)  # py-spy writes its file on Ctrl-C
            try:
                _, err = spy.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                spy.kill()
                _, err = spy.communicate()
            if raw.is_file():
                summary.update(summarise(raw.read_text(errors="replace"), seconds, name))
            else:
                errors.append((err or "py-spy wrote nothing").strip()[-200:])
        if errors:
            summary["errors"] = errors


def _python_tree(pid: int) -> list:
    """The process and its descendants that run Python (a sandbox's bwrap does not)."""
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return []
    keep = []
    for p in procs:
        try:
            if "python" in p.exe() or p.name().startswith(("VLLM", "ray::")):
                keep.append(p)
        except psutil.Error:
            pass
    return keep


def summarise(raw: str, seconds: float, name: str = "?") -> dict:
    """Per process (named by its command line where py-spy says, else `name`): busy cores,
    shares of its threads and of the stack's parts."""
    procs: dict[str, dict[str, Counter]] = {}
    for line in _records(raw):
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        m = _PROCESS.match(stack)
        proc_name = _short(m.group(2)) + f" (pid {m.group(1)})" if m else name
        frames = stack.split(";")
        thread = next((f.split(":", 1)[-1].strip() for f in frames if f.startswith("thread (")), "?")
        p = procs.setdefault(proc_name, {"threads": Counter(), "parts": Counter(), "leaves": Counter()})
        n = int(count)
        if frames[-1].split(" (")[0] in IDLE_LEAVES:
            continue
        p["threads"][thread] += n
        p["parts"][_part(stack, RAY_PARTS if proc_name.startswith("ray::") else PARTS)] += n
        p["leaves"][frames[-1].split(" (")[0]] += n
    out = {}
    for name, p in procs.items():
        total = sum(p["threads"].values())
        share = lambda c: {k: round(v / total, 3) for k, v in c.most_common(8)}  # noqa: E731
        out[name] = {"busy_cores": round(total / (RATE * seconds), 2), "samples": total, "threads": share(p["threads"]),
                     "parts": share(p["parts"]), "top_functions": share(p["leaves"])}
    return dict(sorted(out.items(), key=lambda kv: -kv[1]["samples"]))


def _records(raw: str) -> Iterator[str]:
    """Lines of collapsed stacks; a command line with newlines in it is joined back."""
    pending = ""
    for line in raw.splitlines():
        pending = f"{pending} {line}" if pending else line
        if re.search(r" \d+$", pending):
            yield pending
            pending = ""


def _part(stack: str, parts=PARTS) -> str:
    for part, needles in parts:
        if any(n in stack for n in needles):
            return part
    return "other"


def _name(proc) -> str:
    try:
        return f"{_short(' '.join(proc.cmdline()) or proc.name())} (pid {proc.pid})"
    except Exception:  # noqa: BLE001 - gone already
        return f"? (pid {proc.pid})"


def _short(cmdline: str) -> str:
    for key in ("vibeserve_ray.serve.worker", "EngineCore", "vllm serve", "engine_process"):
        if key in cmdline:
            return key
    if cmdline.startswith("ray::"):  # ray::ServeReplica:APP:DEPLOYMENT, ray::ProxyActor.method
        return "ray::" + cmdline.split()[0][len("ray::"):].split(":")[0].split(".")[0]
    return cmdline.split()[0].rsplit("/", 1)[-1] if cmdline else "?"
