"""The outer loop: plan -> dispatch inner loops on the cluster -> record -> migrate.

The driver is the only writer of the run's state (git repo, notes, results.parquet,
Optuna storage, planning files); inner loops run anywhere Ray puts them. Every result
is recorded as soon as it arrives, so killing the driver loses only work in flight,
and rerunning the same command resumes from what git and the table say.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import ray

from vibeserve_ray import progress, raycluster
from vibeserve_ray.agents.transport import KeyRefused
from vibeserve_ray.inner.loop import InnerLoop, inner_loop_options, run_inner_loop
from vibeserve_ray.inner.result import InnerResult
from vibeserve_ray.inner.task import Hypothesis, InnerTask, Proposal, design_key
from vibeserve_ray.search import record
from vibeserve_ray.search.clock import SearchBudget, SearchClock
from vibeserve_ray.search.dispatch import Dispatcher, capacity
from vibeserve_ray.search.islands import IslandActor, island_actor_name
from vibeserve_ray.search.policy import (WorkItem, islands_take_turns, merge_tasks, parse_backlog, plan_backlog, plan_evolution, render_backlog,
                                         seed_backlog)
from vibeserve_ray.search.propose import OfflineProposer, RandomProposer
from vibeserve_ray.search.results import Evaluation
from vibeserve_ray.search.state import RunRepo
from vibeserve_ray.seed import materialise_seed
from vibeserve_ray.skills import applicable
from vibeserve_ray.target import Target

if TYPE_CHECKING:  # the agents' team loads anthropic (~3 s): an offline search never does
    from vibeserve_ray.search.team import AgentTeam


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


def _no_agents() -> str:
    return ""  # no agents' budget to spend


class Search:
    def __init__(self, target: Target, target_arg: str, run_dir: Path, space, budget: SearchBudget, implementer: str = "offline",
                 say: Callable[[str], None] = print, seed: int = 0, inner_loop: InnerLoop = run_inner_loop, agents: AgentTeam | None = None):
        """`inner_loop` runs one candidate as a Ray task (the method's inner loop; orchestration
        benchmarks and tests pass a stand-in that only takes time). With `agents`, the
        Orchestrator plans each round and LLM agents implement, review and read each candidate."""
        self.target, self.target_arg, self.run_dir, self.budget = target, target_arg, Path(run_dir), budget
        self.space = space.under(target.lowest_precision)  # only the points its accuracy contract admits
        self.seed, self.say = seed, say
        self.objective = target.spec.benchmark.objective
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.repo = RunRepo(self.run_dir / "repo")
        self.rows = record.reconcile(self.run_dir, self.repo)  # appended to as results arrive, never replaced: the clock reads it
        record.keep_candidates(self.repo, self.rows)  # a run recorded before every candidate had its tag
        self.name = self.run_dir.resolve().name
        self.device = target.spec.hardware.device
        self.agents = agents
        self.implementer = agents.name if agents else implementer
        self.clock = SearchClock(budget, self.objective, self.rows, agents.session_limit_s() if agents else 0.0)
        hw = target.spec.hardware
        self.dispatcher = Dispatcher(inner_loop, inner_loop_options(hw.num_cpus, hw.num_gpus, hw.accelerator_type), self.clock, self.run_dir,
                                     agents.stop_reason if agents else _no_agents, self._lost, say, self._show)
        self._hypotheses: dict[str, Hypothesis] = {}  # eval_id -> what its Implementer was asked
        rng_seed = seed * 100_003 + len(self.rows)  # a resumed search does not replay its first choices
        if implementer == "random":
            self.proposer: OfflineProposer = RandomProposer(self.space.all_designs(self.device), seed=rng_seed)
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
            if reason := self._why_stop():
                stopped = reason
                break
            done_this_round = sum(r.round == rnd and r.implementer != record.TUNE for r in self.rows)
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
        self._tune_best()
        return self._finish(stopped)

    def _round(self, islands: list, want: int, rnd: int) -> tuple[list[Evaluation], str]:
        """A round, planned in waves of as many inner loops as the cluster runs at once.

        Each wave's parents are chosen after the previous wave's results reached the
        islands, so a cluster smaller than a round (2 CPU cores hold one inner loop)
        builds on what it just measured instead of trying every move from the same
        parent; a cluster that holds the whole round plans it in one wave. The
        Orchestrator plans a round at once (one LLM call per round). Returns the
        round's results and, when the search must stop, why."""
        wave = capacity(self.dispatcher.options)
        results: list[Evaluation] = []
        while want > 0:
            if why := self.dispatcher.why_not_start():
                self.dispatcher.not_started(why, want)
                return results, self._why_stop() or "time limit"
            items = self._plan(islands, want if self.agents else min(want, wave), rnd)
            if not items:
                return results, "" if results else (self.agents and self.agents.stop_reason()) or "design space exhausted"
            got = self._dispatch(items, rnd)
            for row in got:
                ray.get(islands[row.island % len(islands)].add.remote(record.member(row)))
            results += got
            want -= len(items)
            if len(got) < len(items):  # not started: out of time or of the agents' budget
                return results, self._why_stop() or "time limit"
        return results, ""

    def _why_stop(self) -> str:
        return self.clock.why_stop(self.agents.stop_reason if self.agents else _no_agents)

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
        [row] = self.dispatcher.run([task], lambda r: self._record(r, commit_override=commit))
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

    # --- plan ------------------------------------------------------------------------------

    def _plan(self, islands: list, want: int, rnd: int) -> list[WorkItem]:
        if want <= 0:
            return []
        if self.agents is not None:
            items = self._plan_with_agents(rnd, want)
            if items or self.agents.stop_reason():
                return items
            self.say(f"search: round {rnd}: the Orchestrator gave no plan; the offline proposer plans this round")
        tried = {design_key(r.design) for r in self.rows}
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
        return islands_take_turns(items, owed)[:want]

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
                                  Proposal(dict(parent.design), {}, f"agent: {h.brief()}", h)))
        return items

    # --- dispatch ------------------------------------------------------------------------

    def _task(self, eval_id: str, island: int, rnd: int, parent: str, proposal: Proposal | None, warm: dict) -> InnerTask:
        agents = None
        if self.agents is not None:
            agents = self.agents.task(next((r for r in self.rows if r.commit == parent), None))
            if proposal is not None and proposal.hypothesis is not None:
                self._hypotheses[eval_id] = proposal.hypothesis
        return InnerTask(eval_id=eval_id, island=island, round=rnd, parent=parent, parent_tree=self.repo.archive(parent), proposal=proposal,
                         warm_knobs=warm, target_path=self.target_arg, space_path=str(self.space.path), n_trials=self.budget.n_trials,
                         implementer=self.implementer, agents=agents)

    def _dispatch(self, items: list[WorkItem], rnd: int) -> list[Evaluation]:
        """Runs planned work in its order (every plan already has the islands take turns)."""
        left = self.clock.candidates_left()
        items = items if left is None else items[:left]
        return self.dispatcher.run([self._task(uuid.uuid4().hex, it.island, rnd, it.parent.commit, it.proposal, it.parent.knobs) for it in items],
                                   self._record)

    def _tune_best(self) -> None:
        """The finalist's tuning pass (`[search] finalist_trials`): knob moves on the best
        candidate, as many as the time left holds; once per best (a resumed search does
        not tune it again; `--rounds 0` measures the seed only)."""
        best = record.best(self.rows, self.objective)
        n = self.budget.finalist_trials
        if (not n or not self.budget.rounds or best is None or best.implementer == record.TUNE
                or any(r.implementer == record.TUNE and r.parent == best.commit for r in self.rows)):
            return
        if why := self.clock.why_not_tune():
            self.say(f"search: {why}")
            return
        self.say(f"search: tuning the best ({best.commit[:12]}, {best.headline_name} {best.headline_value:.2f}): "
                 f"up to {n} knob moves in the {self.clock.left_s():.0f}s left")
        task = replace(self._task(uuid.uuid4().hex, best.island, best.round + 1, best.commit, None, dict(best.knobs)),
                       n_trials=n, implementer=record.TUNE, agents=None, tune=True, deadline=self.clock.tuning_deadline())
        [row] = self.dispatcher.run([task], self._record, tuning=True) or [None]
        if row is not None and row.validated:
            moved = row.knobs != best.knobs
            self.say(f"search: tuned: {row.headline_name} {row.headline_value:.2f} with knobs {json.dumps(row.knobs, sort_keys=True)}"
                     + (" (faster than the best's own knobs, measured again in the pass)" if moved else " (the best's own knobs, measured again, stay)"))

    def _show(self, rnd: int, done: int, running: int, waiting: int) -> None:
        """The round as it stands (a standing line on a terminal, a line per change elsewhere)."""
        best = record.best(self.rows, self.objective)
        progress.status(f"search: round {rnd}/{self.budget.rounds}: {done} done, {running} running, {waiting} waiting"
                        + (f"; best {best.headline_name} {best.headline_value:.2f} ({best.speedup:.2f}x the seed)" if best else ""))

    # --- record and adapt ----------------------------------------------------------------

    def _record(self, result: InnerResult, commit_override: str | None = None) -> Evaluation:
        usage = self.agents.usage(result.eval_id) if self.agents else None
        row = record.record_result(self.run_dir, self.repo, result, self.rows, self.target, commit_override, usage)
        self.rows.append(row)
        return row

    def _lost(self, task: InnerTask, why: str, verdict: str) -> InnerResult:
        return record.lost_result(self.repo, task, self.target, self.space, why, verdict)

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
        line = record.progress_line(rnd, self.budget.rounds, results, best, self.rows, self.clock.elapsed_s())
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
