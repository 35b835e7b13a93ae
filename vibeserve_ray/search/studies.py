"""Optuna studies kept in the run directory (`RUN/optuna.db`).

Inner loops tune in memory wherever Ray runs them (no shared filesystem); the driver
stores each candidate's trials here as one study, so they survive restarts and open in
`optuna-dashboard sqlite:///RUN/optuna.db`.
"""

from __future__ import annotations

import math
import sqlite3
from pathlib import Path

import optuna
import sqlalchemy

from vibeserve_ray.search.results import set_aside

STUDIES_FILE = "optuna.db"


def storage_url(run_dir: Path) -> str:
    return f"sqlite:///{(Path(run_dir) / STUDIES_FILE).resolve()}"


def open_studies(run_dir: Path) -> "optuna.storages.RDBStorage | None":
    """The run's studies for reading, or None while there are none yet. A reader never
    creates the schema: opening a new optuna.db the driver is still creating would race it
    (both stamp the schema's version; the loser fails)."""
    path = Path(run_dir) / STUDIES_FILE
    try:
        with sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True) as db:
            stamped = db.execute("SELECT count(*) FROM alembic_version").fetchone()[0] > 0
    except sqlite3.Error:  # no file, no schema yet, or not a database
        return None
    if not stamped:
        return None
    return optuna.storages.RDBStorage(storage_url(run_dir), skip_table_creation=True, skip_compatibility_check=True)


def study_name(island: int, commit: str) -> str:
    """The study of one evaluated candidate: its island and short commit."""
    return f"island-{island}:{commit[:12]}"


def save_study(run_dir: Path, name: str, direction: str, trials: list[dict]) -> bool:
    """One study per candidate (`name`), its trials in the order they ran; idempotent.
    False when optuna.db is no database (it is set aside: the caller rebuilds the studies
    from the notes)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for attempt in range(2):  # a second try: someone else (optuna-dashboard) created the schema at the same moment
        try:
            _store(run_dir, name, direction, trials)
            return True
        except (sqlalchemy.exc.SQLAlchemyError, sqlite3.DatabaseError, optuna.exceptions.StorageInternalError):
            if attempt:  # no database any more, even between creating the study and adding its trials
                set_aside(Path(run_dir) / STUDIES_FILE)
                return False
    return False


def _store(run_dir: Path, name: str, direction: str, trials: list[dict]) -> None:
    study = optuna.create_study(storage=storage_url(run_dir), study_name=name, direction=direction, load_if_exists=True)
    if len(study.trials) >= len(trials):  # already stored (a resumed driver recording again)
        return
    for t in trials[len(study.trials):]:  # a first try that stopped part way stored the first ones
        dists = {k: optuna.distributions.json_to_distribution(v) for k, v in t.get("distributions", {}).items()}
        params = {k: t["knobs"][k] for k in dists}
        failed = t["value"] is None or math.isnan(t["value"])
        study.add_trial(optuna.trial.create_trial(
            params=params, distributions=dists, value=None if failed else t["value"],
            state=optuna.trial.TrialState.FAIL if failed else optuna.trial.TrialState.COMPLETE,
            user_attrs={"slo_passed": bool(t.get("slo_passed")), "knobs": t["knobs"]}))


def rebuild_studies(run_dir: Path, notes: dict[str, list[dict]], direction: str) -> None:
    """Every noted candidate's study again, from the trials its note keeps."""
    for commit, records in notes.items():
        for rec in records:
            if rec.get("trials"):
                save_study(run_dir, study_name(rec["island"], commit), direction, rec["trials"])

