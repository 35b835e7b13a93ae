"""Builds the model from an HF checkpoint directory without random initialisation."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open

from .config import ModelConfig
from .model import LlamaForCausalLM

# Older checkpoints store rotary buffers; we compute them from the config instead.
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


def checkpoint_files(model_dir: Path) -> list[Path]:
    """`model.safetensors`, or the shards listed by `model.safetensors.index.json`."""
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [model_dir / name for name in shards]
    single = model_dir / "model.safetensors"
    if single.is_file():
        return [single]
    raise FileNotFoundError(f"{model_dir}: no model.safetensors or model.safetensors.index.json")


def load_model(model_dir: str | Path, device: torch.device, dtype: torch.dtype) -> LlamaForCausalLM:
    """Every parameter comes from the checkpoint, so the model is built on the meta device
    (random init of a 1B model costs ~12 s on CPU) and only then given real storage."""
    model_dir = Path(model_dir)
    config = ModelConfig.from_dir(model_dir)
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    model.to(dtype).to_empty(device=device)
    model.model.rotary_emb.reset_parameters()
    if config.tie_word_embeddings:  # tie after to_empty, which would untie them
        model.lm_head.weight = model.model.embed_tokens.weight
    load_weights(model, model_dir)
    return model.eval()


def load_weights(model: LlamaForCausalLM, model_dir: Path) -> None:
    """Copies checkpoint tensors into parameters of the same HF name (casting dtype)."""
    params = dict(model.named_parameters())
    missing = set(params)
    for path in checkpoint_files(model_dir):
        with safe_open(str(path), framework="pt", device="cpu") as f:
            for name in f.keys():
                if name.endswith(IGNORED_SUFFIXES) or (name == "lm_head.weight" and model.config.tie_word_embeddings):
                    continue
                if name not in params:
                    raise ValueError(f"{path.name}: unexpected tensor {name!r} (unsupported model variant?)")
                tensor = f.get_tensor(name)
                if tensor.shape != params[name].shape:
                    raise ValueError(f"{path.name}: {name} has shape {tuple(tensor.shape)}, expected {tuple(params[name].shape)}")
                with torch.no_grad():
                    params[name].copy_(tensor)
                missing.discard(name)
    if missing:
        raise ValueError(f"{model_dir}: checkpoint lacks {sorted(missing)[:5]}")
