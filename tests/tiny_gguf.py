"""A tiny random Llama written both as a GGUF (with gguf's writer) and as an HF directory.

The fixture for a fast test of GGUF import: the same weights and tokenizer in the two
formats, so `gguf_to_hf(gguf)` must give a directory whose logits and token ids equal
the HF directory's. A few hundred KB, written in well under a second.

What transformers' GGUF loader needs from the file (transformers 5.25, gguf 0.19):
- model keys under the architecture's prefix (`llama.block_count`, `.embedding_length`,
  `.feed_forward_length`, `.attention.head_count`, `.attention.head_count_kv`,
  `.rope.freq_base`, `.attention.layer_norm_rms_epsilon`, `.context_length`,
  `.vocab_size`); tensors under llama.cpp's names, Q and K rows permuted as llama.cpp's
  converter does (the loader undoes it); no `output.weight` means tied embeddings;
- a byte-level BPE tokenizer as `tokenizer.ggml.model = "gpt2"`: `tokens` in id order,
  spelled in GPT-2's byte alphabet (as tokenizers' ByteLevel stores them), `merges` as
  "left right" strings, `token_type` (1 normal, 3 control: control tokens become
  special tokens), the bos/eos/padding ids, and `tokenizer.chat_template`.
  `tokenizer.ggml.pre` picks the split: transformers 5.25 does not map "smollm" and falls
  back to GPT-2's regex alone; vibeserve_ray/gguf_convert.py puts SmolLM's digit split
  back, and the fixture's tokenizer uses that split, so the test fails without the fix.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np
import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]  # ids 0, 1, 2, as in SmolLM2
CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
CORPUS = [
    "The capital of France is Paris. The capital of Japan is Tokyo.",
    "What is the colour of the sky? The sky is blue on a clear day.",
    "def square(x):\n    return x * x\n",
    "A week has 7 days; a year has 12 months and 365 days.",
    json.__doc__, json.dumps.__doc__, json.loads.__doc__,  # text that ships with Python: enough pairs for 384 tokens
]


@dataclass(frozen=True)
class TinyShape:
    vocab_size: int = 384
    hidden_size: int = 64
    intermediate_size: int = 128
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    max_position_embeddings: int = 512
    rope_theta: float = 100000.0
    rms_norm_eps: float = 1e-5
    tie_word_embeddings: bool = True


def write_tiny_gguf(dest: Path, seed: int = 0, shape: TinyShape = TinyShape(), quant: str = "F32") -> tuple[Path, Path]:
    """Writes `dest/tiny.gguf` and `dest/hf/` (same weights, same tokenizer); returns both paths.

    `quant` "Q8_0" stores the 2-D weights quantised; the HF copy then holds their
    dequantised values, so the two still describe one model exactly.
    """
    dest.mkdir(parents=True, exist_ok=True)
    hf = dest / "hf"
    hf.mkdir(exist_ok=True)
    tokenizer = _train_tokenizer(shape.vocab_size)
    tokenizer.save(str(hf / "tokenizer.json"))
    vocab = tokenizer.get_vocab()
    tokens = sorted(vocab, key=vocab.get)
    assert len(tokens) == shape.vocab_size, f"trained {len(tokens)} tokens, wanted {shape.vocab_size}"
    weights = _random_weights(seed, shape)
    if quant != "F32":
        weights = {k: _round_trip(v, quant) if v.ndim == 2 else v for k, v in weights.items()}
    gguf_path = dest / "tiny.gguf"
    _write_gguf(gguf_path, shape, weights, tokens, json.loads(tokenizer.to_str())["model"]["merges"], quant)

    state = {k: torch.from_numpy(v.copy()) for k, v in weights.items()}
    save_file(state, str(hf / "model.safetensors"), metadata={"format": "pt"})
    (hf / "config.json").write_text(json.dumps(_hf_config(shape), indent=2))
    (hf / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": SPECIALS[1], "eos_token": SPECIALS[2],
        "pad_token": SPECIALS[2], "unk_token": SPECIALS[0], "chat_template": CHATML, "clean_up_tokenization_spaces": False,
    }, indent=2))
    return gguf_path, hf


def _train_tokenizer(vocab_size: int):
    tok = Tokenizer(models.BPE())
    # SmolLM2's split (what `tokenizer.ggml.pre = "smollm"` names): digits one by one, then byte-level
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer)
    return tok


def _random_weights(seed: int, s: TinyShape) -> dict[str, np.ndarray]:
    """HF names and layout; float32. Norm weights near 1, projections scaled so logits are not flat."""
    rng = np.random.default_rng(seed)
    head_dim = s.hidden_size // s.num_attention_heads
    kv = s.num_key_value_heads * head_dim

    def normal(*dims: int, std: float) -> np.ndarray:
        return (rng.standard_normal(dims) * std).astype(np.float32)

    h, i = s.hidden_size, s.intermediate_size
    w = {"model.embed_tokens.weight": normal(s.vocab_size, h, std=1.0)}
    for layer in range(s.num_hidden_layers):
        p = f"model.layers.{layer}."
        w[p + "input_layernorm.weight"] = 1 + normal(h, std=0.1)
        w[p + "self_attn.q_proj.weight"] = normal(h, h, std=h**-0.5)
        w[p + "self_attn.k_proj.weight"] = normal(kv, h, std=h**-0.5)
        w[p + "self_attn.v_proj.weight"] = normal(kv, h, std=h**-0.5)
        w[p + "self_attn.o_proj.weight"] = normal(h, h, std=h**-0.5)
        w[p + "post_attention_layernorm.weight"] = 1 + normal(h, std=0.1)
        w[p + "mlp.gate_proj.weight"] = normal(i, h, std=h**-0.5)
        w[p + "mlp.up_proj.weight"] = normal(i, h, std=h**-0.5)
        w[p + "mlp.down_proj.weight"] = normal(h, i, std=i**-0.5)
    w["model.norm.weight"] = 1 + normal(h, std=0.1)
    if not s.tie_word_embeddings:
        w["lm_head.weight"] = normal(s.vocab_size, h, std=0.2)
    return w


GGUF_NAMES = {
    "input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "post_attention_layernorm": "ffn_norm", "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
}


def _gguf_name(hf_name: str) -> str:
    if hf_name == "model.embed_tokens.weight":
        return "token_embd.weight"
    if hf_name == "model.norm.weight":
        return "output_norm.weight"
    if hf_name == "lm_head.weight":
        return "output.weight"
    _, _, layer, rest = hf_name.split(".", 3)
    return f"blk.{layer}.{GGUF_NAMES[rest.removesuffix('.weight')]}.weight"


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's Q/K row order (rotary pairs interleaved); transformers' loader inverts it."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _write_gguf(path: Path, s: TinyShape, weights: dict[str, np.ndarray], tokens: list[str], merges: list, quant: str) -> None:
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny-llama-gguf-fixture")
    w.add_block_count(s.num_hidden_layers)
    w.add_context_length(s.max_position_embeddings)
    w.add_embedding_length(s.hidden_size)
    w.add_feed_forward_length(s.intermediate_size)
    w.add_head_count(s.num_attention_heads)
    w.add_head_count_kv(s.num_key_value_heads)
    w.add_rope_freq_base(s.rope_theta)
    w.add_layer_norm_rms_eps(s.rms_norm_eps)
    w.add_rope_dimension_count(s.hidden_size // s.num_attention_heads)
    w.add_vocab_size(s.vocab_size)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    w.add_token_list(tokens)
    w.add_token_types([3 if t in SPECIALS else 1 for t in tokens])  # 3: control, 1: normal
    w.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in merges])
    w.add_bos_token_id(tokens.index(SPECIALS[1]))
    w.add_eos_token_id(tokens.index(SPECIALS[2]))
    w.add_pad_token_id(tokens.index(SPECIALS[2]))
    w.add_unk_token_id(tokens.index(SPECIALS[0]))
    w.add_add_bos_token(False)
    w.add_chat_template(CHATML)
    qtype = getattr(gguf.GGMLQuantizationType, quant)
    for name, tensor in weights.items():
        if ".q_proj." in name:
            tensor = _permute(tensor, s.num_attention_heads)
        elif ".k_proj." in name:
            tensor = _permute(tensor, s.num_key_value_heads)
        if tensor.ndim == 2 and quant != "F32":
            w.add_tensor(_gguf_name(name), gguf.quants.quantize(tensor, qtype), raw_dtype=qtype)
        else:
            w.add_tensor(_gguf_name(name), tensor)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def _round_trip(w: np.ndarray, quant: str) -> np.ndarray:
    """What a reader dequantises `w` to, after it is stored as `quant`."""
    qtype = getattr(gguf.GGMLQuantizationType, quant)
    return gguf.quants.dequantize(gguf.quants.quantize(w, qtype), qtype).astype(np.float32)


def _hf_config(s: TinyShape) -> dict:
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": s.vocab_size, "hidden_size": s.hidden_size,
        "intermediate_size": s.intermediate_size, "num_hidden_layers": s.num_hidden_layers,
        "num_attention_heads": s.num_attention_heads, "num_key_value_heads": s.num_key_value_heads,
        "head_dim": s.hidden_size // s.num_attention_heads, "hidden_act": "silu", "max_position_embeddings": s.max_position_embeddings,
        "rms_norm_eps": s.rms_norm_eps, "rope_theta": s.rope_theta, "tie_word_embeddings": s.tie_word_embeddings,
        "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2, "dtype": "float32",
    }
