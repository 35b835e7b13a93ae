"""Dispatching inner loops on the cluster: as many at once as it has room for, each
result recorded the moment it arrives, and no task left to outrun its limits.

Tasks wait in the driver, not in Ray's queue, so an inner loop's wall-time limit counts
from when it started, and what starts next is decided on the results just recorded.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import ray

from vibeserve_ray.agents.transport import KeyRefused
from vibeserve_ray.inner.loop import InnerLoop
from vibeserve_ray.inner.result import InnerResult
from vibeserve_ray.inner.task import InnerTask
from vibeserve_ray.search import record
from vibeserve_ray.search.clock import SearchClock
from vibeserve_ray.search.results import Evaluation

Lost = Callable[[InnerTask, str, str], InnerResult]  # (task, why, verdict) -> a result for a loop that never returned


def capacity(options: dict[str, Any]) -> int:
    """How many inner loops with these resources the cluster holds right now (at least 1)."""
    total = ray.cluster_resources()
    fits = [int(total.get(key, 0) // need) for key, need in (("CPU", options["num_cpus"]), ("GPU", options["num_gpus"])) if need]
    return max(1, min(fits)) if fits else 64


class Dispatcher:
    def __init__(self, inner_loop: InnerLoop, options: dict[str, Any], clock: SearchClock, run_dir: Path, agents_stop: Callable[[], str],
                 lost: Lost, say: Callable[[str], None], show: Callable[[int, int, int, int], None]):
        """`agents_stop`: why the agents' budget allows no more work ('' while it does; raises
        KeyRefused for a refused key); `lost`: the result of a task that never returned;
        `show(round, done, running, waiting)`: progress as it changes."""
        self.remote, self.options, self.clock, self.run_dir = ray.remote(inner_loop), options, clock, run_dir
        self.agents_stop, self.lost, self.say, self.show = agents_stop, lost, say, show
        self.pending: dict[ray.ObjectRef, tuple[InnerTask, float]] = {}  # in flight: its task and when it started (time.monotonic())

    def why_not_start(self) -> str:
        """'' while a new inner loop may start; else why not (the agents' budget is spent, or
        the time left holds none). A refused key cancels everything in flight first."""
        try:
            spent = self.agents_stop()
        except KeyRefused:
            for ref in self.pending:
                ray.cancel(ref, force=True)
            raise
        return spent or self.clock.why_not_start()

    def not_started(self, why: str, n: int) -> None:
        self.say(f"search: {why}: {n} planned evaluations not started (a resumed search plans them again)")

    def run(self, tasks: list[InnerTask], record_result: Callable[[InnerResult], Evaluation], tuning: bool = False) -> list[Evaluation]:
        """Runs `tasks` in their order and records each result as it arrives (a killed driver
        loses only what was in flight).

        A task that would not finish within the search's time limit is not started, and one
        still running at the limit (or past its own) is cancelled and recorded as a timeout.
        Once the agents' budget is spent, no more tasks start; those running finish. A
        candidate's trials end where the evolution's share does, as it stands when it
        starts; the tuning pass (`tuning`) was sized to the time left and keeps its deadline.
        """
        waiting = list(tasks)
        results: list[Evaluation] = []
        while waiting or self.pending:
            why = "" if tuning else self.why_not_start()
            if waiting and why:
                self.not_started(why, len(waiting))
                waiting = []
            before = set(self.pending)
            room = capacity(self.options) - len(self.pending)  # asked once a pass: nodes come and go
            while waiting and room > 0:
                t = waiting.pop(0)
                if not tuning:
                    t = replace(t, deadline=self.clock.candidate_deadline())
                ref = self.remote.options(**self.options, name=f"inner:{t.eval_id[:8]}:island-{t.island}").remote(t)
                self.pending[ref] = (t, time.monotonic())
                room -= 1
            if not self.pending:
                break
            ready, _ = ray.wait(list(self.pending), num_returns=1, timeout=1.0)
            if ready:  # all that finished, recorded before anything new starts (it plans on them)
                ready, _ = ray.wait(list(self.pending), num_returns=len(self.pending), timeout=0)
            for ref in ready:
                task, _ = self.pending.pop(ref)
                try:
                    result = ray.get(ref)
                except Exception as exc:  # noqa: BLE001 - retries exhausted: record, keep searching
                    result = self.lost(task, f"{type(exc).__name__}: {exc}", "failed")
                results.append(record_result(result))
            for ref, (task, since) in list(self.pending.items()):
                if why := self.clock.overdue(since):
                    ray.cancel(ref, force=True)
                    self.pending.pop(ref)
                    results.append(record_result(self.lost(task, why, "timeout")))
            if set(self.pending) != before:  # what `status` shows as running, at most a pass (1 s) late
                self._write_running()
                self.show(tasks[0].round, len(results), len(self.pending), len(waiting))
        record.write_running(self.run_dir, [])
        return results

    def _write_running(self) -> None:
        record.write_running(self.run_dir, [{"eval_id": t.eval_id, "island": t.island, "round": t.round,
                                             "proposal": t.proposal.rationale if t.proposal else "seed", "since": time.time() - (time.monotonic() - t0)}
                                            for t, t0 in self.pending.values()])
