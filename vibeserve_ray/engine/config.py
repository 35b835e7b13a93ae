"""What the engine was asked to be (`EngineConfig`), and what the shared engine reads of
any family's model config (`ModelConfig`)."""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from .space import Space, design_problems

CANDIDATE_TOML = Path(__file__).resolve().parent.parent / "candidate.toml"  # the candidate's own, beside this package


class ModelConfig(Protocol):
    """The fields of a family's config (`models/<family>.py`) that the scheduler, caches
    and front read; the rest is the family's own."""

    vocab_size: int
    max_position_embeddings: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    tie_word_embeddings: bool
    eos_token_ids: tuple[int, ...]

    @property
    def num_attention_layers(self) -> int:
        """Layers that keep keys and values (the KV cache's layer axis)."""

    @property
    def linear_layers(self) -> tuple[int, ...]:
        """Layers that keep a fixed-size recurrent state instead (a hybrid's; core/state_cache.py)."""


# An EngineConfig field's type -> how a design option or knob value becomes it.
_AS = {"str": str, "int": int, "float": float, "bool": lambda option: option == "on"}


@dataclass(frozen=True, kw_only=True)
class EngineConfig:
    """The candidate's `[design]` and `[knobs]` over its family's space (`space.py`).

    The design is read from the `candidate.toml` beside this package (the candidate's own
    directory), so one template serves every point of the space; code that builds an
    engine directly may pass `knobs["design"]` instead. One field per choice and knob of
    the spaces, so every option a space lists is one the code reads; the options, the
    defaults and the rules between choices are the spaces', not written here. A choice
    or knob one family's space leaves out (speculation for a hybrid, whose recurrent
    state cannot roll back) has a value here: what that family runs, the plain option.
    """

    # design choices (an on/off choice is a bool)
    scheduler: str
    kv_cache: str
    prefix_cache: bool
    linear: str
    step_loop: str
    attention: str = "sdpa"
    compile: str = "off"  # or "on" (each layer's MLP), "graph" (the whole forward: core/graph.py)
    dtype: str = "float32"
    speculation: str = "off"  # or where drafts come from: "prompt_lookup", "jump_forward"
    delta_rule: str = "chunked"  # a hybrid's prompt form: "chunked" (the UT transform), "recurrent" (token by token)
    state_update: str = "gather"  # a hybrid's decode state: "gather" (and scatter back) or "inplace" (a view of the slots)
    # knobs
    num_threads: int
    max_num_seqs: int
    max_num_batched_tokens: int
    max_model_len: int
    block_size: int
    engine_workers: int
    batch_wait_ms: float = 5.0
    num_kv_blocks: int = 1024
    spec_k: int = 4
    spec_ngram: int = 2
    snapshot_blocks: int = 64  # a hybrid's prefix snapshots kept (each a block of KV and the state at its end)

    @classmethod
    def resolve(cls, knobs: dict[str, Any] | None, space: Space, device: str) -> EngineConfig:
        """ValueError naming the choice for a design the space rules out on `device`."""
        knobs = dict(knobs or {})
        asked = {**_candidate_design(), **knobs.pop("design", {})}
        design = {name: asked.get(name, choice.default) for name, choice in space.choices.items()}  # names the space lacks are not this engine's
        if problems := design_problems(space.choices, design, device):
            raise ValueError(problems[0])
        values = {**design, **{name: knobs.get(name, default) for name, default in space.knob_defaults.items()}}
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unread = set(values) - set(fields)
        unset = {name for name, f in fields.items() if name not in values and f.default is dataclasses.MISSING}
        if unread or unset:
            raise ValueError(f"the {space.family} design space and EngineConfig disagree on {sorted(unread | unset)}")
        config = cls(**{name: _AS[fields[name].type](value) for name, value in values.items()})
        config.check()
        return config

    def check(self) -> None:
        """Knob values the code cannot run (the space's ranges are the search's, not limits)."""
        if self.max_num_seqs < 1 or self.max_num_batched_tokens < 1 or self.block_size < 1 or self.num_kv_blocks < 1 or self.spec_k < 1 or self.spec_ngram < 1:
            raise ValueError("knobs max_num_seqs, max_num_batched_tokens, block_size, num_kv_blocks, spec_k and spec_ngram must be positive")
        if self.engine_workers < 1 or self.snapshot_blocks < 1:
            raise ValueError("knobs engine_workers and snapshot_blocks must be positive")


def _candidate_design() -> dict[str, str]:
    if not CANDIDATE_TOML.is_file():
        return {}
    return dict(tomllib.loads(CANDIDATE_TOML.read_text()).get("design", {}))
