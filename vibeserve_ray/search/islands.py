"""Islands: populations evolving apart, each a named Ray actor (OpenEvolve's database).

An island holds its members (every candidate evaluated on it) and an elite archive (the
best validated ones); it picks parents among the elites, weighted by how close each
comes to the best, takes in migrants (another island's best), and publishes its counters
as Ray metrics so the dashboard shows per-island progress. The driver rebuilds islands
from the results table on resume, so an island's memory is never the only copy.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import ray
from ray.util import metrics

from vibeserve_ray.inner.hints import Hint
from vibeserve_ray.target import Objective

SHARPNESS = 4  # parent weight = (speedup over the best) ** SHARPNESS: 0.9x -> 0.66, 0.5x -> 0.06, 0.25x -> 0.004


@dataclass(frozen=True)
class Member:
    commit: str
    design: dict[str, str]
    knobs: dict
    verdict: str
    headline: float
    hints: tuple[Hint, ...] = ()
    gate: str = ""  # the phase that stopped it, when not validated

    @property
    def validated(self) -> bool:
        return self.verdict == "validated" and not math.isnan(self.headline)


class Island:
    """Plain class (testable without Ray); `IslandActor` is its actor form."""

    def __init__(self, index: int, objective: Objective, elite_size: int = 4, seed: int = 0):
        self.index, self.objective, self.elite_size = index, objective, elite_size
        self.members: list[Member] = []
        self.rng = random.Random(seed * 1009 + index)
        self._metrics = None

    def _score(self, m: Member) -> float:
        return self.objective.score(m.headline)

    def elites(self) -> list[Member]:
        valid = [m for m in self.members if m.validated]
        return sorted(valid, key=self._score, reverse=True)[: self.elite_size]

    def best(self) -> Member | None:
        elites = self.elites()
        return elites[0] if elites else None

    def add(self, member: Member) -> None:
        if all(m.commit != member.commit for m in self.members):
            self.members.append(member)
        self._publish(member)

    def select_parent(self) -> Member | None:
        """Mostly the best, sometimes a runner-up (diversity), as often as it comes close:
        weighted by its speedup over the best to the power SHARPNESS. A runner-up at 0.9x
        the best is picked 2/3 as often as the best, the serial seed at 0.25x almost never
        (a tournament of two picked it one time in four: a 2-core search with time for four
        evaluations spent one on the seed's neighbours again)."""
        elites = self.elites()
        if not elites:
            return None
        weights = [self.objective.speedup(m.headline, elites[0].headline) ** SHARPNESS for m in elites]
        weights = [w if w == w else 0.0 for w in weights]  # nan: a headline of 0
        return self.rng.choices(elites, weights)[0] if sum(weights) > 0 else elites[0]

    def receive(self, migrants: list[Member]) -> None:
        for m in migrants:
            if all(x.commit != m.commit for x in self.members):
                self.members.append(m)

    def counts(self) -> dict[str, int]:
        out = {"evaluated": len(self.members)}
        for v in ("validated", "rejected", "failed", "timeout"):
            out[v] = sum(m.verdict == v for m in self.members)
        return out

    def start_round(self, rnd: int) -> None:
        """The round this island is working on, as a metric (`vibeserve_round`)."""
        self._ensure_metrics()["current"].set(rnd, tags={"island": str(self.index)})

    def mark_round(self, rnd: int) -> None:
        """The round this island has finished, as a metric beside its counts."""
        self._ensure_metrics()["round"].set(rnd, tags={"island": str(self.index)})

    def _ensure_metrics(self) -> dict:
        """Ray metrics, exported to the dashboard's Prometheus endpoint; made on first use."""
        if self._metrics is None:
            tags = ("island",)
            self._metrics = {
                "evaluated": metrics.Counter("vibeserve_candidates_evaluated", "Candidates evaluated", tag_keys=tags),
                "failed": metrics.Counter("vibeserve_candidates_failed", "Candidates that crashed, hung or ran out of memory", tag_keys=tags),
                "rejected": metrics.Counter("vibeserve_candidates_rejected", "Candidates the judge rejected", tag_keys=tags),
                "stopped": metrics.Counter("vibeserve_candidates_stopped", "Candidates not validated, by the gate (phase) that stopped them",
                                           tag_keys=("island", "gate", "verdict")),
                "best": metrics.Gauge("vibeserve_best_headline", "Best validated headline metric", tag_keys=tags),
                "round": metrics.Gauge("vibeserve_search_round", "Last round the island finished", tag_keys=tags),
                "current": metrics.Gauge("vibeserve_round", "Round the island is working on", tag_keys=tags),
            }
        return self._metrics

    def _publish(self, member: Member) -> None:
        m, tag = self._ensure_metrics(), {"island": str(self.index)}
        m["evaluated"].inc(1, tags=tag)
        if member.verdict in ("failed", "timeout"):
            m["failed"].inc(1, tags=tag)
        elif member.verdict == "rejected":
            m["rejected"].inc(1, tags=tag)
        if member.verdict != "validated":
            m["stopped"].inc(1, tags=tag | {"gate": member.gate or "unknown", "verdict": member.verdict})
        best = self.best()
        if best is not None:
            m["best"].set(best.headline, tags=tag)


@ray.remote(num_cpus=0)
class IslandActor(Island):
    """An island living in the cluster, named `vibeserve:<run>:island-<i>`."""


def island_actor_name(run_name: str, index: int) -> str:
    return f"vibeserve:{run_name}:island-{index}"
