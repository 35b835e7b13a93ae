"""The candidate's entrypoint (`engine:create_engine`), per the candidate contract."""

from __future__ import annotations

from typing import Any

from .config import EngineConfig


def create_engine(model_dir: str, device: str = "cpu", knobs: dict[str, Any] | None = None):
    """The engine for the checkpoint in `model_dir` (its family by config.json's
    model_type), its step loop in a thread of this process or in engine worker
    processes (`design.step_loop`)."""
    # torch loads with the first engine, not with this package: the search and
    # `candidate new` import the package for its design space (space.py) alone.
    from .core.engine_process import ProcessEngine
    from .core.llm_engine import LLMEngine
    from .models import load_family

    family, _ = load_family(model_dir)
    if EngineConfig.resolve(knobs, family.space(), device).step_loop == "process":
        return ProcessEngine(model_dir, device, knobs)
    return LLMEngine(model_dir, device, knobs)
