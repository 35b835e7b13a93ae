"""The Olmo-Hybrid family (transformers' OlmoHybridForCausalLM): its config, read from an
HF `config.json`, and the decoder in plain PyTorch with HF parameter names, so
checkpoints load as-is. Its design space is `olmo_hybrid.toml` beside this file.

Two layer kinds, interleaved (3 linear : 1 full in the released 7B):
- linear attention (Gated DeltaNet), pre-norm like Llama: x + mix(norm(x)), then
  x + mlp(norm(x)); each request carries a fixed-size state (a short convolution's last
  inputs and a recurrent matrix per head) instead of keys and values;
- full attention, post-norm like Olmo 3: x + norm(attn(x)), then x + norm(mlp(x)); q and
  k are RMS-normalised over all heads at once; no positional encoding when rope_theta
  is None (the released checkpoint).

Activations are [tokens, hidden] for all the step's tokens, whichever sequences they
belong to; the token mixers are the only places that tell them apart:
`ForwardBatch.attend` (keys and values, core/batch.py) and `ForwardBatch.recur` (the
linear layers' state, core/state_cache.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from ..layers.gated_delta import DeltaHeads, gated_rms_norm
from ..layers.layernorm import OlmoRMSNorm
from ..layers.linear import PackedLinear
from ..layers.mlp import GatedMLP
from ..layers.rotary import RotaryEmbedding, apply_rotary

if TYPE_CHECKING:
    from ..core.batch import ForwardBatch

LINEAR, FULL = "linear_attention", "full_attention"


@dataclass(frozen=True)
class OlmoHybridConfig:
    """The model's shape and math, read once from an HF `config.json`."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    layer_types: tuple[str, ...]  # LINEAR (Gated DeltaNet) or FULL (softmax attention), per layer
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    linear_num_key_heads: int
    linear_num_value_heads: int
    linear_key_head_dim: int
    linear_value_head_dim: int
    linear_conv_kernel_dim: int
    linear_allow_neg_eigval: bool
    rms_norm_eps: float
    rope_theta: float | None  # None: no positional encoding in the attention layers
    max_position_embeddings: int
    tie_word_embeddings: bool
    eos_token_ids: tuple[int, ...]

    @property
    def linear_layers(self) -> tuple[int, ...]:
        return tuple(i for i, t in enumerate(self.layer_types) if t == LINEAR)

    @property
    def num_attention_layers(self) -> int:
        return sum(t == FULL for t in self.layer_types)  # only these keep keys and values

    @property
    def conv_dim(self) -> int:
        return 2 * self.linear_num_key_heads * self.linear_key_head_dim + self.linear_num_value_heads * self.linear_value_head_dim

    @property
    def delta_heads(self) -> DeltaHeads:
        return DeltaHeads(self.linear_num_key_heads, self.linear_key_head_dim, self.linear_num_value_heads, self.linear_value_head_dim)

    @classmethod
    def from_dict(cls, raw: dict) -> OlmoHybridConfig:
        """Defaults as transformers' OlmoHybridConfig derives them; ValueError for what
        would change the math implemented here."""
        _check_supported(raw)
        hidden, heads, layers = raw["hidden_size"], raw["num_attention_heads"], raw["num_hidden_layers"]
        lin_k_heads = raw.get("linear_num_key_heads") or heads
        lin_k_dim = raw.get("linear_key_head_dim") or int(0.75 * hidden / lin_k_heads)
        rope = raw.get("rope_parameters") or {}
        eos = raw.get("eos_token_id")
        return cls(
            vocab_size=raw["vocab_size"],
            hidden_size=hidden,
            intermediate_size=raw["intermediate_size"],
            num_hidden_layers=layers,
            layer_types=tuple(raw.get("layer_types") or [FULL if i % 4 == 3 else LINEAR for i in range(layers)]),
            num_attention_heads=heads,
            num_key_value_heads=raw.get("num_key_value_heads") or heads,
            head_dim=hidden // heads,  # Olmo-Hybrid has no head_dim field (transformers and vLLM divide)
            linear_num_key_heads=lin_k_heads,
            linear_num_value_heads=raw.get("linear_num_value_heads") or heads,
            linear_key_head_dim=lin_k_dim,
            linear_value_head_dim=raw.get("linear_value_head_dim") or 2 * lin_k_dim,
            linear_conv_kernel_dim=raw.get("linear_conv_kernel_dim", 4),
            linear_allow_neg_eigval=bool(raw.get("linear_allow_neg_eigval", True)),
            rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
            rope_theta=None if rope.get("rope_theta") is None else float(rope["rope_theta"]),
            max_position_embeddings=raw.get("max_position_embeddings", 65536),
            tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
            eos_token_ids=tuple(eos if isinstance(eos, list) else [] if eos is None else [eos]),
        )


