"""The Llama family: its config, read from an HF `config.json`, and the decoder in plain
PyTorch with HF parameter names, so checkpoints load as-is. Its design space is
`llama.toml` beside this file.

Activations are [tokens, hidden] for all the step's tokens, whichever sequences they
belong to (core/batch.py's ForwardBatch); attention is the one place that tells them
apart.

q/k/v and gate/up each run as one matmul over weights packed at load time
(`qkv_proj`, `gate_up_proj`, each a layers.linear.PackedLinear naming the checkpoint's
projections it holds): a small-batch decode step on CPU pays per op, not per FLOP.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..layers.layernorm import RMSNorm
from ..layers.linear import PackedLinear
from ..layers.mlp import GatedMLP
from ..layers.rotary import Llama3RopeScaling, RotaryEmbedding, apply_rotary

if TYPE_CHECKING:
    from ..core.batch import ForwardBatch


@dataclass(frozen=True)
class LlamaConfig:
    """The model's shape and math, read once from an HF `config.json`."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    rope_scaling: Llama3RopeScaling | None
    max_position_embeddings: int
    tie_word_embeddings: bool
    eos_token_ids: tuple[int, ...]

    @property
    def num_attention_layers(self) -> int:
        return self.num_hidden_layers  # every layer keeps keys and values

    @property
    def linear_layers(self) -> tuple[int, ...]:
        return ()  # no layer keeps a recurrent state

    @classmethod
    def from_dir(cls, model_dir: str | Path) -> LlamaConfig:
        return cls.from_dict(json.loads((Path(model_dir) / "config.json").read_text()))

    @classmethod
    def from_dict(cls, raw: dict) -> LlamaConfig:
        """Raises ValueError for anything that would change the math we implement."""
        _check_supported(raw)
        heads = raw["num_attention_heads"]
        eos = raw.get("eos_token_id")
        return cls(
            vocab_size=raw["vocab_size"],
            hidden_size=raw["hidden_size"],
            intermediate_size=raw["intermediate_size"],
            num_hidden_layers=raw["num_hidden_layers"],
            num_attention_heads=heads,
            num_key_value_heads=raw.get("num_key_value_heads") or heads,
            head_dim=raw.get("head_dim") or raw["hidden_size"] // heads,
            rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
            rope_theta=float(_rope(raw).get("rope_theta", raw.get("rope_theta", 10000.0))),
            rope_scaling=_rope_scaling(raw),
            max_position_embeddings=raw.get("max_position_embeddings", 2048),
            tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
            eos_token_ids=tuple(eos if isinstance(eos, list) else [] if eos is None else [eos]),
        )


def _rope(raw: dict) -> dict:
    # transformers >= 5 writes `rope_parameters` (holding rope_theta too); older
    # checkpoints have top-level `rope_theta` plus an optional `rope_scaling`.
    return raw.get("rope_parameters") or raw.get("rope_scaling") or {}


def _rope_scaling(raw: dict) -> Llama3RopeScaling | None:
    rope = _rope(raw)
    if rope.get("rope_type", rope.get("type", "default")) == "default":
        return None
    return Llama3RopeScaling(
        factor=float(rope["factor"]),
        low_freq_factor=float(rope["low_freq_factor"]),
        high_freq_factor=float(rope["high_freq_factor"]),
        original_max_position_embeddings=int(
            raw.get("original_max_position_embeddings")
            or rope.get("original_max_position_embeddings")
            or raw.get("max_position_embeddings", 2048)
        ),
    )


def _check_supported(raw: dict) -> None:
    def unsupported(field: str, value: object) -> ValueError:
        return ValueError(f"config.json: {field}={value!r} is not supported by this engine (Llama decoder only)")

    for field in ("attention_bias", "mlp_bias"):
        if raw.get(field):
            raise unsupported(field, raw[field])
    if raw.get("hidden_act", "silu") != "silu":
        raise unsupported("hidden_act", raw["hidden_act"])
    rope = _rope(raw)
    if rope and all(isinstance(v, dict) for v in rope.values()):
        raise unsupported("rope_parameters", "per-layer-type")
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in ("default", "llama3"):
        raise unsupported("rope_type", rope_type)
    partial = rope.get("partial_rotary_factor", raw.get("partial_rotary_factor", 1.0))
    if partial != 1.0:
        raise unsupported("partial_rotary_factor", partial)


class LlamaAttention(nn.Module):
    def __init__(self, config: LlamaConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        hidden, q_size, kv_size = config.hidden_size, self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        self.qkv_proj = PackedLinear(hidden, {"q_proj": q_size, "k_proj": kv_size, "v_proj": kv_size})
        self.o_proj = nn.Linear(q_size, hidden, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, batch: ForwardBatch) -> torch.Tensor:
        n, heads, kv_heads = x.shape[0], self.num_heads, self.num_kv_heads
        qkv = self.qkv_proj(x).view(n, heads + 2 * kv_heads, self.head_dim)
        qk = apply_rotary(qkv[:, :heads + kv_heads], cos[:, None], sin[:, None])  # q and k heads rotate alike: one pass
        q, k, v = qk[:, :heads], qk[:, heads:], qkv[:, heads + kv_heads:]
        return self.o_proj(batch.attend(self.layer_idx, q, k, v).reshape(n, -1))


class LlamaDecoderLayer(nn.Module):
    def __init__(self, config: LlamaConfig, layer_idx: int):
        super().__init__()
        self.self_attn = LlamaAttention(config, layer_idx)
        self.mlp = GatedMLP(config.hidden_size, config.intermediate_size)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, batch: ForwardBatch) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, batch)
        return x + self.mlp(self.post_attention_layernorm(x))


class LlamaModel(nn.Module):
    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(LlamaDecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary_emb = RotaryEmbedding(config.head_dim, config.rope_theta, config.rope_scaling)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, batch: ForwardBatch) -> torch.Tensor:
        x = self.embed_tokens(input_ids)
        cos, sin = self.rotary_emb(positions, x.dtype)
        for layer in self.layers:
            x = layer(x, cos, sin, batch)
        return self.norm(x)


class LlamaForCausalLM(nn.Module):
    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.config = config
        self.model = LlamaModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, batch: ForwardBatch) -> torch.Tensor:
        """Hidden states [len(input_ids), hidden]; the tokens' keys and values go to the cache."""
        return self.model(input_ids, positions, batch)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden)
