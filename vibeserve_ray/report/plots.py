"""The report's plots, drawn with matplotlib (Agg) and kept as inline SVG.

Inline SVG needs no network and no script to open; each figure gets its own id salt so
several share one page, and every group of data marks carries an id starting `data-`
(what a reader's tools, and the tests, count as the plot's data points).
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

from matplotlib import rc_context
from matplotlib.figure import Figure

from vibeserve_ray.report.data import LATENCY, THROUGHPUT, RunView

COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")
FAILURE_COLORS = {"rejected": "#d62728", "failed": "#7f7f7f", "timeout": "#ff7f0e"}


@dataclass(frozen=True)
class Plot:
    key: str
    title: str
    svg: str  # "" when there is nothing to draw
    points: int  # data values drawn
    note: str = ""  # why it is empty, or what to read from it


def headline_over_time(view: RunView) -> Plot:
    """Each validated evaluation's headline when it finished, by island, and the best so far."""
    title = f"Headline over wall time: {view.objective.metric}"
    valid = [r for r in view.rows if r.validated and not math.isnan(r.headline_value)]
    if not valid:
        return Plot("headline", title, "", 0, "no validated evaluation yet")
    t0 = view.started_at
    fig, ax = _figure()
    for island in sorted({r.island for r in valid}):
        mine = [r for r in valid if r.island == island]
        ax.scatter([(r.finished_at - t0) / 60 for r in mine], [r.headline_value for r in mine], s=28, color=COLORS[island % len(COLORS)],
                   label=f"island {island}", gid=f"data-island-{island}", zorder=3)
    best, xs, ys = math.nan, [], []
    for r in sorted(valid, key=lambda r: r.finished_at):
        if math.isnan(best) or view.objective.score(r.headline_value) > view.objective.score(best):
            best = r.headline_value
        xs.append((r.finished_at - t0) / 60)
        ys.append(best)
    now = max(xs[-1], ((view.read_at if view.stopped_because is None else max(r.finished_at for r in view.rows)) - t0) / 60)
    ax.step(xs + [now], ys + [ys[-1]], where="post", color="black", linewidth=1.5, label="best so far", gid="data-best-so-far")
    ax.set_xlabel("minutes since the search started")
    ax.set_ylabel(f"{view.objective.metric} ({view.objective.better_is} is better)")
    ax.legend(loc="best", fontsize=8)
    return Plot("headline", title, _svg(fig, "headline"), len(valid))


def throughput_vs_latency(view: RunView) -> Plot:
    """Every validated candidate's throughput and p99 end-to-end latency; the Pareto front
    joins those no other candidate beats on both."""
    title = "Throughput vs p99 latency"
    pts = []
    for r in view.rows:
        m = r.metrics if r.validated else {}
        if isinstance(m.get(THROUGHPUT), (int, float)) and isinstance(m.get(LATENCY), (int, float)):
            pts.append((m[LATENCY], m[THROUGHPUT], r))
    if not pts:
        return Plot("pareto", title, "", 0, f"no validated evaluation with {THROUGHPUT} and {LATENCY} yet")
    front = sorted({(lat, tput) for lat, tput, _ in pts if not any(
        (l2 <= lat and t2 >= tput) and (l2 < lat or t2 > tput) for l2, t2, _ in pts)})
    fig, ax = _figure()
    ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=28, color=COLORS[0], alpha=0.75, label="validated candidates", gid="data-candidates", zorder=3)
    ax.plot([f[0] for f in front], [f[1] for f in front], color=COLORS[3], marker="o", markerfacecolor="none", markersize=9, linewidth=1.2,
            label="Pareto front", gid="data-pareto-front", zorder=4)
    best = view.best
    for lat, tput, r in pts:
        if best is not None and r.eval_id == best.eval_id:
            ax.annotate(f"best {r.commit[:8]}", (lat, tput), textcoords="offset points", xytext=(6, 6), fontsize=8)
    ax.set_xlabel(f"{LATENCY} (lower is better)")
    ax.set_ylabel(f"{THROUGHPUT}, tokens/s (higher is better)")
    ax.legend(loc="best", fontsize=8)
    return Plot("pareto", title, _svg(fig, "pareto"), len(pts), f"{len(front)} of {len(pts)} candidates on the front")


def failures_by_gate(view: RunView) -> Plot:
    """How many candidates each gate (the phase that failed) stopped, by verdict."""
    title = "Rejections and failures by gate"
    counts: dict[tuple[str, str], int] = {}
    for r in view.rows:
        if not r.validated:
            key = (r.failure_phase or "unknown", r.verdict)
            counts[key] = counts.get(key, 0) + 1
    if not counts:
        return Plot("failures", title, "", 0, "no rejections or failures")
    keys = sorted(counts, key=lambda k: (-counts[k], k))
    fig, ax = _figure(height=0.6 + 0.45 * len(keys))
    bars = ax.barh([f"{phase} ({verdict})" for phase, verdict in keys], [counts[k] for k in keys],
                   color=[FAILURE_COLORS.get(v, "#7f7f7f") for _, v in keys])
    for i, bar in enumerate(bars):
        bar.set_gid(f"data-gate-{i}")
    ax.invert_yaxis()
    ax.set_xlabel("candidates")
    ax.xaxis.get_major_locator().set_params(integer=True)
    return Plot("failures", title, _svg(fig, "failures"), len(keys))