def _check_supported(raw: dict) -> None:
    def unsupported(field: str, value: object) -> ValueError:
        return ValueError(f"config.json: {field}={value!r} is not supported by this engine (Olmo-Hybrid family)")

    if raw.get("attention_bias"):
        raise unsupported("attention_bias", raw["attention_bias"])
    if raw.get("hidden_act", "silu") != "silu":
        raise unsupported("hidden_act", raw["hidden_act"])
    rope = raw.get("rope_parameters") or {}
    if rope.get("rope_theta") is not None and rope.get("rope_type", "default") != "default":
        raise unsupported("rope_type", rope["rope_type"])
    if raw.get("linear_use_gate", True) is not True:  # vLLM asserts the same
        raise unsupported("linear_use_gate", raw["linear_use_gate"])
    if bad := sorted(set(raw.get("layer_types") or []) - {LINEAR, FULL}):
        raise unsupported("layer_types", bad)


class PackedConv(nn.Module):
    """The depthwise causal convolutions of q, k and v as one weight [conv_dim, 1, K]: the
    released checkpoint stores them apart (`q_conv1d`, ... the loader fills each row
    block), transformers' own modules whole (`conv1d`)."""

    def __init__(self, shards: dict[str, int], kernel: int):
        super().__init__()
        self.shards = shards
        self.weight = nn.Parameter(torch.empty(sum(shards.values()), 1, kernel))


class GatedDeltaNet(nn.Module):
    """Linear attention whose per-request state (conv [conv_dim, K-1], recurrent [Hv, dk,
    dv]) does not grow with the context."""

    def __init__(self, config: OlmoHybridConfig, linear_idx: int):
        super().__init__()
        self.linear_idx = linear_idx  # index among the linear layers (the state cache's layer axis)
        self.heads = config.delta_heads
        key_dim = config.linear_num_key_heads * config.linear_key_head_dim
        value_dim = config.linear_num_value_heads * config.linear_value_head_dim
        num_v = config.linear_num_value_heads
        self.splits = (config.conv_dim, value_dim, num_v, num_v)
        # q, k, v (convolved), g (output gate), b (beta), a (decay): one matmul
        self.in_proj = PackedLinear(config.hidden_size, {"q_proj": key_dim, "k_proj": key_dim, "v_proj": value_dim,
                                                         "g_proj": value_dim, "b_proj": num_v, "a_proj": num_v})
        self.conv1d = PackedConv({"q_conv1d": key_dim, "k_conv1d": key_dim, "v_conv1d": value_dim}, config.linear_conv_kernel_dim)
        self.A_log = nn.Parameter(torch.empty(num_v))
        self.dt_bias = nn.Parameter(torch.empty(num_v))
        self.o_norm = nn.Module()
        self.o_norm.weight = nn.Parameter(torch.ones(config.linear_value_head_dim))
        self.o_norm_eps = 1e-5  # FLA's FusedRMSNormGated default, which transformers and vLLM follow
        self.o_proj = nn.Linear(value_dim, config.hidden_size, bias=False)
        # beta in [0, 2]: the eigenvalues of (I - beta k k^T) reach -1 (Olmo-Hybrid's "negative eigenvalues")
        self.beta_scale = 2.0 if config.linear_allow_neg_eigval else 1.0

    def forward(self, x: torch.Tensor, batch: ForwardBatch) -> torch.Tensor:
        n = x.shape[0]
        mixed, gate, b, a = self.in_proj(x).split(self.splits, dim=-1)
        beta = b.sigmoid() * self.beta_scale
        g = -self.A_log.float().exp() * F.softplus(a.float() + self.dt_bias)
        out = batch.recur(self.linear_idx, mixed, g, beta, self.conv1d.weight[:, 0], self.heads)
        o = gated_rms_norm(out, gate.view(n, self.heads.num_v_heads, -1), self.o_norm.weight, self.o_norm_eps)
        return self.o_proj(o.reshape(n, -1))


