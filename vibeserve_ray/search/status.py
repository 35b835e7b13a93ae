"""`vibeserve status RUN`: the leaderboard, what is running, and the lineage of the best."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from vibeserve_ray.errors import BadInput
from vibeserve_ray.search import record
from vibeserve_ray.search.state import RunRepo
from vibeserve_ray.target import Objective, load_target


def run_status(run_dir: Path) -> dict:
    run_dir = Path(run_dir)
    if not (run_dir / "repo").exists():
        raise BadInput(str(run_dir), "run", "not a search run directory (no repo/ inside)")
    repo = RunRepo(run_dir / "repo")
    rows = record.reconcile(run_dir, repo)
    meta = json.loads((run_dir / "search.json").read_text()) if (run_dir / "search.json").is_file() else {}
    objective = run_objective(run_dir, meta)
    best = record.best(rows, objective)
    ranked = sorted(rows, key=lambda r: (not r.validated, -objective.score(r.headline_value) if not math.isnan(r.headline_value) else math.inf))
    running = json.loads((run_dir / record.RUNNING_FILE).read_text()) if (run_dir / record.RUNNING_FILE).is_file() else []
    lineage = []
    if best is not None:
        by_commit = {r.commit: r for r in rows}
        for commit in repo.lineage(best.commit):
            r = by_commit.get(commit)
            lineage.append({"commit": commit, "headline": None if r is None else _num(r.headline_value),
                            "message": repo.subject(commit)})
    return {
        "run": str(run_dir),
        "target": meta.get("target"),
        "stopped_because": meta.get("stopped_because"),
        "evaluations": len(rows),
        "best": None if best is None else {"commit": best.commit, "headline": _num(best.headline_value), "metric": best.headline_name,
                                           "speedup": _num(best.speedup), "design": best.design, "knobs": best.knobs},
        "leaderboard": [{"rank": i + 1, "commit": r.commit, "island": r.island, "round": r.round, "headline": _num(r.headline_value),
                         "speedup": _num(r.speedup), "verdict": r.verdict, "why": (r.failure_phase + ": " + r.failure_reason[:80]) if r.failure_phase else "",
                         "design": r.design} for i, r in enumerate(ranked)],
        "running": [dict(t, running_s=round(time.time() - t["since"], 1)) for t in running],
        "lineage": lineage,
        "agents": _agents(meta, rows),
    }


def _agents(meta: dict, rows: list) -> dict | None:
    """The LLM agents' spend: by role (the gateway's ledger, the Orchestrator included) and by candidate."""
    if "agents" not in meta and not any(r.agent_calls for r in rows):
        return None
    ledger = meta.get("agents") or {}
    per_candidate = [{"commit": r.commit, "calls": r.agent_calls, "tokens": r.agent_input_tokens + r.agent_cache_write_tokens
                      + r.agent_cache_read_tokens + r.agent_output_tokens, "cost_usd": round(r.agent_cost_usd, 4), "seconds": round(r.agent_s, 1)}
                     for r in rows if r.agent_calls]
    return {"budget_usd": ledger.get("budget_usd"), "budget_spent": ledger.get("budget_spent"), "total": ledger.get("total"),
            "by_role": ledger.get("by_role", {}), "by_candidate": per_candidate}


def run_objective(run_dir: Path, meta: dict) -> Objective:
    """What "better" means for this run: recorded in search.json, else read from its target."""
    if meta.get("direction") and meta.get("headline"):
        return Objective(meta["headline"], meta["direction"])
    if not meta.get("target"):
        raise BadInput(str(run_dir / "search.json"), "target", "missing: cannot tell which direction is better")
    target = Path(meta["target"])
    return load_target(target if target.is_absolute() else Path.cwd() / target).spec.benchmark.objective


def _num(x: float) -> float | None:
    return None if x is None or math.isnan(x) else round(float(x), 4)


def format_status(st: dict) -> str:
    lines = [f"run {st['run']} (target {st['target']}): {st['evaluations']} evaluations"
             + (f", stopped: {st['stopped_because']}" if st.get("stopped_because") else "")]
    lines.append(f"{'rank':>4}  {'commit':12}  {'isl':>3}  {'rnd':>3}  {'headline':>10}  {'speedup':>7}  verdict")
    for e in st["leaderboard"]:
        h = "-" if e["headline"] is None else f"{e['headline']:.2f}"
        sp = "-" if e["speedup"] is None else f"{e['speedup']:.2f}x"
        lines.append(f"{e['rank']:>4}  {e['commit'][:12]}  {e['island']:>3}  {e['round']:>3}  {h:>10}  {sp:>7}  {e['verdict']}"
                     + (f"  ({e['why']})" if e["why"] else ""))
    if st["running"]:
        lines.append("running:")
        lines += [f"  {t['eval_id'][:8]} island {t['island']} round {t['round']}: {t['proposal']} ({t['running_s']:.0f}s)" for t in st["running"]]
    if st["best"]:
        b = st["best"]
        lines.append(f"best: {b['commit'][:12]} {b['metric']} = {b['headline']} ({b['speedup']}x the seed)")
        lines.append("lineage of the best (newest first):")
        lines += [f"  {x['commit'][:12]}  {x['message']}" for x in st["lineage"]]
    if st.get("agents"):
        a = st["agents"]
        total = a.get("total") or {}
        budget = f" of ${a['budget_usd']:g}" if a.get("budget_usd") else ""
        lines.append(f"agents: ${total.get('cost_usd', 0):.4f}{budget} in {total.get('calls', 0)} calls"
                     + (" (budget spent)" if a.get("budget_spent") else ""))
        lines.append(f"  {'role':12}  {'calls':>5}  {'input':>9}  {'cache rd':>9}  {'cache wr':>9}  {'output':>8}  {'cost $':>8}  {'api s':>7}")
        for role, u in a["by_role"].items():
            lines.append(f"  {role:12}  {u['calls']:>5}  {u['input_tokens']:>9}  {u['cache_read_tokens']:>9}  {u['cache_write_tokens']:>9}  "
                         f"{u['output_tokens']:>8}  {u['cost_usd']:>8.4f}  {u['seconds']:>7.1f}")
        for c in a["by_candidate"]:
            lines.append(f"  {c['commit'][:12]}: {c['calls']} calls, {c['tokens']} tokens, ${c['cost_usd']:.4f}, {c['seconds']:.0f}s in sessions")
    return "\n".join(lines)
