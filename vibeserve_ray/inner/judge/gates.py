"""The Accuracy Judge: every gate a candidate must pass before it is measured.

Cheapest first, stopping at the first "no":

1. precision: the candidate's declared design computes in no lower precision than the
   target's accuracy contract admits (read with the harness's copy of the design space);
2. scan: the code's syntax tree (network, processes, ctypes, the reference or the
   harness, computed imports, paths outside the candidate and the model);
3. reference-equality: greedy outputs meet the contract on the held-out prompts (a
   secret sample of them one at a time, then all concurrently) and on fresh prompts
   drawn from a seed chosen now (the same length mix), concurrently among them;
4. seeded-sampling: the same prompts sampled with the checker's seeds;
5. load-honesty: the benchmark's own kind of requests, alone, at its concurrency and
   at twice it, every response meeting the contract;
6. streaming-honesty: those streams arrived as generated, not buffered or in bursts;
7. accuracy-script: the target's own check passes (only where `[accuracy] script` names one);
8. weight-swap: on the second checkpoint the held-out prompts' outputs change as the
   reference's do (a memorised answer would not);
9. protected-data: the tree holds no copy of checker or benchmark data (checked before
   anything runs) and the model, target, reference and harness files hash the same
   after the candidate ran as before (checked last).

"Meet the contract" is `[accuracy]`'s: outputs equal to the reference's (`exact`), or the
reference's statistics of the candidate's own tokens within its thresholds (`tolerance`).
Gates 3-7 share one candidate process, gate 8 has its own (started while gates 3-7 run,
where memory allows). A gate's "no" is a `rejected` verdict; a candidate that crashes
or hangs on the way is `failed` at the gate it was in. `vibeserve judge` and the
search's inner loop both run `judge`.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import psutil

from vibeserve_ray.candidate import CandidateSpec
from vibeserve_ray.design_space import default_space_path, load_space
from vibeserve_ray.engine.space import below
from vibeserve_ray.inner.judge import load, protect
from vibeserve_ray.inner.judge.checker import CheckVerdict, check_phases, fresh_prompts, held_out_prompts, references
from vibeserve_ray.inner.judge.scan import scan_for_bypass
from vibeserve_ray.inner.judge.script import run_script
from vibeserve_ray.inner.workload import target_workload
from vibeserve_ray.runner import CandidateFailed, CandidateFailure, Limits, start_candidate
from vibeserve_ray.sandbox import SandboxUnavailable, ensure
from vibeserve_ray.target import Target

GATES = ("precision", "scan", "reference-equality", "seeded-sampling", "load-honesty", "streaming-honesty", "accuracy-script", "weight-swap",
         "protected-data")
FRESH_SHARE = 0.25  # fresh prompts per held-out prompt: each costs reference decoding every judging
MIN_FRESH = 4
ALONE_SHARE = 0.4  # held-out prompts also sent one at a time, drawn for each judging: the lone
MIN_ALONE = 4      # path is one code path, and the sequential pass was half of this gate's time


@dataclass(frozen=True)
class GateResult:
    gate: str
    verdict: str  # passed | rejected | failed
    seconds: float
    reason: str = ""

    def line(self) -> str:
        return f"{self.gate:<19} {self.verdict:<8} {self.seconds:7.1f} s" + (f"  {self.reason}" if self.reason else "")


@dataclass(frozen=True)
class JudgeVerdict:
    passed: bool
    gate: str = ""  # the gate that said no
    reason: str = ""
    failure: CandidateFailure | None = None  # set when the candidate itself broke
    gates: tuple[GateResult, ...] = ()
    fresh_seed: int = 0  # drawn for this judging, told only after it
    sandbox_warning: str = ""
    seconds: float = 0.0

    @property
    def verdict(self) -> str:
        return "validated" if self.passed else ("failed" if self.failure else "rejected")

    def to_dict(self) -> dict:
        return asdict(self) | {"verdict": self.verdict}


class _Stop(Exception):
    pass


@dataclass
class _Judging:
    say: Callable[[str], None]
    results: list[GateResult] = field(default_factory=list)
    failure: CandidateFailure | None = None

    def done(self, gate: str, started: float, reason: str = "", failure: CandidateFailure | None = None) -> None:
        """Records the gate's outcome (reason '' = passed); stops the judging at a 'no'."""
        verdict = "failed" if failure else ("rejected" if reason else "passed")
        result = GateResult(gate, verdict, time.perf_counter() - started, reason or (failure.reason if failure else ""))
        self.results.append(result)
        self.say(f"judge: {result.line()}")
        if verdict != "passed":
            self.failure = failure
            raise _Stop

    def check(self, gate: str, started: float, v: CheckVerdict) -> None:
        self.done(gate, started, v.reason(), v.failure)