class OlmoHybridAttention(nn.Module):
    def __init__(self, config: OlmoHybridConfig, full_idx: int):
        super().__init__()
        self.full_idx = full_idx  # index among the full-attention layers (the KV cache's layer axis)
        self.num_heads, self.num_kv_heads, self.head_dim = config.num_attention_heads, config.num_key_value_heads, config.head_dim
        q_size, kv_size = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        self.splits = (q_size, kv_size, kv_size)  # kept here: linear = onednn swaps qkv_proj for a module without `shards`
        self.qkv_proj = PackedLinear(config.hidden_size, {"q_proj": q_size, "k_proj": kv_size, "v_proj": kv_size})
        self.q_norm = OlmoRMSNorm(q_size, config.rms_norm_eps)  # over all heads together, not per head
        self.k_norm = OlmoRMSNorm(kv_size, config.rms_norm_eps)
        self.o_proj = nn.Linear(q_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor, rotary: tuple[torch.Tensor, torch.Tensor] | None, batch: ForwardBatch) -> torch.Tensor:
        n = x.shape[0]
        q, k, v = self.qkv_proj(x).split(self.splits, dim=-1)
        q = self.q_norm(q).view(n, self.num_heads, self.head_dim)
        k = self.k_norm(k).view(n, self.num_kv_heads, self.head_dim)
        v = v.view(n, self.num_kv_heads, self.head_dim)
        if rotary is not None:
            cos, sin = rotary  # float32, then back to the model dtype, as transformers rotates
            q = apply_rotary(q, cos[:, None], sin[:, None]).to(x.dtype)
            k = apply_rotary(k, cos[:, None], sin[:, None]).to(x.dtype)
        return self.o_proj(batch.attend(self.full_idx, q, k, v).reshape(n, -1))


class LinearAttentionLayer(nn.Module):
    def __init__(self, config: OlmoHybridConfig, linear_idx: int):
        super().__init__()
        self.linear_attn = GatedDeltaNet(config, linear_idx)
        self.mlp = GatedMLP(config.hidden_size, config.intermediate_size)
        self.input_layernorm = OlmoRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = OlmoRMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, x: torch.Tensor, rotary, batch: ForwardBatch) -> torch.Tensor:
        x = x + self.linear_attn(self.input_layernorm(x), batch)
        return x + self.mlp(self.post_attention_layernorm(x))


class FullAttentionLayer(nn.Module):
    def __init__(self, config: OlmoHybridConfig, full_idx: int):
        super().__init__()
        self.self_attn = OlmoHybridAttention(config, full_idx)
        self.mlp = GatedMLP(config.hidden_size, config.intermediate_size)
        self.post_attention_layernorm = OlmoRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_feedforward_layernorm = OlmoRMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, x: torch.Tensor, rotary, batch: ForwardBatch) -> torch.Tensor:
        x = x + self.post_attention_layernorm(self.self_attn(x, rotary, batch))
        return x + self.post_feedforward_layernorm(self.mlp(x))


class OlmoHybridModel(nn.Module):
    def __init__(self, config: OlmoHybridConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        linear_idx, full_idx = iter(range(config.num_hidden_layers)), iter(range(config.num_hidden_layers))
        self.layers = nn.ModuleList(
            LinearAttentionLayer(config, next(linear_idx)) if kind == LINEAR else FullAttentionLayer(config, next(full_idx))
            for kind in config.layer_types
        )
        self.norm = OlmoRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary_emb = RotaryEmbedding(config.head_dim, config.rope_theta, None) if config.rope_theta is not None else None

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, batch: ForwardBatch) -> torch.Tensor:
        x = self.embed_tokens(input_ids)
        # float32 cos/sin whatever the model dtype, as transformers' Olmo-Hybrid rotary returns them
        rotary = self.rotary_emb(positions, torch.float32) if self.rotary_emb is not None else None
        for layer in self.layers:
            x = layer(x, rotary, batch)
        return self.norm(x)


class OlmoHybridForCausalLM(nn.Module):
    # the released checkpoint's names for what transformers' modules call otherwise (its
    # conversion mapping; transformers writes them back on save_pretrained)
    checkpoint_renames = (("attention_layer_norm", "input_layernorm"), ("feedforward_layer_norm", "post_attention_layernorm"))

    def __init__(self, config: OlmoHybridConfig):
        super().__init__()
        self.config = config
        self.model = OlmoHybridModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, batch: ForwardBatch) -> torch.Tensor:
        """Hidden states [len(input_ids), hidden]; keys, values and states go to the batch's cache."""
        return self.model(input_ids, positions, batch)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden)
