"""Optuna studies kept in the run directory (`RUN/optuna.db`).

Inner loops tune in memory wherever Ray runs them (no shared filesystem); the driver
stores each candidate's trials here as one study, so they survive restarts and open in
`optuna-dashboard sqlite:///RUN/optuna.db`.
"""

from __future__ import annotations

import math
from pathlib import Path

import optuna


def storage_url(run_dir: Path) -> str:
    return f"sqlite:///{(Path(run_dir) / 'optuna.db').resolve()}"


def study_name(island: int, commit: str) -> str:
    """The study of one evaluated candidate: its island and short commit."""
    return f"island-{island}:{commit[:12]}"


def save_study(run_dir: Path, name: str, direction: str, trials: list[dict]) -> None:
    """One study per candidate (`name`), its trials in the order they ran; idempotent."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(storage=storage_url(run_dir), study_name=name, direction=direction, load_if_exists=True)
    if study.trials:  # already stored (a resumed driver recording again)
        return
    for t in trials:
        dists = {k: optuna.distributions.json_to_distribution(v) for k, v in t.get("distributions", {}).items()}
        params = {k: t["knobs"][k] for k in dists}
        failed = t["value"] is None or math.isnan(t["value"])
        study.add_trial(optuna.trial.create_trial(
            params=params, distributions=dists, value=None if failed else t["value"],
            state=optuna.trial.TrialState.FAIL if failed else optuna.trial.TrialState.COMPLETE,
            user_attrs={"slo_passed": bool(t.get("slo_passed")), "knobs": t["knobs"]}))
