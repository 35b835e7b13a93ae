"""After the search: the seed and the winner measured again, through the path that serves them.

The evaluator tunes knobs on the direct path (the candidate's engine process behind its
front, alone on the node). `vibeserve deploy` serves the same engine process behind a Ray
Serve replica, whose relay, Serve's ingress and Ray's own processes take CPU on the same
node, and the fastest direct setting is not always the fastest served one: on 2 cores,
an engine with 2 torch threads kept ~0.7 of its direct throughput under Serve while 1
thread kept ~0.9 and served faster. So the finalists are deployed as `deploy` deploys them
(on the search's Ray, which the CLI starts as it starts deploy's: raycluster.RAY_ENV),
measured through Serve's ingress with every response checked, the winner in its tuned
knobs and in the variants that leave Serve a core; the best served knobs go into
`remeasure.json`, and `deploy RUN` serves the winner with them.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ray import serve

from vibeserve_ray.deploy.config import Chosen, ServeOptions, base_url, serve_config
from vibeserve_ray.deploy.launch import application
from vibeserve_ray.errors import BadInput
from vibeserve_ray.inner.evaluate import bench_url
from vibeserve_ray.raycluster import free_port
from vibeserve_ray.search.results import Evaluation
from vibeserve_ray.search.state import RunRepo
from vibeserve_ray.target import Target

REMEASURE_FILE = "remeasure.json"
DRAINED_WAIT_S = 0.2
APP_NAME = "vibeserve-remeasure"  # not the target's name: a deployment of it on the same cluster stays up


@dataclass(frozen=True)
class Served:
    """One finalist as measured through Serve: its headline, or why there is none."""

    knobs: dict[str, Any]
    headline: float | None
    exact_responses: str = ""  # n/m equal to the reference's greedy output
    failure: str | None = None
    accurate_responses: str = ""  # n/m meeting the target's accuracy contract (its statistics decide under a tolerance one)

    def to_dict(self) -> dict[str, Any]:
        return {"knobs": self.knobs, "headline": self.headline, "exact_responses": self.exact_responses,
                "accurate_responses": self.accurate_responses, "failure": self.failure}


def knob_variants(knobs: dict[str, Any]) -> list[dict[str, Any]]:
    """The tuned knobs, then the same with one torch thread per engine process (leaving the
    serving stack a core), where that is a different setting."""
    variants = [dict(knobs)]
    if "num_threads" in knobs and knobs["num_threads"] != 1:
        variants.append({**knobs, "num_threads": 1})
    return variants


def remeasure(target: Target, run_dir: Path, seed: Evaluation, best: Evaluation, say: Callable[[str], None]) -> dict[str, Any]:
    """Measures the seed and the winner's knob variants through Serve on the connected Ray;
    writes and returns RUN/remeasure.json."""
    repo = RunRepo(run_dir / "repo")
    objective = target.spec.benchmark.objective
    serve_was_running = bool(serve.status().proxies)
    port = free_port()
    out: dict[str, Any] = {"path": "ray serve"}
    try:
        with tempfile.TemporaryDirectory(prefix="vibeserve-remeasure-") as tmp:
            for name, row in (("seed", seed), ("best", best)):
                candidate = repo.export(row.commit, Path(tmp) / name)
                variants = [dict(row.knobs)] if name == "seed" else knob_variants(row.knobs)
                measured = []
                for knobs in variants:
                    say(f"search: re-measuring the {name} ({row.commit[:12]}) through Ray Serve, knobs {knobs}")
                    measured.append(_measure_served(target, candidate, knobs, port))
                ok = [m for m in measured if m.headline is not None]
                chosen = max(ok, key=lambda m: objective.score(m.headline)) if ok else measured[0]
                out[name] = {"commit": row.commit} | chosen.to_dict()
                if name == "best":
                    out["variants"] = [m.to_dict() for m in measured]
                    if ok:
                        out["serve_knobs"] = chosen.knobs
    finally:
        if serve_was_running:
            serve.delete(APP_NAME)
        else:
            serve.shutdown()
    seed_v, best_v = out["seed"]["headline"], out["best"]["headline"]
    if seed_v and best_v:
        out["speedup"] = objective.speedup(best_v, seed_v)
        say(f"search: side by side through Ray Serve: seed {objective.metric} = {seed_v:.2f}, best {objective.metric} = {best_v:.2f}: "
            f"{out['speedup']:.2f}x (served with knobs {out['best']['knobs']})")
    (run_dir / REMEASURE_FILE).write_text(json.dumps(out, indent=2))
    return out


def _measure_served(target: Target, candidate: Path, knobs: dict[str, Any], port: int) -> Served:
    """One deployment of `candidate` with `knobs`, as `vibeserve deploy` makes it, benchmarked."""
    chosen = Chosen(str(candidate.resolve()), knobs, target, str(candidate))
    config = serve_config(chosen, ServeOptions(port=port))
    # deleted once its benchmark is over, with nothing in flight: no need for Serve's 2 s wait for late requests
    config["applications"][0]["deployments"][0]["graceful_shutdown_wait_loop_s"] = DRAINED_WAIT_S
    _, app = application(config)
    try:
        serve.start(http_options=config["http_options"])
        serve.run(app, name=APP_NAME, route_prefix="/")
        measured = bench_url(target, base_url(config), target.served_name)
    except (RuntimeError, BadInput) as exc:  # an unhealthy deployment, or an ingress that never answered
        return Served(knobs, None, failure=f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1] if str(exc).strip() else ''}")
    finally:
        serve.delete(APP_NAME)
    a = measured.accuracy
    exact, accurate = f"{a.exact}/{a.checked}", f"{a.accurate}/{a.checked}"
    if not a.ok:
        return Served(knobs, None, exact, a.failure, accurate)
    if measured.report.metrics.completed == 0:
        return Served(knobs, None, exact, "no request completed", accurate)
    return Served(knobs, measured.report.headline_value, exact, None, accurate)


def served_knobs(run_dir: Path, commit: str) -> dict[str, Any] | None:
    """The knobs the re-measure found best through Serve for `commit`, if it measured it."""
    path = Path(run_dir) / REMEASURE_FILE
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    best = data.get("best") or {}
    return data.get("serve_knobs") if best.get("commit") == commit else None
