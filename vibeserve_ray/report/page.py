"""`vibeserve report RUN`: one self-contained HTML page of a search run.

No script and no external file: styles inline, plots as inline SVG, so the page opens
from disk with no network, and can be made again at any time while the search runs.
"""

from __future__ import annotations

import datetime
import math
from pathlib import Path

import jinja2

from vibeserve_ray.report.data import RunView, read_run
from vibeserve_ray.report.plots import all_plots
from vibeserve_ray.search.results import Evaluation


def write_report(run_dir: Path, out: Path | None = None) -> Path:
    """Writes the report of `run_dir` (default `RUN/report.html`) and returns its path."""
    view = read_run(run_dir)
    out = Path(out) if out else Path(run_dir) / "report.html"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(render(view))
    tmp.replace(out)
    return out


def render(view: RunView) -> str:
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    env.filters.update(num=_num, ratio=_ratio, short=lambda c: c[:12], clock=_clock)
    best = view.best
    counts = {v: sum(r.verdict == v for r in view.rows) for v in ("validated", "rejected", "failed", "timeout")}
    seed = next((r.design for r in view.rows if r.implementer == "seed"), {})
    return env.from_string(TEMPLATE).render(
        v=view, best=best, counts=counts, plots=all_plots(view), leaderboard=[_entry(r, seed) for r in view.ranked()],
        failures=[r for r in view.rows if not r.validated], state="stopped: " + view.stopped_because if view.stopped_because else "running (or interrupted)",
    )


def _entry(r: Evaluation, seed: dict) -> dict:
    """A leaderboard row as the template shows it; the design as its changes to the seed's."""
    changed = {k: v for k, v in r.design.items() if seed.get(k) != v}
    return {"row": r, "design": " ".join(f"{k}={v}" for k, v in sorted(changed.items())) or "as the seed",
            "knobs": " ".join(f"{k}={v}" for k, v in sorted(r.knobs.items())),
            "why": f"{r.failure_phase}: {r.failure_reason[:160]}" if r.failure_phase else ""}


def _num(x: float | None, digits: int = 2) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:,.{digits}f}"


def _ratio(x: float | None) -> str:
    return "-" if x is None or math.isnan(x) else f"{x:.2f}x"


def _clock(t: float) -> str:
    return datetime.datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M:%S")


TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>vibeserve report: {{ v.target }}</title>
<style>
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 24px auto; max-width: 1100px; color: #222; padding: 0 16px; }
h1 { font-size: 22px; margin-bottom: 4px; } h2 { font-size: 17px; margin-top: 32px; border-bottom: 1px solid #ddd; padding-bottom: 4px; }
.meta { color: #555; } .summary { display: flex; gap: 24px; flex-wrap: wrap; margin: 12px 0; }
.summary div { background: #f4f6f8; padding: 8px 14px; border-radius: 6px; } .summary b { display: block; font-size: 18px; }
table { border-collapse: collapse; width: 100%; font-size: 13px; } th, td { text-align: left; padding: 4px 8px; border-bottom: 1px solid #eee; vertical-align: top; }
th { background: #fafafa; } td.n { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
code { font-size: 12px; } .validated { color: #2a7d2a; } .rejected { color: #c62828; } .failed, .timeout { color: #8a6d00; }
figure { margin: 12px 0; } figure svg { max-width: 100%; height: auto; } figcaption, .note { color: #666; font-size: 13px; }
.empty { color: #888; font-style: italic; } tr.best td { background: #eef7ee; }
</style></head><body>
<h1>vibeserve report: {{ v.target }}</h1>
<div class="meta">run <code>{{ v.run_dir }}</code> &middot; {{ state }} &middot; read {{ v.read_at|clock }}</div>
<div class="summary">
<div>evaluations<b>{{ v.rows|length }}</b></div>
{% for name, n in counts.items() %}<div class="{{ name }}">{{ name }}<b>{{ n }}</b></div>{% endfor %}
<div>running<b>{{ v.running|length }}</b></div>
{% if best %}<div>best {{ v.objective.metric }}<b>{{ best.headline_value|num }} ({{ best.speedup|ratio }} the seed)</b></div>{% endif %}
</div>
{% if v.running %}<h2 id="running">Running now</h2>
<table><tr><th>eval</th><th>island</th><th>round</th><th>proposal</th><th>since</th></tr>
{% for t in v.running %}<tr><td><code>{{ t.eval_id[:8] }}</code></td><td>{{ t.island }}</td><td>{{ t.round }}</td><td>{{ t.proposal }}</td><td>{{ t.since|clock }}</td></tr>{% endfor %}
</table>{% endif %}

<h2 id="leaderboard">Leaderboard</h2>
{% if leaderboard %}<table class="leaderboard"><tr><th>#</th><th>commit</th><th>island</th><th>round</th><th>{{ v.objective.metric }}</th><th>vs seed</th><th>verdict</th>{% if v.agents %}<th>agents (USD)</th>{% endif %}<th>design (changes to the seed's)</th><th>knobs</th><th>why not</th></tr>
{% for e in leaderboard %}{% set r = e.row %}<tr class="{{ 'best' if best and r.eval_id == best.eval_id else '' }}"><td class="n">{{ loop.index }}</td><td><code>{{ r.commit|short }}</code></td>
<td class="n">{{ r.island }}</td><td class="n">{{ r.round }}</td><td class="n">{{ r.headline_value|num }}</td><td class="n">{{ r.speedup|ratio }}</td>
<td class="{{ r.verdict }}">{{ r.verdict }}</td>{% if v.agents %}<td class="n">{{ r.agent_cost_usd|num(4) }}</td>{% endif %}<td><code>{{ e.design }}</code></td><td><code>{{ e.knobs }}</code></td><td>{{ e.why }}</td></tr>
{% endfor %}</table>{% else %}<p class="empty">no evaluations yet</p>{% endif %}

{% macro plot(p) %}<h2 id="{{ p.key }}">{{ p.title }}</h2>
{% if p.svg %}<figure class="plot" data-points="{{ p.points }}">{{ p.svg|safe }}{% if p.note %}<figcaption>{{ p.note }}</figcaption>{% endif %}</figure>
{% else %}<p class="empty">{{ p.note }}</p>{% endif %}{% endmacro %}
{{ plot(plots.headline) }}
{{ plot(plots.pareto) }}

<h2 id="lineage">Lineage of the best</h2>
{% if v.lineage %}<table class="lineage"><tr><th>step</th><th>commit</th><th>change</th><th>{{ v.objective.metric }}</th><th>over its parent</th><th>diff</th></tr>
{% for s in v.lineage %}<tr><td class="n">{{ loop.index0 }}</td><td><code>{{ s.commit|short }}</code></td><td>{{ s.change }}</td><td class="n">{{ s.headline|num }}</td>
<td class="n">{{ s.speedup_over_parent|ratio }}</td><td>{{ s.diffstat or '-' }}</td></tr>
{% endfor %}</table>{% else %}<p class="empty">no validated candidate yet</p>{% endif %}

{{ plot(plots.failures) }}
{% if failures %}<table class="failures"><tr><th>commit</th><th>verdict</th><th>gate</th><th>reason</th></tr>
{% for r in failures %}<tr><td><code>{{ r.commit|short }}</code></td><td class="{{ r.verdict }}">{{ r.verdict }}</td><td>{{ r.failure_phase }}</td><td>{{ r.failure_reason[:400] }}</td></tr>
{% endfor %}</table>{% endif %}

{{ plot(plots.knobs) }}
{% if v.knobs and v.knobs.importances %}<p class="note">fANOVA importance: {% for k, x in v.knobs.importances.items() %}{{ k }} {{ x|num }}{{ ", " if not loop.last }}{% endfor %}.
Open every study with <code>optuna-dashboard sqlite:///{{ v.run_dir }}/optuna.db</code>.</p>{% endif %}

{{ plot(plots.agents) }}
{% if v.agents %}<table class="agents"><tr><th>role</th><th>calls</th><th>input tokens</th><th>cache write</th><th>cache read</th><th>output tokens</th>
<th>cost (USD)</th><th>waiting on the API (s)</th></tr>
{% for role, u in v.agents.items() %}<tr><td>{{ role }}</td><td class="n">{{ u.calls }}</td><td class="n">{{ u.input_tokens }}</td><td class="n">{{ u.cache_write_tokens }}</td>
<td class="n">{{ u.cache_read_tokens }}</td><td class="n">{{ u.output_tokens }}</td><td class="n">{{ u.cost_usd|num(4) }}</td><td class="n">{{ u.seconds|num(1) }}</td></tr>
{% endfor %}</table>{% endif %}

{{ plot(plots.remeasure) }}
</body></html>
"""