def gates_run(target: Target) -> tuple[str, ...]:
    """The gates a judging of a candidate that passes them all runs, in order."""
    return tuple(g for g in GATES if g != "accuracy-script" or target.accuracy.script)


def precision_problem(target: Target, spec: CandidateSpec) -> str:
    """'' when the declared design computes in no lower precision than the contract admits."""
    choices = load_space(default_space_path()).choices  # the harness's copy: the candidate's own may be edited
    found = below(choices, spec.design, target.lowest_precision)
    return "; ".join(f"design.{name} = {option!r} computes in {p}; the target's accuracy contract ({target.contract()}) admits nothing "
                     f"below {target.lowest_precision}" for name, option, p in found)


def judge(target: Target, spec: CandidateSpec, parent_dir: Path | None, workdir: Path, say: Callable[[str], None] = lambda s: None,
          seed: int | None = None) -> JudgeVerdict:
    """Runs the gates in order and stops at the first that says no. `seed` draws the fresh
    prompts and the load requests' order (default: a new secret one)."""
    seed = random.SystemRandom().getrandbits(62) if seed is None else seed
    try:
        warning = ensure(target.spec.limits.sandbox)
    except SandboxUnavailable:
        warning = ""  # the first process start fails with the reason, at the gate that wanted it
    j = _Judging(say)
    t_all = time.perf_counter()
    with _Processes(target, spec, workdir) as processes:
        try:
            _gates(j, target, spec, parent_dir, processes, random.Random(seed), say)
        except _Stop:
            pass
    last = j.results[-1] if j.results else GateResult("", "passed", 0.0)
    passed = all(r.verdict == "passed" for r in j.results)
    return JudgeVerdict(passed, "" if passed else last.gate, "" if passed else last.reason, j.failure, tuple(j.results), seed, warning,
                        time.perf_counter() - t_all)


class _Processes:
    """The candidate's process on each checkpoint. The second starts while the first is being
    judged where the machine has the memory for both: a start is mostly single-threaded
    imports, which the first's requests leave room for. Each is started from a thread that
    outlives it (a process dies with the thread that started it: PR_SET_PDEATHSIG)."""

    def __init__(self, target: Target, spec: CandidateSpec, workdir: Path):
        self.target, self.spec, self.workdir = target, spec, workdir
        self._pool = ThreadPoolExecutor(2, thread_name_prefix="candidate")
        self._helper = ThreadPoolExecutor(1, thread_name_prefix="judge")
        self._started: dict[bool, Future] = {}
        self._cancel = threading.Event()  # a judging that stopped early does not wait for a start it no longer needs

    def start(self, swap: bool) -> Future:
        if swap not in self._started:
            t = self.target
            self._started[swap] = self._pool.submit(start_candidate, self.spec, t.model_dir(swap=swap), t.tokenizer_dir(), t.served_name,
                                                    t.spec.hardware.device, Limits(**t.spec.limits.model_dump()),
                                                    self.workdir / f"checkpoint-{2 if swap else 1}", cancel=self._cancel)
        return self._started[swap]

    def beside(self, fn: Callable, *args) -> Future:
        """`fn(*args)` in a helper thread, beside the candidate's start and requests."""
        return self._helper.submit(fn, *args)

    def both_fit(self) -> bool:
        t = self.target
        size = sum(f.stat().st_size for f in t.model_dir().iterdir() if f.is_file())
        return t.spec.hardware.device == "cpu" and 4 * (size + (1 << 30)) < psutil.virtual_memory().available

    def get(self, swap: bool):
        """The running process (CandidateFailed if it did not start)."""
        return self.start(swap).result()

    def stop(self, swap: bool) -> None:
        future = self._started.get(swap)
        if future is not None and future.exception() is None:
            future.result().stop()

    def __enter__(self) -> "_Processes":
        return self

    def __exit__(self, *exc) -> None:
        self._cancel.set()
        for swap in list(self._started):
            self.stop(swap)
        self._pool.shutdown()
        self._helper.shutdown(wait=False, cancel_futures=True)  # a judging that stopped early does not wait for it