def knob_effects(view: RunView) -> Plot:
    """Each knob's value against the trial's headline, over every Optuna trial of the best design."""
    title = "Knob effects for the best design (Optuna trials)"
    ks = view.knobs
    trials = [t for t in ks.trials if not math.isnan(t.value)] if ks else []
    if not trials:
        return Plot("knobs", title, "", 0, "no Optuna trials of the best design yet")
    knobs = sorted({k for t in trials for k in t.params}, key=lambda k: (-ks.importances.get(k, 0.0), k))
    if not knobs:
        return Plot("knobs", title, "", 0, "the best design has no tuned knobs")
    cols = min(3, len(knobs))
    rows = math.ceil(len(knobs) / cols)
    fig = Figure(figsize=(3.2 * cols, 2.6 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for i, (ax, knob) in enumerate(zip(axes, knobs)):
        pts = [(t.params[knob], t.value) for t in trials if knob in t.params]
        xs = [p[0] for p in pts]
        if not all(isinstance(x, (int, float)) for x in xs):  # categorical: one column per option
            options = sorted({str(x) for x in xs})
            ax.set_xticks(range(len(options)), options, fontsize=8)
            xs = [options.index(str(x)) for x in xs]
        ax.scatter(xs, [p[1] for p in pts], s=22, color=COLORS[i % len(COLORS)], gid=f"data-knob-{knob}", zorder=3)
        imp = ks.importances.get(knob)
        ax.set_title(knob + ("" if imp is None else f" (importance {imp:.2f})"), fontsize=9)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
    for ax in axes[len(knobs):]:
        ax.set_visible(False)
    fig.supylabel(view.objective.metric, fontsize=9)
    note = f"{len(trials)} trials from {len(ks.studies)} stud{'y' if len(ks.studies) == 1 else 'ies'}"
    return Plot("knobs", title, _svg(fig, "knobs"), len(trials) * len(knobs), note)


def agent_usage(view: RunView) -> Plot:
    """Tokens each agent role spent, by kind (billed input is uncached + cache write + cache read)."""
    title = "Agent usage by role"
    if not view.agents:
        return Plot("agents", title, "", 0, "no agent calls")
    roles = list(view.agents)
    fig, ax = _figure(height=1.0 + 0.5 * len(roles))
    left = [0] * len(roles)
    for i, (kind, color) in enumerate((("input_tokens", COLORS[0]), ("cache_write_tokens", COLORS[4]), ("cache_read_tokens", COLORS[9]),
                                       ("output_tokens", COLORS[1]))):
        values = [getattr(view.agents[r], kind) for r in roles]
        bars = ax.barh(roles, values, left=left, color=color, label=kind.removesuffix("_tokens").replace("_", " "))
        for j, bar in enumerate(bars):
            bar.set_gid(f"data-agent-{i}-{j}")
        left = [a + b for a, b in zip(left, values)]
    for j, role in enumerate(roles):
        ax.annotate(f" ${view.agents[role].cost_usd:.4f}", (left[j], j), va="center", fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("tokens")
    ax.legend(loc="lower right", fontsize=8)
    total = sum(u.cost_usd for u in view.agents.values())
    budget = f" of a ${view.budget_usd:g} budget" if view.budget_usd else ""
    return Plot("agents", title, _svg(fig, "agents"), len(roles), f"${total:.4f}{budget} in {sum(u.calls for u in view.agents.values())} calls")


def remeasure(view: RunView) -> Plot:
    """The seed and the winner as the search measured them, and re-measured side by side."""
    title = "Seed vs winner, re-measured side by side"
    rm = view.remeasure
    if rm is None:
        return Plot("remeasure", title, "", 0, "not re-measured yet (the search does it when it ends)")
    by_commit = {r.commit: r.headline_value for r in view.rows}
    labels, values, colors = [], [], []
    for name, commit, again in (("seed", rm.seed_commit, rm.seed_headline), ("winner", rm.best_commit, rm.best_headline)):
        for when, value, color in (("in the search", by_commit.get(commit, math.nan), "#9ecae1"), ("re-measured", again, "#3182bd")):
            if not math.isnan(value):
                labels.append(f"{name}\n{when}")
                values.append(value)
                colors.append(color)
    if not values:
        return Plot("remeasure", title, "", 0, "; ".join(rm.failures) or "no values")
    fig, ax = _figure(width=5.5)
    bars = ax.bar(labels, values, color=colors)
    for i, bar in enumerate(bars):
        bar.set_gid(f"data-remeasure-{i}")
    ax.bar_label(bars, fmt="%.1f", fontsize=8)
    ax.set_ylabel(view.objective.metric)
    ax.tick_params(axis="x", labelsize=8)
    note = f"{rm.speedup:.2f}x the seed when re-measured" if not math.isnan(rm.speedup) else "; ".join(rm.failures)
    return Plot("remeasure", title, _svg(fig, "remeasure"), len(values), note)


def all_plots(view: RunView) -> dict[str, Plot]:
    return {p.key: p for p in (headline_over_time(view), throughput_vs_latency(view), failures_by_gate(view), knob_effects(view),
                               agent_usage(view), remeasure(view))}


def _figure(width: float = 7.0, height: float = 3.6):
    fig = Figure(figsize=(width, height), layout="constrained")
    ax = fig.add_subplot()
    ax.grid(alpha=0.3)
    return fig, ax


def _svg(fig: Figure, salt: str) -> str:
    """The figure as an `<svg>` element: text kept as text, ids unique to this figure."""
    buf = io.StringIO()
    with rc_context({"svg.fonttype": "none", "svg.hashsalt": salt}):
        fig.savefig(buf, format="svg", metadata={"Date": None})
    text = buf.getvalue()
    return text[text.index("<svg"):]
