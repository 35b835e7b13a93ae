"""The model families this engine serves, chosen by the checkpoint's `model_type`.

A family is its config and model (`models/<family>.py`) and its design space
(`models/<family>.toml`); the scheduler, caches, layers, sampler, step loop and front
are shared. A new family is a module, a TOML file and a row of FAMILIES.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from torch import nn

from ..config import ModelConfig
from ..space import Space, read_space
from .llama import LlamaConfig, LlamaForCausalLM
from .olmo_hybrid import OlmoHybridConfig, OlmoHybridForCausalLM


@dataclass(frozen=True)
class Family:
    name: str  # of its module and its TOML
    config: Callable[[dict], ModelConfig]  # config.json -> the model's config; ValueError for what the code cannot run
    model: Callable[[Any], nn.Module]  # forward(input_ids, positions, batch) -> hidden; compute_logits(hidden)

    def space(self) -> Space:
        return read_space(self.name)


FAMILIES = {  # config.json's model_type -> its family
    "llama": Family("llama", LlamaConfig.from_dict, LlamaForCausalLM),
    "olmo_hybrid": Family("olmo_hybrid", OlmoHybridConfig.from_dict, OlmoHybridForCausalLM),
}


def load_family(model_dir: str | Path) -> tuple[Family, ModelConfig]:
    """The checkpoint's family and its model config."""
    raw = json.loads((Path(model_dir) / "config.json").read_text())
    model_type = raw.get("model_type", "llama")
    if model_type not in FAMILIES:
        raise ValueError(f"config.json: model_type={model_type!r} is not supported by this engine (families: {', '.join(FAMILIES)})")
    family = FAMILIES[model_type]
    return family, family.config(raw)
