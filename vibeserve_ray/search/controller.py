"""The outer loop: plan -> dispatch inner loops on the cluster -> record -> migrate.

The driver is the only writer of the run's state (git repo, notes, results.parquet,
Optuna storage, planning files); inner loops run anywhere Ray puts them. Every result
is recorded as soon as it arrives, so killing the driver loses only work in flight,
and rerunning the same command resumes from what git and the table say.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import ray

from vibeserve_ray import progress, raycluster
from vibeserve_ray.candidate import materialise_seed
from vibeserve_ray.inner.loop import InnerLoop, InnerResult, inner_loop_options, run_inner_loop
from vibeserve_ray.inner.task import Hypothesis, InnerTask, Proposal, design_key
from vibeserve_ray.search import record
from vibeserve_ray.search.islands import IslandActor, island_actor_name
from vibeserve_ray.search.policy import WorkItem, merge_tasks, parse_backlog, plan_backlog, plan_evolution, render_backlog, seed_backlog
from vibeserve_ray.search.propose import OfflineProposer, RandomProposer
from vibeserve_ray.search.results import Evaluation
from vibeserve_ray.search.state import RunRepo
from vibeserve_ray.search.team import AgentTeam, KeyRefused
from vibeserve_ray.skills import applicable
from vibeserve_ray.target import Target


@dataclass(frozen=True)
class Budget:
    rounds: int
    time_limit_s: float
    max_candidates: int | None
    candidate_time_limit_s: float
    n_trials: int
    finalist_trials: int = 0

    @classmethod
    def of(cls, target: Target, rounds: int | None = None, time_limit_s: float | None = None, max_candidates: int | None = None,
           n_trials: int | None = None) -> "Budget":
        """The target's [search] budgets, each overridable (command-line flags)."""
        s = target.spec.search
        return cls(rounds=s.rounds if rounds is None else rounds, time_limit_s=time_limit_s or s.time_limit_s,
                   max_candidates=max_candidates or s.max_candidates, candidate_time_limit_s=s.candidate_time_limit_s, n_trials=n_trials or s.trials,
                   finalist_trials=s.finalist_trials)


@dataclass(frozen=True)
class SearchSummary:
    run_dir: Path
    best: Evaluation | None
    seed: Evaluation | None
    evaluated: int
    stopped_because: str


def connect_ray(address: str | None, num_cpus: int | None = None) -> raycluster.Endpoints | None:
    """Joins RAY_ADDRESS / --address when given, else starts an embedded local Ray (with its
    dashboard); None when this process was already connected."""
    if ray.is_initialized():
        return None
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        return raycluster.join(address, log_to_driver=True)
    return raycluster.start_local(num_cpus=num_cpus, log_to_driver=True)


