"""The step loop in engine processes of its own, apart from the HTTP front (`design.step_loop = process`).

With the step loop in a thread, the front's per-token Python (SSE framing, JSON,
detokenising) and the forward pass's per-op Python take turns on one GIL: py-spy --gil
on a 2-core CPU found the two threads holding it about half the time each. Here each of
`engine_workers` processes holds a copy of the model, its own scheduler and KV cache,
and runs `LLMEngine.step` in a plain loop; the front's process only routes requests to
the least busy worker and hands tokens to their streams (vLLM's EngineCore split, and
with several workers its data parallelism: on a CPU each worker can own a core with
`num_threads = 1`, and one worker paused by other work does not stall the other).

Parent and worker talk over a socket pair in frames (4-byte length, pickle): the parent
sends ("add", rid, request, seed), ("abort", rid) and ("close",); a worker sends
("ready",) once its model is loaded, then one ("out", [(rid, item), ...]) per step,
where an item is a TokenOut, None (the request finished) or an error.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import pickle
import random
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
from itertools import count
from pathlib import Path
from typing import Any, AsyncIterator

from vibeserve_ray.candidate import PROMPT_LOGPROBS, RESPONSE_FORMAT, TOP_LOGPROBS, GenerationRequest, RequestRefused, TokenOut

from ..config import EngineConfig
from ..models import load_family
from .llm_engine import FINISHED, LLMEngine, check_request
from .sequence import Sequence, Status

_HEADER = struct.Struct("!I")


def _frame(message: tuple) -> bytes:
    body = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return _HEADER.pack(len(body)) + body


class _Worker:
    """One engine process, seen from the front's process."""

    def __init__(self, index: int, model_dir: str, device: str, knobs: dict[str, Any]):
        parent, child = socket.socketpair()
        root = Path(__file__).resolve().parents[len(__package__.split("."))]  # where this engine package is importable from
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")])))
        cmd = [sys.executable, "-m", f"{__package__}.engine_process", str(child.fileno()), model_dir, device]
        self.proc = subprocess.Popen(cmd, pass_fds=[child.fileno()], env=env, stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent)
        child.close()
        parent.sendall(_frame(("start", knobs)))
        self.sock = parent
        self.index = index
        self.active: set[int] = set()
        self.writer: asyncio.StreamWriter | None = None

    def wait_ready(self) -> None:
        message = _read_frame_blocking(self.sock)
        if message is None or message[0] != "ready":
            code = self.proc.wait()
            raise RuntimeError(f"engine worker {self.index} failed to start (exit code {code}): {message and message[1]}")

    def send(self, message: tuple) -> None:
        if self.writer is not None and not self.writer.is_closing():
            self.writer.write(_frame(message))


class ProcessEngine:
    """The Engine contract, with `LLMEngine.step` running in worker processes."""

    capabilities = frozenset({TOP_LOGPROBS, PROMPT_LOGPROBS, RESPONSE_FORMAT})

    def __init__(self, model_dir: str, device: str = "cpu", knobs: dict[str, Any] | None = None):
        knobs = dict(knobs or {})
        family, self.config = load_family(model_dir)
        self.engine_config = EngineConfig.resolve(knobs, family.space(), device)
        worker_knobs = knobs | {"design": {**knobs.get("design", {}), "step_loop": "thread"}}
        # loading in parallel, waiting in turn; but compiled graphs one at a time: inductor's
        # compile (its C++ builds, max-autotune's trials) peaks at several times a loaded
        # engine's memory (two 30-layer SmolLM2 workers compiling at once: 6,373 MiB)
        one_at_a_time = self.engine_config.compile == "graph"
        self.workers = []
        for i in range(self.engine_config.engine_workers):
            self.workers.append(worker := _Worker(i, model_dir, device, worker_knobs))
            if one_at_a_time:
                worker.wait_ready()
        if not one_at_a_time:
            for worker in self.workers:
                worker.wait_ready()
        self.streams: dict[int, asyncio.Queue] = {}
        self._ids = count()
        self._attached: tuple[asyncio.AbstractEventLoop, asyncio.Future] | None = None
        self._closed = False

    async def _attach(self) -> None:
        """Connects the workers' sockets to the running event loop, once per loop (the
        front has one; tests run several in turn, each through its own handle)."""
        loop = asyncio.get_running_loop()
        if self._attached is None or self._attached[0] is not loop:
            ready = loop.create_future()
            self._attached = (loop, ready)
            for w in self.workers:
                handle = socket.socket(fileno=os.dup(w.sock.fileno()))
                reader, w.writer = await asyncio.open_connection(sock=handle)
                loop.create_task(self._read(w, reader))
            ready.set_result(None)
        await self._attached[1]

    async def generate(self, request: GenerationRequest) -> AsyncIterator[TokenOut]:
        """Streams one TokenOut per generated token; closing the stream aborts the request."""
        check_request(request, self.config)
        await self._attach()
        if self._closed:
            raise RuntimeError("engine is closed")
        rid, stream = next(self._ids), asyncio.Queue()
        worker = min(self.workers, key=lambda w: len(w.active))
        seed = request.seed if request.seed is not None else random.getrandbits(63)
        self.streams[rid] = stream
        worker.active.add(rid)
        worker.send(("add", rid, request, seed))
        done = False
        try:
            while (item := await stream.get()) is not FINISHED:
                if isinstance(item, BaseException):
                    done = True
                    raise item
                yield item
            done = True
        finally:
            if not done:  # the client went away mid-stream
                worker.send(("abort", rid))
            worker.active.discard(rid)
            self.streams.pop(rid, None)

    async def _read(self, worker: _Worker, reader: asyncio.StreamReader) -> None:
        """Hands each step's tokens to their streams; a worker gone fails its requests."""
        try:
            while True:
                size = _HEADER.unpack(await reader.readexactly(_HEADER.size))[0]
                _, items = pickle.loads(await reader.readexactly(size))
                for rid, item in items:
                    if (stream := self.streams.get(rid)) is not None:
                        stream.put_nowait(FINISHED if item is None else _error(item) if isinstance(item, tuple) else item)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        self._closed = True
        for rid in list(worker.active):
            if (stream := self.streams.get(rid)) is not None:
                stream.put_nowait(RuntimeError(f"engine worker {worker.index} exited (code {worker.proc.poll()})"))

    async def close(self) -> None:
        self._closed = True
        for w in self.workers:
            try:
                w.sock.settimeout(5)
                w.sock.sendall(_frame(("close",)))
            except OSError:
                pass
        for w in self.workers:
            try:
                await asyncio.to_thread(w.proc.wait, 10)
            except subprocess.TimeoutExpired:
                w.proc.kill()
            w.sock.close()


