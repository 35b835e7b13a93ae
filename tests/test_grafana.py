"""The Grafana dashboard (`cluster/grafana/vibeserve.json`) queries only metrics the code exports."""

from __future__ import annotations

import ast
import json
import re

from conftest import ROOT

DASHBOARD = ROOT / "cluster" / "grafana" / "vibeserve.json"
# Ray's Prometheus export prefixes every application metric with `ray_`; counters get
# `_total`, histograms `_bucket`, `_count` and `_sum`.
SUFFIXES = {"Counter": ("_total",), "Gauge": ("",), "Histogram": ("_bucket", "_count", "_sum")}


def exported_metrics() -> dict[str, str]:
    """Every `vibeserve_*` metric declared in the package (Counter/Gauge/Histogram calls), by kind."""
    found = {}
    for file in (ROOT / "vibeserve_ray").rglob("*.py"):
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
                kind = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
                name = node.args[0].value
                if kind in SUFFIXES and isinstance(name, str) and name.startswith("vibeserve_"):
                    found[name] = kind
    return found


def queried_series(dashboard: dict) -> set[str]:
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    return {m for e in exprs for m in re.findall(r"\b(ray_vibeserve_\w+)", e)}


def test_every_metric_the_dashboard_queries_is_one_the_code_exports():
    exported = exported_metrics()
    assert {"vibeserve_round", "vibeserve_best_headline", "vibeserve_serve_requests", "vibeserve_serve_ttft_ms"} <= set(exported)
    allowed = {f"ray_{name}{suffix}" for name, kind in exported.items() for suffix in SUFFIXES[kind]}
    queried = queried_series(json.loads(DASHBOARD.read_text()))
    assert queried, "the dashboard queries nothing"
    assert not queried - allowed, f"queried but never exported: {sorted(queried - allowed)}"
    covered = {q.removeprefix("ray_") for q in queried}
    for wanted in ("vibeserve_round", "vibeserve_best_headline", "vibeserve_candidates_stopped_total", "vibeserve_serve_requests_total",
                   "vibeserve_serve_ttft_ms_bucket", "vibeserve_serve_output_tokens_per_s_bucket"):
        assert wanted in covered, f"the dashboard does not show {wanted}"


def test_dashboard_imports_as_is_with_a_prometheus_datasource_chosen_on_import():
    d = json.loads(DASHBOARD.read_text())
    assert d["uid"] and d["title"] and isinstance(d["schemaVersion"], int)
    [var] = [v for v in d["templating"]["list"] if v["type"] == "datasource"]
    assert var["query"] == "prometheus"
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids))
    for p in d["panels"]:
        if p["type"] != "row":
            assert p["datasource"]["uid"] == "${" + var["name"] + "}" and p["targets"], p["title"]
            assert all(t["expr"].strip() and t["refId"] for t in p["targets"])
