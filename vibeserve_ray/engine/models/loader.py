"""Builds a family's model from an HF checkpoint directory without random initialisation."""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from ..layers.rotary import RotaryEmbedding
from . import load_family

# Older checkpoints store rotary buffers; we compute them from the config instead.
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)
# What torch's modules call to initialise their parameters (nn.Linear, nn.Embedding, norms).
INIT_FUNCTIONS = ("uniform_", "normal_", "trunc_normal_", "constant_", "ones_", "zeros_", "kaiming_uniform_", "kaiming_normal_",
                  "xavier_uniform_", "xavier_normal_")


@contextlib.contextmanager
def _no_init() -> Iterator[None]:
    """torch.nn.init's functions as no-ops while a model is built on the meta device: every
    value comes from the checkpoint, and a random init of a meta tensor goes through torch's
    reference ops, whose first call imports torch._dynamo (~1.1 s of each engine start)."""
    saved = {name: getattr(nn.init, name) for name in INIT_FUNCTIONS}
    try:
        for name in INIT_FUNCTIONS:
            setattr(nn.init, name, lambda tensor, *args, **kwargs: tensor)
        yield
    finally:
        for name, fn in saved.items():
            setattr(nn.init, name, fn)


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


def checkpoint_identity(model_dir: str | Path) -> str:
    """A digest of the weights' bytes: what outlives one forward pass and depends on the
    weights (a hybrid's prefix snapshots) is named with it, so weights swapped under the
    same path never meet a stale entry. ~0.2 s for 130 MB, once per load."""
    digest = hashlib.blake2b(digest_size=16)
    for path in checkpoint_files(Path(model_dir)):
        with open(path, "rb") as f:
            while block := f.read(1 << 22):
                digest.update(block)
    return digest.hexdigest()


def load_model(model_dir: str | Path, device: torch.device, dtype: torch.dtype) -> nn.Module:
    """Every parameter comes from the checkpoint, so the model (of the checkpoint's
    family) is built on the meta device (random init of a 1B model costs ~12 s on CPU)
    and only then given real storage."""
    model_dir = Path(model_dir)
    family, config = load_family(model_dir)
    with torch.device("meta"), _no_init():
        model = family.model(config)
    model.to(dtype).to_empty(device=device)
    for module in model.modules():  # buffers the checkpoint does not hold, computed from the config
        if isinstance(module, RotaryEmbedding):
            module.reset_parameters()
    if config.tie_word_embeddings:  # tie after to_empty, which would untie them
        model.lm_head.weight = model.model.embed_tokens.weight
    load_weights(model, model_dir)
    return model.eval()


def load_weights(model: nn.Module, model_dir: Path) -> None:
    """Copies checkpoint tensors into parameters of the same HF name (casting dtype), or
    into their row block of a packed parameter (which may also come whole). A family
    whose released checkpoints name tensors otherwise than transformers' modules lists
    the renames as `checkpoint_renames` on its model class (Olmo-Hybrid's norms)."""
    targets, packed = _targets(model)
    whole_of = {shard: name for name, shards in packed.items() for shard in shards}
    renames = getattr(model, "checkpoint_renames", ())
    loaded, odd = set(), {}
    for path in checkpoint_files(model_dir):
        with safe_open(str(path), framework="pt", device="cpu") as f:
            for stored in f.keys():
                name = stored
                for old, new in renames:
                    name = name.replace(old, new)
                if name.endswith(IGNORED_SUFFIXES) or (name == "lm_head.weight" and model.config.tie_word_embeddings):
                    continue
                if name not in targets:
                    raise ValueError(f"{path.name}: unexpected tensor {stored!r} (unsupported model variant?)")
                tensor, dest = f.get_tensor(stored), targets[name]
                if tensor.shape != dest.shape and name in whole_of:
                    # row blocks cut elsewhere (transformers saves Olmo-Hybrid's q|k|v convolutions in
                    # equal thirds): joined in order once all are read
                    odd[name] = tensor
                    continue
                if tensor.shape != dest.shape:
                    raise ValueError(f"{path.name}: {stored} has shape {tuple(tensor.shape)}, expected {tuple(dest.shape)}")
                with torch.no_grad():
                    dest.copy_(tensor)
                loaded.add(name)
    for name in {whole_of[shard] for shard in odd}:
        joined, dest = torch.cat([odd.get(shard, targets[shard]) for shard in packed[name]]), targets[name]
        if joined.shape != dest.shape:
            raise ValueError(f"{model_dir}: the blocks of {name} join to shape {tuple(joined.shape)}, expected {tuple(dest.shape)}")
        with torch.no_grad():
            dest.copy_(joined)
        loaded.update(packed[name])
    missing = [name for name, shards in packed.items() if name not in loaded and not (shards and set(shards) <= loaded)]
    if missing:
        raise ValueError(f"{model_dir}: checkpoint lacks {sorted(missing)[:5]}")


def _targets(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, list[str]]]:
    """Checkpoint tensor name -> the tensor (a parameter, or a row block of a packed one:
    a module with `shards`, such as layers.linear.PackedLinear) it fills; and each
    parameter's name -> the names of its row blocks ([] when it is not packed)."""
    targets: dict[str, torch.Tensor] = {}
    packed: dict[str, list[str]] = {}
    for name, param in model.named_parameters():
        module_name, _, leaf = name.rpartition(".")
        module = model.get_submodule(module_name)
        targets[name], packed[name] = param, []
        if (shards := getattr(module, "shards", None)) is None:
            continue
        prefix = module_name.rpartition(".")[0]
        for proj, rows in zip(shards, param.detach().split(list(shards.values())), strict=True):
            targets[f"{prefix}.{proj}.{leaf}"] = rows
            packed[name].append(f"{prefix}.{proj}.{leaf}")
    return targets, packed