def _error(item: tuple) -> BaseException:
    kind, message = item
    return RequestRefused(message) if kind == "refused" else RuntimeError(message)


# --- the worker process ----------------------------------------------------------------


def _die_with_parent() -> None:
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _read_frame_blocking(sock: socket.socket) -> tuple | None:
    header = _recv_exactly(sock, _HEADER.size)
    if header is None:
        return None
    body = _recv_exactly(sock, _HEADER.unpack(header)[0])
    return None if body is None else pickle.loads(body)


def _recv_exactly(sock: socket.socket, n: int) -> bytes | None:
    buf = bytearray()
    while len(buf) < n:
        part = sock.recv(n - len(buf))
        if not part:
            return None
        buf += part
    return bytes(buf)


def serve_worker(sock: socket.socket, model_dir: str, device: str) -> None:
    """Loads the engine, then: take in what the front sent, run one step, send its tokens."""
    start = _read_frame_blocking(sock)
    if start is None:
        return
    try:
        engine = LLMEngine(model_dir, device, start[1], step_thread=False)
    except Exception as exc:
        sock.sendall(_frame(("failed", f"{type(exc).__name__}: {exc}")))
        raise
    sock.sendall(_frame(("ready",)))
    seqs: dict[int, Sequence] = {}
    rids: dict[Sequence, int] = {}
    while True:
        idle = engine.scheduler.is_idle()
        hint = engine.scheduler.wait_hint()
        readable, _, _ = select.select([sock], [], [], None if idle else (hint or 0.0))
        out: list[tuple[Sequence, object]] = []
        if readable:
            for message in _drain(sock):
                if message is None or message[0] == "close":
                    return
                if message[0] == "add":
                    _, rid, request, seed = message
                    seq = Sequence(request, seed)
                    seqs[rid], rids[seq] = seq, rid
                    try:
                        seq.grammar = engine.grammar_for(request)  # compiled here, between steps: a matcher does not pickle
                        why = engine.scheduler.add(seq)
                    except RequestRefused as exc:
                        why = str(exc)
                    if why is not None:
                        seq.status = Status.FINISHED
                        out.append((seq, RequestRefused(why)))
                elif message[0] == "abort" and (seq := seqs.get(message[1])) is not None:
                    seq.aborted = True
        try:
            out += engine.step() or []
        except Exception as exc:  # a bug in the step: fail every request, never hang one
            out += engine.fail_all([], exc)
        if out:
            sock.sendall(_frame(("out", [(rids[seq], _wire(item)) for seq, item in out])))
        for seq in [s for s in rids if s.status is Status.FINISHED]:
            seqs.pop(rids.pop(seq), None)


def _wire(item: object) -> object:
    if item is FINISHED:
        return None
    if isinstance(item, BaseException):
        return ("refused" if isinstance(item, RequestRefused) else "error", f"{type(item).__name__}: {item}" if not isinstance(item, RequestRefused) else str(item))
    return item


_pending = bytearray()


def _drain(sock: socket.socket) -> list[tuple | None]:
    """Every whole frame the socket holds now (None for end of file)."""
    global _pending
    sock.setblocking(False)
    try:
        while True:
            part = sock.recv(1 << 16)
            if not part:
                return [*_frames(), None]
            _pending += part
    except BlockingIOError:
        pass
    finally:
        sock.setblocking(True)
    return _frames()


def _frames() -> list[tuple]:
    global _pending
    out = []
    while len(_pending) >= _HEADER.size:
        size = _HEADER.unpack_from(_pending)[0]
        if len(_pending) < _HEADER.size + size:
            break
        out.append(pickle.loads(bytes(_pending[_HEADER.size:_HEADER.size + size])))
        del _pending[:_HEADER.size + size]
    return out


if __name__ == "__main__":
    # The loop runs in a thread named as in the thread design, so profiles read alike.
    # Measured in-process on a loaded 2-core machine (16 requests x 48 tokens): a worker
    # with num_threads = 2 made 14-26 tok/s where the thread design made 135-244; with
    # num_threads = 1, 107-109 (its OpenMP team waits for a partner that other work
    # preempts): give each worker one thread.
    args = (socket.socket(fileno=int(sys.argv[1])), sys.argv[2], sys.argv[3])
    loop = threading.Thread(target=serve_worker, args=args, name="engine-step")
    loop.start()
    loop.join()
