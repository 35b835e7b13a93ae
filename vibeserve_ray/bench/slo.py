"""Service-level objectives over BenchMetrics: which number a run is judged by, and which bounds it must hold.

An SLO key is a BenchMetrics field name. Keys ending in `_ms` are upper bounds (latency must
not exceed them); keys ending in `_throughput`, and `request_goodput`, are lower bounds
(throughput must reach them).
Latencies are measured over completed requests only, so a run with any failed request does not
pass, nor does one that completed nothing: otherwise a server could meet a latency SLO by
dropping its slow requests.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from vibeserve_ray.bench.metrics import METRIC_NAMES, BenchMetrics


@dataclass(frozen=True)
class SloViolation:
    """One bound a run missed; `kind` is "max" for an upper bound, "min" for a lower one."""

    name: str
    value: float
    bound: float
    kind: str

    def __str__(self) -> str:
        op = ">" if self.kind == "max" else "<"
        return f"{self.name} = {self.value:g} {op} {self.kind} {self.bound:g}"

    def to_dict(self) -> dict[str, float | str]:
        return {"name": self.name, "value": self.value, "bound": self.bound, "kind": self.kind, "message": str(self)}


def headline(metrics: BenchMetrics, name: str) -> float:
    """The value of the metric a run is ranked by, e.g. "output_throughput" or "p99_ttft_ms"."""
    if name not in METRIC_NAMES:
        raise ValueError(f"unknown headline metric {name!r}; expected one of {', '.join(METRIC_NAMES)}")
    return float(getattr(metrics, name))


def bound_kind(name: str) -> str:
    """ "max" for `*_ms` SLO keys, "min" for `*_throughput` keys; ValueError for anything else."""
    if name not in METRIC_NAMES:
        raise ValueError(f"unknown SLO metric {name!r}; expected one of {', '.join(METRIC_NAMES)}")
    if name.endswith("_ms"):
        return "max"
    if name.endswith("_throughput") or name == "request_goodput":
        return "min"
    raise ValueError(f"SLO metric {name!r} has no bound direction: use a *_ms or *_throughput metric")


def slo_verdict(metrics: BenchMetrics, slos: Mapping[str, float]) -> tuple[bool, list[SloViolation]]:
    """Check every bound in `slos` (and that no request failed); passed is True iff nothing is violated."""
    kinds = {name: bound_kind(name) for name in slos}  # reject bad keys before judging anything
    violations = []
    if metrics.completed == 0:
        violations.append(SloViolation("completed", 0.0, 1.0, "min"))
    if metrics.failed:
        violations.append(SloViolation("failed", float(metrics.failed), 0.0, "max"))
    for name, bound in slos.items():
        value = float(getattr(metrics, name))
        too_high = kinds[name] == "max" and value > bound
        too_low = kinds[name] == "min" and value < bound
        if too_high or too_low or math.isnan(value):
            violations.append(SloViolation(name, value, float(bound), kinds[name]))
    return not violations, violations
