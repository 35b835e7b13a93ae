"""A small Olmo-Hybrid-shaped checkpoint generated deterministically from a seed.

The sibling of tinymodel.py, whose tokenizer it shares (so a hybrid and a Llama
checkpoint read the same prompts): an HF directory that `AutoModelForCausalLM` loads as
`OlmoHybridForCausalLM` (transformers 5.x). The released Olmo-Hybrid-7B's shape scaled
down: Gated DeltaNet and full attention 3:1, no positional encoding in the attention
layers, dense SwiGLU MLPs; 32.6M parameters. Olmo-Hybrid rather than Qwen3-Next: it is
the model of the VibeServe paper's hybrid scenario, its MLP is dense (vLLM's Qwen3-Next
needs at least one MoE layer) and its projections are plain and named.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from vibeserve_ray.tinymodel import cache_dir, generate, special_ids, write_tokenizer

FORMAT_VERSION = 1  # bump when the generated files change, so caches are rebuilt


@dataclass(frozen=True)
class TinyHybridShape:
    """Hidden 512, 8 layers: 6 Gated DeltaNet, 2 full attention (layers 3 and 7, i % 4 == 3 as in the 7B)."""

    vocab_size: int = 4096
    hidden_size: int = 512
    intermediate_size: int = 1408
    num_hidden_layers: int = 8
    num_attention_heads: int = 8
    num_key_value_heads: int = 4
    linear_num_heads: int = 8  # key heads = value heads, as in the 7B
    linear_key_head_dim: int = 48  # 0.75 * hidden / heads, the 7B's rule
    linear_value_head_dim: int = 96  # 2 * key head dim
    linear_conv_kernel_dim: int = 4
    max_position_embeddings: int = 8192
    # A peaked lm_head makes most greedy steps decisive (tinymodel.TinyLlamaShape): 89% of
    # steps have a top-2 logprob gap above 0.1.
    lm_head_std: float = 0.2
    # Decay rates spread over heads: A in [1, 16], dt in [1e-3, 1e-1] (transformers' init
    # ranges, A's floor raised from 0 to keep log(A) finite): per-token decay exp(-A dt)
    # from ~0.2 to ~0.999, so some heads remember the whole prompt and a stale or
    # misplaced state shows in the tokens.
    a_log_range: tuple[float, float] = (1.0, 16.0)
    dt_range: tuple[float, float] = (1e-3, 1e-1)


def tiny_hybrid_dir(seed: int = 0) -> Path:
    return cache_dir() / "models" / f"tiny-olmo-hybrid-v{FORMAT_VERSION}-seed{seed}"


def make_tiny_hybrid(seed: int = 0, dest: Path | None = None, shape: TinyHybridShape = TinyHybridShape(), quiet: bool = False) -> Path:
    """Returns the checkpoint directory for `seed`, generating it on first use."""
    def write(out: Path, say: Callable[[str], None]) -> None:
        say("model: [1/3] training tokenizer")
        write_tokenizer(out, shape.vocab_size, shape.max_position_embeddings)
        say("model: [2/3] drawing weights")
        _write_weights(out, seed, shape)
        say("model: [3/3] writing config")
        _write_config(out, shape)

    return generate(Path(dest) if dest else tiny_hybrid_dir(seed), f"tiny Olmo-Hybrid (seed {seed})", write, quiet)


def layer_types(shape: TinyHybridShape) -> list[str]:
    return ["full_attention" if i % 4 == 3 else "linear_attention" for i in range(shape.num_hidden_layers)]


def _write_config(out: Path, shape: TinyHybridShape) -> None:
    ids = special_ids(out)
    bos, eos, pad = ids["<|begin_of_text|>"], [ids["<|end_of_text|>"], ids["<|eot_id|>"]], ids["<|end_of_text|>"]
    config = {
        "architectures": ["OlmoHybridForCausalLM"],
        "model_type": "olmo_hybrid",
        "vocab_size": shape.vocab_size,
        "hidden_size": shape.hidden_size,
        "intermediate_size": shape.intermediate_size,
        "num_hidden_layers": shape.num_hidden_layers,
        "layer_types": layer_types(shape),
        "num_attention_heads": shape.num_attention_heads,
        "num_key_value_heads": shape.num_key_value_heads,
        "linear_num_key_heads": shape.linear_num_heads,
        "linear_num_value_heads": shape.linear_num_heads,
        "linear_key_head_dim": shape.linear_key_head_dim,
        "linear_value_head_dim": shape.linear_value_head_dim,
        "linear_conv_kernel_dim": shape.linear_conv_kernel_dim,
        "linear_allow_neg_eigval": True,
        "hidden_act": "silu",
        "max_position_embeddings": shape.max_position_embeddings,
        "rms_norm_eps": 1e-6,
        "rope_parameters": {"rope_type": "default", "rope_theta": None},  # the released checkpoint: no RoPE
        "attention_bias": False,
        "attention_dropout": 0.0,
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
        "bos_token_id": bos,
        "eos_token_id": eos,
        "pad_token_id": pad,  # must lie inside the vocabulary (the 7B config's default does not)
        "initializer_range": 0.02,
        "use_cache": True,
        "vibeserve_tiny": asdict(shape) | {"format_version": FORMAT_VERSION},
    }
    (out / "config.json").write_text(json.dumps(config, indent=2))
    gen = {"bos_token_id": bos, "eos_token_id": eos, "pad_token_id": pad, "do_sample": False}
    (out / "generation_config.json").write_text(json.dumps(gen, indent=2))


def _write_weights(out: Path, seed: int, shape: TinyHybridShape) -> None:
    import torch  # torch and safetensors load only when a checkpoint is made, not with the target
    from safetensors.torch import save_file

    gen = torch.Generator().manual_seed(seed)
    h, i = shape.hidden_size, shape.intermediate_size
    kv = shape.num_key_value_heads * (h // shape.num_attention_heads)
    heads, dk, dv = shape.linear_num_heads, shape.linear_key_head_dim, shape.linear_value_head_dim
    key_dim, value_dim, k = heads * dk, heads * dv, shape.linear_conv_kernel_dim

    def normal(*size: int, std: float) -> torch.Tensor:
        return torch.randn(*size, generator=gen) * std

    def norm_weight(n: int) -> torch.Tensor:
        return 1.0 + 0.1 * torch.randn(n, generator=gen)

    def uniform(n: int, low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(n, generator=gen)

    tensors = {"model.embed_tokens.weight": normal(shape.vocab_size, h, std=1.0)}
    for layer, kind in enumerate(layer_types(shape)):
        p = f"model.layers.{layer}."
        if kind == "linear_attention":
            a = p + "linear_attn."
            tensors[p + "input_layernorm.weight"] = norm_weight(h)
            for name, rows in (("q_proj", key_dim), ("k_proj", key_dim), ("v_proj", value_dim), ("g_proj", value_dim)):
                tensors[a + name + ".weight"] = normal(rows, h, std=h**-0.5)
            tensors[a + "a_proj.weight"] = normal(heads, h, std=0.02)  # the decay's input stays near dt_bias, as at init
            tensors[a + "b_proj.weight"] = normal(heads, h, std=h**-0.5)
            tensors[a + "o_proj.weight"] = normal(h, value_dim, std=value_dim**-0.5)
            tensors[a + "conv1d.weight"] = normal(2 * key_dim + value_dim, 1, k, std=k**-0.5)
            tensors[a + "A_log"] = uniform(heads, *shape.a_log_range).log()
            dt = uniform(heads, *(math.log(x) for x in shape.dt_range)).exp()
            tensors[a + "dt_bias"] = dt + torch.log(-torch.expm1(-dt))  # softplus^-1(dt)
            tensors[a + "o_norm.weight"] = norm_weight(dv)
            tensors[p + "post_attention_layernorm.weight"] = norm_weight(h)
        else:
            a = p + "self_attn."
            for name, rows in (("q_proj", h), ("k_proj", kv), ("v_proj", kv), ("o_proj", h)):
                tensors[a + name + ".weight"] = normal(rows, h, std=h**-0.5)
            tensors[a + "q_norm.weight"] = norm_weight(h)
            tensors[a + "k_norm.weight"] = norm_weight(kv)
            tensors[p + "post_attention_layernorm.weight"] = norm_weight(h)
            tensors[p + "post_feedforward_layernorm.weight"] = norm_weight(h)
        tensors[p + "mlp.gate_proj.weight"] = normal(i, h, std=h**-0.5)
        tensors[p + "mlp.up_proj.weight"] = normal(i, h, std=h**-0.5)
        tensors[p + "mlp.down_proj.weight"] = normal(h, i, std=i**-0.5)
    tensors["model.norm.weight"] = norm_weight(h)
    tensors["lm_head.weight"] = normal(shape.vocab_size, h, std=shape.lm_head_std)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(out / "model.safetensors"), metadata={"format": "pt"})