def _capacity(options: dict) -> int:
    """How many inner loops with these resources the cluster holds right now (at least 1)."""
    total = ray.cluster_resources()
    fits = [int(total.get(key, 0) // need) for key, need in (("CPU", options["num_cpus"]), ("GPU", options["num_gpus"])) if need]
    return max(1, min(fits)) if fits else 64


def _islands_take_turns(items: list, owed: list[int]) -> list:
    """Interleaves the round's work by island, the island owed most children first, so a
    cluster smaller than a round (or a time limit) still explores from every island."""
    by_island: dict[int, list] = {}
    for it in sorted(items, key=lambda it: -owed[it.island]):
        by_island.setdefault(it.island, []).append(it)
    return [it for turn in itertools.zip_longest(*by_island.values()) for it in turn if it is not None]


TUNE = record.TUNE
TRIAL_STARTUP_S = 10.0  # a trial's time outside its benchmark: the engine's start-up, the warm-up, the exactness check (CPU targets)


def expected_inner_s(rows: list[Evaluation]) -> float:
    """How long an inner loop takes here: the median of the candidates finished, the seed's
    before the first (0 before that). The serial seed is the slowest design there is (a
    JSON seed's took 300 s beside its batched child's 100 s): counted among two, its time
    stopped a search that had room for two more evaluations."""
    finished = [r for r in rows if r.finished_at > r.started_at and r.implementer != TUNE]
    candidates = [r for r in finished if r.implementer != "seed"] or finished
    times = sorted(r.finished_at - r.started_at for r in candidates)
    return times[len(times) // 2] if times else 0.0


class Search:
    def __init__(self, target: Target, target_arg: str, run_dir: Path, space, budget: Budget, implementer: str = "offline",
                 say: Callable[[str], None] = print, seed: int = 0, inner_loop: InnerLoop = run_inner_loop, agents: AgentTeam | None = None):
        """`inner_loop` runs one candidate as a Ray task (the method's inner loop; orchestration
        benchmarks and tests pass a stand-in that only takes time). With `agents`, the
        Orchestrator plans each round and LLM agents implement, review and read each candidate."""
        self.target, self.target_arg, self.run_dir, self.space, self.budget = target, target_arg, Path(run_dir), space, budget
        self.seed, self.say, self.inner_loop = seed, say, inner_loop
        self.objective = target.spec.benchmark.objective
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.repo = RunRepo(self.run_dir / "repo")
        self.rows = record.reconcile(self.run_dir, self.repo)
        self.name = self.run_dir.resolve().name
        self.started = time.monotonic()
        device = target.spec.hardware.device
        self.device = device
        rng_seed = seed * 100_003 + len(self.rows)  # a resumed search does not replay its first choices
        self.agents = agents
        self.implementer = agents.name if agents else implementer
        self._hypotheses: dict[str, Hypothesis] = {}  # eval_id -> what its Implementer was asked
        if implementer == "random":
            self.proposer: OfflineProposer = RandomProposer(space.all_designs(device), seed=rng_seed)
        else:
            self.proposer = OfflineProposer(applicable(target), seed=rng_seed)

    # --- the loop ------------------------------------------------------------------------

    def run(self) -> SearchSummary:
        try:
            return self._run()
        except KeyRefused:  # recorded, then the one line and exit 2
            record.write_running(self.run_dir, [])
            self._write_meta("key refused", record.best(self.rows, self.objective))
            raise

    def _run(self) -> SearchSummary:
        s = self.target.spec.search
        self.say(f"search: target {self.target.name}, policy {s.policy}, {s.islands} islands x {s.population}, "
                 f"{self.budget.rounds} rounds, time limit {self.budget.time_limit_s:g}s, implementer {self.implementer}"
                 + (f", resuming with {len(self.rows)} evaluations" if self.rows else ""))
        self._write_meta(None, record.best(self.rows, self.objective))  # `status` names the target while running
        seed = self._ensure_seed()
        islands = self._islands(seed)
        start_round = max((r.round for r in self.rows), default=0)
        stopped = "rounds"
        for rnd in range(max(1, start_round), self.budget.rounds + 1):
            reason = self._out_of_budget()
            if reason:
                stopped = reason
                break
            done_this_round = sum(r.round == rnd and r.implementer != TUNE for r in self.rows)
            want = s.islands * s.population - done_this_round
            if want <= 0:  # a resumed run whose last round was complete
                continue
            ray.get([isl.start_round.remote(rnd) for isl in islands])
            results, cut_short = self._round(islands, want, rnd)
            if results:
                self._after_round(rnd, islands, results)
            if cut_short:
                stopped = cut_short
                break
        else:
            stopped = "rounds"
        self._tune_best()
        return self._finish(stopped)

    def _tune_best(self) -> None:
        """The finalist's tuning pass (`[search] finalist_trials`): knob moves on the best
        candidate, as many as the time left holds; once per best (a resumed search does
        not tune it again; `--rounds 0` measures the seed only)."""
        best = record.best(self.rows, self.objective)
        n = self.budget.finalist_trials
        if not n or not self.budget.rounds or best is None or best.implementer == TUNE or any(r.implementer == TUNE and r.parent == best.commit for r in self.rows):
            return
        left, trial_s = self.budget.time_limit_s - (time.monotonic() - self.started), self._trial_s()
        if left < trial_s:
            self.say(f"search: no time left to tune the best's knobs ({max(left, 0):.0f}s left, a trial takes ~{trial_s:.0f}s)")
            return
        self.say(f"search: tuning the best ({best.commit[:12]}, {best.headline_name} {best.headline_value:.2f}): "
                 f"up to {n} knob moves in the {left:.0f}s left")
        task = replace(self._task(uuid.uuid4().hex, best.island, best.round + 1, best.commit, None, json.loads(best.knobs)),
                       n_trials=n, implementer=TUNE, agents=None, tune=True,
                       deadline=time.time() + left - 5)  # the trials stop in time; the driver cancels at the limit
        [row] = self._run_tasks([(task, None)], self._record, tuning=True) or [None]
        if row is not None and row.validated:
            moved = json.loads(row.knobs) != json.loads(best.knobs)
            self.say(f"search: tuned: {row.headline_name} {row.headline_value:.2f} with knobs {row.knobs}"
                     + (" (faster than the best's own knobs, measured again in the pass)" if moved else " (the best's own knobs, measured again, stay)"))

    def _trial_s(self) -> float:
        """How long one of the tuning pass's measurements takes: one of the best's own (a
        serial seed's or a poor design's say nothing of the winner's), at most its best
        trial's benchmark plus a start-up (a trial with oversubscribed threads took 90 s
        beside the best's 15)."""
        best = record.best(self.rows, self.objective)
        if best is None:
            return 0.0
        trials = {"seed": 1, TUNE: self.budget.finalist_trials}.get(best.implementer, self.budget.n_trials)
        bench_s = json.loads(best.metrics or "{}").get("duration_s")
        per = best.evaluate_s / max(1, trials)
        return min(per, bench_s + TRIAL_STARTUP_S) if bench_s else per

    def _reserve_s(self) -> float:
        """Time the evolution leaves for the tuning pass: its trials at the best's pace, at
        most a quarter of the search. None while the seed is the best: a first candidate is
        worth more than the seed's knobs (a slow serial seed's reserve plus one inner loop at
        its pace can exceed what is left of the limit, and the evolution never starts)."""
        best = record.best(self.rows, self.objective)
        if best is None or best.implementer == "seed":
            return 0.0
        return min(self.budget.finalist_trials * self._trial_s(), self.budget.time_limit_s / 4)

    def _evolution_left_s(self, reserve: float) -> float:
        """Seconds of the time limit left to the evolution, `reserve` kept for the tuning pass."""
        return self.budget.time_limit_s - (time.monotonic() - self.started) - reserve

    def _round(self, islands: list, want: int, rnd: int) -> tuple[list[Evaluation], str]:
        """A round, planned in waves of as many inner loops as the cluster runs at once.

        Each wave's parents are chosen after the previous wave's results reached the
        islands, so a cluster smaller than a round (2 CPU cores hold one inner loop)
        builds on what it just measured instead of trying every move from the same
        parent; a cluster that holds the whole round plans it in one wave. The
        Orchestrator plans a round at once (one LLM call per round). Returns the
        round's results and, when the search must stop, why."""
        wave = _capacity(self._inner_options())
        results: list[Evaluation] = []
        while want > 0:
            if why := self._why_not_start({}):
                self._not_started(why, want)
                return results, self._out_of_budget() or "time limit"
            items = self._plan(islands, want if self.agents else min(want, wave), rnd)
            if not items:
                return results, "" if results else (self.agents and self.agents.stop_reason()) or "design space exhausted"
            got = self._dispatch(items, rnd)
            for row in got:
                ray.get(islands[row.island % len(islands)].add.remote(record.member(row)))
            results += got
            want -= len(items)
            if len(got) < len(items):  # not started: out of time or of the agents' budget
                return results, self._out_of_budget() or "time limit"
        return results, ""

    def _ensure_seed(self) -> Evaluation:
        seeds = [r for r in self.rows if r.implementer == "seed"]
        if seeds:
            return seeds[0]
        tmp = self.run_dir / ".seed"
        materialise_seed(tmp)
        commit = self.repo.commit_candidate(tmp, None, "seed: the engine template", branch="seed")
        for i in range(self.target.spec.search.islands):
            self.repo.set_branch(f"island-{i}", commit)
        self.say("search: round 0: measuring the seed")
        task = replace(self._task(uuid.uuid4().hex, 0, 0, commit, None, {}), n_trials=1)  # the baseline, measured as it is
        [row] = self._run_tasks([(task, None)], lambda r: self._record(r, commit_override=commit))
        if not row.validated:
            raise RuntimeError(f"the seed did not validate ({row.failure_phase}: {row.failure_reason}); fix the target before searching")
        return row

    def _islands(self, seed: Evaluation) -> list:
        s = self.target.spec.search
        islands = []
        for i in range(s.islands):
            # Islands live on the head node: they are the driver's state and must not go down with a worker node.
            actor = IslandActor.options(name=island_actor_name(self.name, i), get_if_exists=True, resources={raycluster.HEAD_NODE: 0.001}).remote(
                i, self.objective, seed=self.seed)
            members = [record.member(r) for r in self.rows if r.island == i or r.implementer == "seed"]
            ray.get([actor.receive.remote(members)])
            islands.append(actor)
        return islands

    def _plan(self, islands: list, want: int, rnd: int) -> list:
        if want <= 0:
            return []
        if self.agents is not None:
            items = self._plan_with_agents(rnd, want)
            if items or self.agents.stop_reason():
                return items
            self.say(f"search: round {rnd}: the Orchestrator gave no plan; the offline proposer plans this round")
        tried = {design_key(json.loads(r.design)) for r in self.rows}
        s = self.target.spec.search
        if s.policy == "backlog":
            best = record.member(record.best(self.rows, self.objective))
            tasks = parse_backlog(self.repo.read_planning("BACKLOG.md"))
            tasks = merge_tasks(tasks, seed_backlog(self.proposer.skills, list(best.hints))) if not tasks else tasks
            items = plan_backlog(tasks, best, want, tried, lambda d: self.space.repair(d, self.device), s.islands)
            self.repo.write_planning({"BACKLOG.md": render_backlog(tasks)}, "backlog: took the top tasks")
            return items
        owed = [s.population - sum(r.round == rnd and r.island == i for r in self.rows) for i in range(len(islands))]
        items = plan_evolution(islands, owed, self.proposer, tried, lambda d: self.space.neighbours(d, self.device))
        return _islands_take_turns(items, owed)[:want]

    def _plan_with_agents(self, rnd: int, want: int) -> list[WorkItem]:
        """The Orchestrator's hypotheses as work: each on its parent (the best by default),
        spread over the islands."""
        plan = self.agents.plan(rnd, want, self.repo, self.rows, self.objective)
        best = record.best(self.rows, self.objective)
        by_commit = {r.commit: r for r in self.rows}
        items = []
        for i, h in enumerate(plan.hypotheses[:want]):
            parent = by_commit.get(h.parent) or best
            assert parent is not None  # the seed validated
            items.append(WorkItem(i % self.target.spec.search.islands, record.member(parent),
                                  Proposal(json.loads(parent.design), {}, f"agent: {h.brief()}", h)))
        return items

    def _task(self, eval_id: str, island: int, rnd: int, parent: str, proposal, warm: dict) -> InnerTask:
        agents = None
        if self.agents is not None:
            agents = self.agents.task(next((r for r in self.rows if r.commit == parent), None))
            if proposal is not None and proposal.hypothesis is not None:
                self._hypotheses[eval_id] = proposal.hypothesis
        return InnerTask(eval_id=eval_id, island=island, round=rnd, parent=parent, parent_tree=self.repo.archive(parent), proposal=proposal,
                         warm_knobs=warm, target_path=self.target_arg, space_path=str(self.space.path), n_trials=self.budget.n_trials,
                         implementer=self.implementer, agents=agents)

    def _dispatch(self, items: list, rnd: int) -> list[Evaluation]:
        """Runs planned work in its order (every plan already has the islands take turns)."""
        if self.budget.max_candidates is not None:
            items = items[: max(0, self.budget.max_candidates - self._candidates())]
        tasks = [(self._task(uuid.uuid4().hex, it.island, rnd, it.parent.commit, it.proposal, it.parent.knobs), it) for it in items]
        return self._run_tasks(tasks, self._record)

    def _run_tasks(self, tasks: list, record_result: Callable[[InnerResult], Evaluation], tuning: bool = False) -> list[Evaluation]:
        """Runs inner loops concurrently, as many at once as the cluster has room for, and
        records each result as it arrives (a killed driver loses only what was in flight).

        Tasks wait in the driver, not in Ray's queue, so an inner loop's wall-time limit
        counts from when it started. The search's time limit bounds the whole job: a task
        that would not finish by then (judging by how long inner loops have taken) is not
        started, and one still running then is cancelled and recorded as a timeout. Once
        the agents' budget is spent, no more tasks start; those running finish. A refused
        key cancels everything at once. The tuning pass (`tuning`) was sized to the time left;
        a candidate's trials end where the evolution's share does, as it stands when it starts.
        """
        remote, options = ray.remote(self.inner_loop), self._inner_options()
        limit = self.budget.candidate_time_limit_s + (self.agents.session_limit_s() if self.agents else 0.0)
        waiting = [t for t, _ in tasks]
        pending: dict = {}
        results: list[Evaluation] = []
        while waiting or pending:
            why = "" if tuning else self._why_not_start(pending)
            if waiting and why:
                self._not_started(why, len(waiting))
                waiting = []
            before = set(pending)
            room = _capacity(options) - len(pending)  # asked once a pass: nodes come and go
            while waiting and room > 0:
                t = waiting.pop(0)
                if not tuning:  # its trials end where the evolution's share does, as it stands when the task starts
                    t = replace(t, deadline=time.time() + self._evolution_left_s(self._reserve_s()))
                ref = remote.options(**options, name=f"inner:{t.eval_id[:8]}:island-{t.island}").remote(t)
                pending[ref] = (t, time.monotonic())
                room -= 1
            if not pending:
                break
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
            if ready:  # all that finished, recorded before anything new starts (it plans on them)
                ready, _ = ray.wait(list(pending), num_returns=len(pending), timeout=0)
            for ref in ready:
                task, _ = pending.pop(ref)
                try:
                    result = ray.get(ref)
                except Exception as exc:  # noqa: BLE001 - retries exhausted: record, keep searching
                    result = record.lost_result(self.repo, task, self.target, self.space, f"{type(exc).__name__}: {exc}")
                results.append(record_result(result))
            now = time.monotonic()
            for ref, (task, since) in list(pending.items()):
                late = now - self.started > self.budget.time_limit_s
                if now - since > limit or late:
                    ray.cancel(ref, force=True)
                    pending.pop(ref)
                    why = f"cancelled at the search's time limit ({self.budget.time_limit_s:g}s)" if late else f"no result within {limit:g}s"
                    results.append(record_result(record.lost_result(self.repo, task, self.target, self.space, why, "timeout")))
            if set(pending) != before:  # what `status` shows as running, at most a pass (1 s) late
                self._write_running(pending)
                self._show(tasks[0][0].round, len(results), len(pending), len(waiting))
        record.write_running(self.run_dir, [])
        return results

    def _inner_options(self) -> dict:
        hw = self.target.spec.hardware
        return inner_loop_options(hw.num_cpus, hw.num_gpus, hw.accelerator_type)

    def _not_started(self, why: str, n: int) -> None:
        self.say(f"search: {why}: {n} planned evaluations not started (a resumed search plans them again)")

    def _show(self, rnd: int, done: int, running: int, waiting: int) -> None:
        """The round as it stands (a standing line on a terminal, a line per change elsewhere)."""
        best = record.best(self.rows, self.objective)
        progress.status(f"search: round {rnd}/{self.budget.rounds}: {done} done, {running} running, {waiting} waiting"
                        + (f"; best {best.headline_name} {best.headline_value:.2f} ({best.speedup:.2f}x the seed)" if best else ""))

    def _why_not_start(self, pending: dict) -> str:
        """'' while a new inner loop may start; else why not (cancelling everything first if the key was refused)."""
        if self.agents is not None:
            try:
                spent = self.agents.stop_reason()
            except KeyRefused:
                for ref in pending:
                    ray.cancel(ref, force=True)
                raise
            if spent:
                return spent
        reserve, expected = self._reserve_s(), self._expected_inner_s()
        left = self._evolution_left_s(reserve)
        if left < expected:
            kept = f" (and {reserve:.0f}s kept for tuning the best)" if reserve else ""
            return f"time limit: {max(left, 0):.0f}s left{kept}, an inner loop takes ~{expected:.0f}s"
        return ""

    def _expected_inner_s(self) -> float:
        return expected_inner_s(self.rows)

    def _write_running(self, pending: dict) -> None:
        record.write_running(self.run_dir, [{"eval_id": t.eval_id, "island": t.island, "round": t.round,
                                             "proposal": t.proposal.rationale if t.proposal else "seed", "since": time.time() - (time.monotonic() - t0)}
                                            for t, t0 in pending.values()])

    def _record(self, result: InnerResult, commit_override: str | None = None) -> Evaluation:
        usage = self.agents.usage(result.eval_id) if self.agents else None
        row = record.record_result(self.run_dir, self.repo, result, self.rows, self.target, commit_override, usage)
        self.rows.append(row)
        return row

    def _candidates(self) -> int:
        return sum(r.implementer != "seed" for r in self.rows)

    def _out_of_budget(self) -> str:
        if time.monotonic() - self.started > self.budget.time_limit_s:
            return "time limit"
        if self.agents is not None and self.agents.stop_reason():
            return self.agents.stop_reason()
        if self.budget.max_candidates is not None and self._candidates() >= self.budget.max_candidates:
            return "max candidates"
        return ""

    def _after_round(self, rnd: int, islands: list, results: list[Evaluation]) -> None:
        ray.get([isl.mark_round.remote(rnd) for isl in islands])
        best = record.best(self.rows, self.objective)
        notes = record.revert_if_slower(self.repo, rnd, results, best, self.objective, len(islands))
        if rnd % 2 == 0 and len(islands) > 1:  # migration: each island's best to the next island (a ring)
            bests = ray.get([isl.best.remote() for isl in islands])
            for i, b in enumerate(bests):
                if b is not None:
                    ray.get(islands[(i + 1) % len(islands)].receive.remote([b]))
            notes.append(f"round {rnd}: migrated each island's best to the next island")
        line = record.progress_line(rnd, self.budget.rounds, results, best, self.rows, time.monotonic() - self.started)
        self.say(line)
        if self.agents is not None:
            self.agents.record_round(rnd, self.repo, [(self._hypotheses[r.eval_id], r) for r in results if r.eval_id in self._hypotheses])
            self._write_meta(None, best)  # `status` shows the agents' spend as it grows
        memory = self.repo.read_planning("MEMORY.md") or "# Memory\n\nWhat the outer loop learned, round by round.\n\n"
        self.repo.write_planning({"MEMORY.md": memory + "\n".join([f"- {line}"] + [f"- {n}" for n in notes]) + "\n"}, f"round {rnd}")

    def _write_meta(self, stopped: str | None, best: Evaluation | None) -> None:
        meta = {"target": self.target_arg, "headline": self.objective.metric, "direction": self.objective.direction, "stopped_because": stopped,
                "best": best.commit if best else None, "evaluations": len(self.rows), "implementer": self.implementer}
        if self.agents is not None:
            meta["agents"] = self.agents.state().ledger.to_dict()
        (self.run_dir / "search.json").write_text(json.dumps(meta, indent=2))

    def _finish(self, stopped: str) -> SearchSummary:
        best = record.best(self.rows, self.objective)
        seed = next((r for r in self.rows if r.implementer == "seed"), None)
        if best is not None:
            self.repo.set_branch("best", best.commit)
            winner = self.run_dir / "best"
            shutil.rmtree(winner, ignore_errors=True)
            self.repo.export(best.commit, winner)
        self._write_meta(stopped, best)
        if best is not None:
            self.say(f"search: stopped ({stopped}); best {best.commit[:12]} {best.headline_name} = {best.headline_value:.2f} "
                     f"({best.speedup:.2f}x the seed); winner in {self.run_dir / 'best'} (branch 'best')")
        return SearchSummary(self.run_dir, best, seed, len(self.rows), stopped)