def _gates(j: _Judging, target: Target, spec: CandidateSpec, parent_dir: Path | None, processes: _Processes, rng: random.Random,
           say: Callable[[str], None]) -> None:
    t = time.perf_counter()
    j.done("precision", t, precision_problem(target, spec))
    t = time.perf_counter()
    findings = scan_for_bypass(spec.path, parent_dir)
    j.done("scan", t, "; ".join(f.describe() for f in findings[:3]) + (f" (+{len(findings) - 3} more)" if len(findings) > 3 else ""))

    t_protect = time.perf_counter()
    held = held_out_prompts(target)
    fresh = fresh_prompts(target, held, max(MIN_FRESH, round(len(held) * FRESH_SHARE)), rng.getrandbits(62))
    prompts = held + fresh
    exact = not target.accuracy.tolerant  # a tolerance contract scores the candidate's own tokens: no reference outputs to wait for
    held_refs = references(target, target.model_dir(), held, ("sequential", "sampled") if exact else ("sequential",))
    copies = protect.copies_in_tree(spec.path, [(p.text, p.token_ids) for p in held], target_workload(target),
                                    [r.token_ids for r in held_refs["greedy"]])
    if copies:
        j.done("protected-data", t_protect, "the candidate carries protected data: " + "; ".join(copies[:3]))
    before = protect.snapshot(target, exclude=processes.workdir)
    protect_s = time.perf_counter() - t_protect

    t = time.perf_counter()
    processes.start(False)
    # The fresh prompts' reference outputs are decoded while the candidate starts and answers
    # the held-out prompts one at a time (they are needed only after).
    fresh_refs = processes.beside(references, target, target.model_dir(), fresh, ("sequential", "sampled") if exact else (), False)
    try:
        proc = processes.get(False)
    except CandidateFailed as exc:
        j.done("reference-equality", t, failure=exc.failure)
    if processes.both_fit():
        processes.start(True)  # its start overlaps the gates below (a rejection there cancels it)
    # One at a time, a sample of the held-out prompts; concurrently, all of them with the fresh
    # ones among them (whose job is to be unknown, not to be slow: a sequential pass over them
    # would add little).
    lone = sorted(rng.sample(range(len(held)), min(len(held), max(MIN_ALONE, round(len(held) * ALONE_SHARE)))))
    alone = asyncio.run(check_phases(proc, target, [held[i] for i in lone], {k: [v[i] for i in lone] for k, v in held_refs.items()},
                                     say, ("sequential",)))
    if alone.passed:
        say(f"judge: reference outputs for {len(fresh)} fresh prompts" if exact else f"judge: {len(prompts)} prompts concurrently")
        refs = {k: held_refs[k] + fresh_refs.result()[k] for k in held_refs} if exact else {}
    j.check("reference-equality", t, asyncio.run(check_phases(proc, target, prompts, refs, say, ("concurrent",))) if alone.passed else alone)
    t = time.perf_counter()
    j.check("seeded-sampling", t, asyncio.run(check_phases(proc, target, prompts, refs, say, ("sampled",))))
    t = time.perf_counter()
    requests = load.honesty_requests(target, load.honesty_count(target), rng)
    say(f"judge: {len(requests)} requests of the benchmark's shapes, alone and under load")
    try:
        runs = asyncio.run(load.run_honesty_load(proc, target, requests))
    except Exception as exc:  # noqa: BLE001 - the load generator records request errors; anything else is the candidate's
        j.done("load-honesty", t, failure=proc.explain("load-honesty", f"{type(exc).__name__}: {exc}"))
    if (dead := proc.failure()) is not None:
        j.done("load-honesty", t, failure=dead)
    j.done("load-honesty", t, load.load_verdict(target, runs))
    t = time.perf_counter()
    j.done("streaming-honesty", t, load.streaming_verdict(runs))
    if target.accuracy.script:
        t = time.perf_counter()
        say(f"judge: the target's accuracy script {target.accuracy.script}")
        j.done("accuracy-script", t, run_script(target, proc.base_url, proc.served_name))
    processes.stop(False)

    t = time.perf_counter()
    # The held-out prompts alone: the ones an engine could have memorised answers to.
    swap_dir = target.model_dir(swap=True)
    swap_refs = references(target, swap_dir, held, ("concurrent",)) if exact else {}
    try:
        proc = processes.get(True)
    except CandidateFailed as exc:
        j.done("weight-swap", t, failure=exc.failure)
    j.check("weight-swap", t, asyncio.run(check_phases(proc, target, held, swap_refs, say, ("concurrent",), swap_dir)))
    processes.stop(True)

    t = time.perf_counter() - protect_s
    changed = protect.changes(before, protect.snapshot(target, exclude=processes.workdir))
    j.done("protected-data", t, f"changed while the candidate ran: {', '.join(changed[:3])}" if changed else "")
