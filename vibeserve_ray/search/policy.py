"""Outer-loop policies: what to try next. Both produce the same inner-loop work items.

`evolution`: each island picks a parent from its elites and the proposer proposes
the most promising untried change to it. `backlog`: a prioritised list of optimisation
tasks (the paper's issue tracker) kept in BACKLOG.md; each round takes the top tasks
and applies them to the best candidate so far.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass

import ray

from vibeserve_ray.inner.hints import Hint
from vibeserve_ray.inner.task import Proposal, design_key
from vibeserve_ray.search.islands import Member
from vibeserve_ray.search.propose import OfflineProposer
from vibeserve_ray.skills import Skill


@dataclass(frozen=True)
class WorkItem:
    island: int
    parent: Member
    proposal: Proposal


def plan_evolution(islands: list, owed: list[int], proposer: OfflineProposer, tried: set[str], neighbours) -> list[WorkItem]:
    """Up to `owed[i]` children for island i, never a design tried before."""
    items = []
    parents = ray.get([isl.select_parent.remote() for isl in islands])
    for index, (isl, first) in enumerate(zip(islands, parents)):
        for slot in range(owed[index]):
            parent = first if slot == 0 else ray.get(isl.select_parent.remote())
            if parent is None:
                continue
            proposal = proposer.propose(parent.design, list(parent.hints), tried, neighbours(parent.design))
            if proposal is None:
                continue
            tried.add(proposal.key())
            items.append(WorkItem(index, parent, proposal))
    return items


def islands_take_turns(items: list[WorkItem], owed: list[int]) -> list[WorkItem]:
    """Interleaves the round's work by island, the island owed most children first, so a
    cluster smaller than a round (or a time limit) still explores from every island."""
    by_island: dict[int, list[WorkItem]] = {}
    for it in sorted(items, key=lambda it: -owed[it.island]):
        by_island.setdefault(it.island, []).append(it)
    return [it for turn in itertools.zip_longest(*by_island.values()) for it in turn if it is not None]


@dataclass
class Task:
    """One backlog entry: a design change and why it is worth trying."""

    changes: dict[str, str]
    priority: float
    why: str
    status: str = "open"  # open | done

    def line(self) -> str:
        box = "x" if self.status == "done" else " "
        return f"- [{box}] p={self.priority:.1f} {json.dumps(self.changes, sort_keys=True)} -- {self.why}"


def parse_backlog(text: str) -> list[Task]:
    tasks = []
    for line in text.splitlines():
        if not line.startswith("- ["):
            continue
        status = "done" if line[3] == "x" else "open"
        rest = line[6:]
        prio, rest = rest.split(" ", 1)
        changes, why = rest.split(" -- ", 1)
        tasks.append(Task(json.loads(changes), float(prio[2:]), why, status))
    return tasks


def render_backlog(tasks: list[Task]) -> str:
    ordered = sorted(tasks, key=lambda t: (t.status == "done", -t.priority))
    return "# Backlog\n\nOptimisation tasks, highest priority first; `[x]` done.\n\n" + "\n".join(t.line() for t in ordered) + "\n"


def seed_backlog(skills: list[Skill], hints: list[Hint]) -> list[Task]:
    tasks = [Task(dict(h.suggest), h.weight, f"hint: {h.text}") for h in hints if h.suggest]
    tasks += [Task(dict(s.applies_to), s.prior, f"skill {s.name}") for s in skills if s.applies_to]
    return merge_tasks([], tasks)


def merge_tasks(existing: list[Task], new: list[Task]) -> list[Task]:
    """Adds new tasks; the same change is one task whose priority adds up."""
    by_key = {json.dumps(t.changes, sort_keys=True): t for t in existing}
    for t in new:
        key = json.dumps(t.changes, sort_keys=True)
        if key in by_key:
            if by_key[key].status == "open":
                by_key[key].priority += t.priority
        else:
            by_key[key] = Task(dict(t.changes), t.priority, t.why)
    return list(by_key.values())


def plan_backlog(tasks: list[Task], best: Member, n: int, tried: set[str], repair, n_islands: int) -> list[WorkItem]:
    """The top open tasks applied to the best candidate (repaired to satisfy the space)."""
    items = []
    for task in sorted((t for t in tasks if t.status == "open"), key=lambda t: -t.priority):
        if len(items) >= n:
            break
        task.status = "done"
        design = repair({**best.design, **task.changes})
        if design is None or design_key(design) in tried:
            continue
        tried.add(design_key(design))
        changes = {k: v for k, v in design.items() if best.design.get(k) != v}
        items.append(WorkItem(len(items) % max(1, n_islands), best, Proposal(design, changes, f"backlog: {task.why}")))
    return items
