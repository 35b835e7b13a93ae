"""Hints: what a measurement suggests trying next, for the outer loop to plan from.

The Performance Evaluator leaves them on each validated candidate; the offline
proposer weighs a design change by the hints that suggest it, and the backlog policy
turns them into tasks. Stored as JSON (`asdict`) in the results table and git notes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # islands and the proposer read hints; they need not import the load generator
    from vibeserve_ray.bench import Request
    from vibeserve_ray.target import Target


@dataclass(frozen=True)
class Hint:
    text: str  # what was measured, in words
    suggest: dict[str, str] = field(default_factory=dict)  # the design change it points at ({} when none)
    weight: float = 1.0  # how strongly the evidence points there

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Hint":
        return cls(str(data["text"]), {str(k): str(v) for k, v in (data.get("suggest") or {}).items()}, float(data.get("weight", 1.0)))


def hints_for(target: Target, design: dict[str, str], metrics: Mapping[str, float], requests: Sequence[Request]) -> list[Hint]:
    """Rules from what the benchmark measured on this design to the change it points at."""
    b = target.spec.benchmark
    hints = []
    if design.get("scheduler") == "serial" and b.concurrency > 1:
        wait = metrics.get("mean_ttft_ms", 0) / max(metrics.get("mean_e2el_ms", 1), 1e-9)
        hints.append(Hint(f"requests queue behind each other (TTFT is {wait:.0%} of e2e latency at concurrency {b.concurrency}): batch them",
                          {"scheduler": "continuous"}, 3.0))
    if design.get("kv_cache") == "dynamic":
        hints.append(Hint("the KV cache grows by concatenation every step: preallocate it", {"kv_cache": "slab"}, 1.0))
    synthetic = b.synthetic
    if synthetic is not None and synthetic.shared_prefix_len > 0 and design.get("prefix_cache") != "on":
        hints.append(Hint(f"every prompt shares a {synthetic.shared_prefix_len}-token prefix that is prefilled again each time",
                          {"kv_cache": "paged", "prefix_cache": "on"}, 3.0))
    if design.get("speculation") == "off" and any(r.prediction for r in requests[:8]):
        hints.append(Hint("requests carry a predicted output: verify it instead of decoding token by token", {"speculation": "prompt_lookup"}, 3.0))
    if design.get("speculation") != "jump_forward" and any(r.response_format for r in requests[:8]):
        hints.append(Hint("requests ask for JSON: draft the tokens the grammar forces and verify them in one pass", {"speculation": "jump_forward"}, 3.0))
    if metrics.get("mean_tpot_ms", 0) > 0 and design.get("compile") == "off":
        hints.append(Hint(f"decode step costs {metrics['mean_tpot_ms']:.1f} ms/token; fewer, fused ops may help", {"compile": "on"}, 0.5))
    return hints
