"""What the report shows, read from a run directory (finished or still going).

Everything is read, nothing written: the driver of a running search is the only writer
of the run (results.parquet, git, optuna.db), so the report takes the table as last
written, adds any evaluation whose git note is there before its row, and opens the
Optuna storage only if it exists.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import optuna

from vibeserve_ray.agents.ledger import ApiUsage
from vibeserve_ray.errors import BadInput
from vibeserve_ray.search.record import RUNNING_FILE
from vibeserve_ray.search.record import best as best_of  # RunView.best is a property
from vibeserve_ray.search.results import Evaluation, read_results, rows_from_notes
from vibeserve_ray.search.state import RunRepo
from vibeserve_ray.search.status import run_objective
from vibeserve_ray.search.studies import open_studies, study_name
from vibeserve_ray.target import Objective

LATENCY = "p99_e2el_ms"  # the scatter's latency axis
THROUGHPUT = "output_throughput"


@dataclass(frozen=True)
class Running:
    eval_id: str
    island: int
    round: int
    proposal: str
    since: float


@dataclass(frozen=True)
class LineageStep:
    commit: str
    change: str  # the commit's subject: what the implementer changed
    headline: float
    speedup_over_parent: float  # NaN for the seed
    diffstat: str


@dataclass(frozen=True)
class KnobTrial:
    """One Optuna trial of a knob study, as the report draws it."""

    params: dict
    value: float  # NaN: the trial failed


@dataclass(frozen=True)
class KnobStudy:
    """The Optuna trials of every candidate with the best's design, and fANOVA importances
    where there are enough of them."""

    studies: tuple[str, ...]
    trials: tuple[KnobTrial, ...]
    importances: dict[str, float]


@dataclass(frozen=True)
class Remeasure:
    seed_commit: str
    seed_headline: float
    best_commit: str
    best_headline: float
    speedup: float
    failures: tuple[str, ...]


@dataclass(frozen=True)
class RunView:
    run_dir: Path
    target: str
    stopped_because: str | None  # None: still running (or killed)
    objective: Objective  # the headline metric and which way is better
    rows: tuple[Evaluation, ...]  # in the order they finished
    running: tuple[Running, ...]
    lineage: tuple[LineageStep, ...]  # seed first
    knobs: KnobStudy | None
    remeasure: Remeasure | None
    agents: dict[str, ApiUsage]  # spend by role; empty: no agent calls
    budget_usd: float | None  # the agents' budget, when one was set
    read_at: float

    @property
    def best(self) -> Evaluation | None:
        return best_of(self.rows, self.objective)

    @property
    def started_at(self) -> float:
        return min((r.started_at for r in self.rows if r.started_at), default=self.read_at)

    def ranked(self) -> list[Evaluation]:
        """Validated candidates best first, then the rest in the order they finished."""
        valid = sorted((r for r in self.rows if _measured(r)), key=lambda r: -self.objective.score(r.headline_value))
        return valid + [r for r in self.rows if not _measured(r)]


def _measured(row: Evaluation) -> bool:
    return row.validated and not math.isnan(row.headline_value)


def read_run(run_dir: Path) -> RunView:
    """Everything the report needs from `run_dir`; BadInput when it is not a run directory."""
    run_dir = Path(run_dir)
    if not (run_dir / "repo").is_dir():
        raise BadInput(str(run_dir), "run", "not a search run directory (no repo/ inside)")
    repo = RunRepo(run_dir / "repo")
    meta = _json(run_dir / "search.json", {})
    rows = _rows(run_dir, repo)
    objective = run_objective(run_dir, meta)
    best = best_of(rows, objective)
    return RunView(
        run_dir=run_dir, target=str(meta.get("target") or "?"), stopped_because=meta.get("stopped_because"),
        objective=objective,
        rows=tuple(rows), running=tuple(Running(**{k: t[k] for k in ("eval_id", "island", "round", "proposal", "since")})
                                         for t in _json(run_dir / RUNNING_FILE, [])),
        lineage=_lineage(repo, rows, best, objective), knobs=None if best is None else _knob_study(run_dir, rows, best),
        remeasure=_remeasure(run_dir / "remeasure.json"), agents=_agents(meta, rows),
        budget_usd=(meta.get("agents") or {}).get("budget_usd"), read_at=time.time(),
    )


def _json(path: Path, default):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):  # absent, or caught mid-write by a running search
        return default


def _rows(run_dir: Path, repo: RunRepo) -> list[Evaluation]:
    """The table, plus evaluations noted in git a moment before their row was written."""
    rows = read_results(run_dir)
    seen = {r.eval_id for r in rows}
    extra = [r for r in rows_from_notes(repo.all_notes()) if r.eval_id not in seen]
    return sorted(rows + extra, key=lambda r: (r.finished_at, r.eval_id)) if extra else rows


def _lineage(repo: RunRepo, rows: list[Evaluation], best: Evaluation | None, objective: Objective) -> tuple[LineageStep, ...]:
    if best is None:
        return ()
    by_commit = {r.commit: r for r in rows}  # the latest evaluation of each commit
    steps, parent_value = [], math.nan
    commits = list(reversed(repo.lineage(best.commit)))
    for parent, commit in zip([None] + commits[:-1], commits):
        row = by_commit.get(commit)
        value = row.headline_value if row is not None else math.nan
        steps.append(LineageStep(commit, repo.subject(commit), value, objective.speedup(value, parent_value), repo.diffstat(parent, commit)))
        parent_value = value
    return tuple(steps)


def _knob_study(run_dir: Path, rows: list[Evaluation], best: Evaluation) -> KnobStudy | None:
    storage = open_studies(run_dir)
    if storage is None:
        return None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    existing = set(optuna.get_all_study_names(storage))
    names = sorted({study_name(r.island, r.commit) for r in rows if r.design == best.design} & existing)
    trials = [t for name in names for t in optuna.load_study(study_name=name, storage=storage).trials]
    if not trials:
        return None
    return KnobStudy(tuple(names), tuple(KnobTrial(dict(t.params), math.nan if t.value is None else float(t.value)) for t in trials),
                     _importances(trials, best, storage, names))


def _importances(trials: list, best: Evaluation, storage: optuna.storages.BaseStorage, names: list[str]) -> dict[str, float]:
    """fANOVA importances over the pooled trials; empty when they cannot say (fewer than
    two completed trials, or no knob that varied)."""
    done = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    varied = {k for k in done[0].params if len({repr(t.params.get(k)) for t in done}) > 1} if done else set()
    if len(done) < 2 or not varied:
        return {}
    direction = optuna.load_study(study_name=names[0], storage=storage).direction
    pooled = optuna.create_study(direction=direction)
    pooled.add_trials(done)
    try:
        return optuna.importance.get_param_importances(pooled, params=sorted(varied))
    except (ValueError, RuntimeError):  # e.g. every value equal: nothing to attribute
        return {}


def _agents(meta: dict, rows: list[Evaluation]) -> dict[str, ApiUsage]:
    """By role: the gateway's ledger as search.json last recorded it (the Orchestrator
    included), else the sum of the candidates' own columns."""
    ledger = (meta.get("agents") or {}).get("by_role")
    if ledger:
        by_role = {role: ApiUsage.from_dict(u) for role, u in ledger.items()}
    else:
        by_role = {}
        for r in rows:
            for role, u in r.agent_usage.items():
                by_role[role] = by_role.get(role, ApiUsage()) + ApiUsage.from_dict(u)
    return {role: u for role, u in sorted(by_role.items()) if u.calls}


def _remeasure(path: Path) -> Remeasure | None:
    data = _json(path, None)
    if not data or "seed" not in data or "best" not in data:
        return None
    seed, best = data["seed"], data["best"]

    def num(x) -> float:
        return math.nan if x is None else float(x)

    failures = tuple(f"{name}: {d['failure']}" for name, d in (("seed", seed), ("best", best)) if d.get("failure"))
    return Remeasure(seed["commit"], num(seed.get("headline")), best["commit"], num(best.get("headline")), num(data.get("speedup")), failures)
