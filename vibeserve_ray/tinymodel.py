"""A small Llama-3-shaped checkpoint generated deterministically from a seed.

Nothing may be downloaded, so the laptop target's model is made here: an HF-format
directory (config.json, model.safetensors, tokenizer.json + tokenizer_config.json with
a Llama-3 chat template, generation_config.json) that loads through exactly the code
paths a real Llama-3 checkpoint uses. Weights depend on the seed; the tokenizer does
not, so two seeds give two checkpoints the same prompts run through (the judge's
weight-swap test relies on that).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

SPECIAL_TOKENS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
FORMAT_VERSION = 1  # bump when the generated files change, so caches are rebuilt


@dataclass(frozen=True)
class TinyLlamaShape:
    """~22M parameters: big enough that batching and KV caching matter on a CPU."""

    vocab_size: int = 4096
    hidden_size: int = 512
    intermediate_size: int = 1408
    num_hidden_layers: int = 6
    num_attention_heads: int = 8
    num_key_value_heads: int = 4
    max_position_embeddings: int = 2048
    # Logit scale: an untrained model with HF's init has near-uniform next-token
    # distributions, where every step is a near-tie and the checker could not tell a
    # right engine from a wrong one. A peaked lm_head makes most steps decisive.
    lm_head_std: float = 0.2


def cache_dir() -> Path:
    return Path(os.environ.get("VIBESERVE_CACHE", Path.home() / ".cache" / "vibeserve_ray"))


def tiny_model_dir(seed: int = 0) -> Path:
    return cache_dir() / "models" / f"tiny-llama-v{FORMAT_VERSION}-seed{seed}"


def make_tiny(seed: int = 0, dest: Path | None = None, shape: TinyLlamaShape = TinyLlamaShape(), quiet: bool = False) -> Path:
    """Returns the checkpoint directory for `seed`, generating it on first use."""
    def write(out: Path, say: Callable[[str], None]) -> None:
        say("model: [1/3] training tokenizer")
        write_tokenizer(out, shape.vocab_size)
        say("model: [2/3] drawing weights")
        _write_weights(out, seed, shape)
        say("model: [3/3] writing config")
        _write_config(out, shape)

    return generate(Path(dest) if dest else tiny_model_dir(seed), f"tiny Llama (seed {seed})", write, quiet)


def generate(dest: Path, what: str, write: Callable[[Path, Callable[[str], None]], None], quiet: bool = False) -> Path:
    """`dest`, made on first use by `write(tmp, say)` into a directory renamed to `dest`
    at the end, so concurrent makers race, one wins, and every reader sees a whole one."""
    if (dest / "model.safetensors").is_file():
        return dest
    say = (lambda msg: None) if quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    say(f"model: generating {what} into {dest}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=dest.name + ".", dir=dest.parent))
    try:
        write(tmp, say)
        try:
            tmp.rename(dest)
        except OSError:
            if not (dest / "model.safetensors").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _corpus(n_lines: int = 20000) -> list[str]:
    """Pseudo-text with a stable vocabulary; seed 0 always, so every checkpoint shares it."""
    rng = random.Random(0)
    syllables = ["ka", "to", "ri", "ne", "sa", "mo", "lu", "pe", "di", "ga", "fi", "zo", "ba", "che", "qu", "vi", "xe", "ya", "wu", "ho"]
    words = ["".join(rng.choice(syllables) for _ in range(rng.randint(1, 4))) for _ in range(6000)]
    words += "the a of to and in is it you that he was for on are with as I his they be at one have this".split()
    words += "def return if else for while import class self None True False print ( ) : = + - * / [ ] { } , .".split()
    words += [str(i) for i in range(100)]
    lines = []
    for _ in range(n_lines):
        line = " ".join(rng.choice(words) for _ in range(rng.randint(5, 20)))
        lines.append(line + rng.choice([".", "?", "!", ":", ",", "\n"]))
    return lines


def write_tokenizer(out: Path, vocab_size: int, model_max_length: int = 2048) -> None:
    """A byte-level BPE of `vocab_size` trained on a fixed corpus, the Llama-3 chat template and special tokens."""
    # tokenizers, torch and safetensors load only to make the model, not to find it in the cache
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer)
    bos = tok.token_to_id("<|begin_of_text|>")
    # Like Llama-3: the tokenizer itself prepends <|begin_of_text|>.
    tok.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A <|begin_of_text|> $B", special_tokens=[("<|begin_of_text|>", bos)]
    )
    tok.save(str(out / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<|begin_of_text|>",
        "eos_token": "<|eot_id|>",
        "pad_token": "<|end_of_text|>",
        "model_max_length": model_max_length,
        "clean_up_tokenization_spaces": False,
        "chat_template": CHAT_TEMPLATE,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    (out / "special_tokens_map.json").write_text(
        json.dumps({"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>", "pad_token": "<|end_of_text|>"}, indent=2)
    )


def special_ids(out: Path) -> dict[str, int]:
    vocab = json.loads((out / "tokenizer.json").read_text())["model"]["vocab"]
    return {t: vocab[t] for t in SPECIAL_TOKENS}


def _write_config(out: Path, shape: TinyLlamaShape) -> None:
    ids = special_ids(out)
    bos, eos = ids["<|begin_of_text|>"], [ids["<|end_of_text|>"], ids["<|eot_id|>"]]
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": shape.vocab_size,
        "hidden_size": shape.hidden_size,
        "intermediate_size": shape.intermediate_size,
        "num_hidden_layers": shape.num_hidden_layers,
        "num_attention_heads": shape.num_attention_heads,
        "num_key_value_heads": shape.num_key_value_heads,
        "head_dim": shape.hidden_size // shape.num_attention_heads,
        "hidden_act": "silu",
        "max_position_embeddings": shape.max_position_embeddings,
        "rms_norm_eps": 1e-5,
        "rope_theta": 500000.0,
        # Llama-3.1's frequency scaling, so engines must implement what real checkpoints need.
        "rope_scaling": {
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 256,
        },
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
        "bos_token_id": bos,
        "eos_token_id": eos,
        "pad_token_id": ids["<|end_of_text|>"],
        "initializer_range": 0.02,
        "use_cache": True,
        "vibeserve_tiny": asdict(shape) | {"format_version": FORMAT_VERSION},
    }
    (out / "config.json").write_text(json.dumps(config, indent=2))
    gen = {"bos_token_id": bos, "eos_token_id": eos, "do_sample": False}
    (out / "generation_config.json").write_text(json.dumps(gen, indent=2))


def _write_weights(out: Path, seed: int, shape: TinyLlamaShape) -> None:
    # see _write_tokenizer: only making the model needs them
    import torch
    from safetensors.torch import save_file

    gen = torch.Generator().manual_seed(seed)
    h, i, head = shape.hidden_size, shape.intermediate_size, shape.hidden_size // shape.num_attention_heads
    kv = shape.num_key_value_heads * head

    def normal(rows: int, cols: int, std: float) -> torch.Tensor:
        return torch.randn(rows, cols, generator=gen) * std

    def norm_weight(n: int) -> torch.Tensor:
        return 1.0 + 0.1 * torch.randn(n, generator=gen)

    tensors = {"model.embed_tokens.weight": normal(shape.vocab_size, h, 1.0)}
    for layer in range(shape.num_hidden_layers):
        p = f"model.layers.{layer}."
        tensors[p + "input_layernorm.weight"] = norm_weight(h)
        tensors[p + "self_attn.q_proj.weight"] = normal(h, h, h**-0.5)
        tensors[p + "self_attn.k_proj.weight"] = normal(kv, h, h**-0.5)
        tensors[p + "self_attn.v_proj.weight"] = normal(kv, h, h**-0.5)
        tensors[p + "self_attn.o_proj.weight"] = normal(h, h, h**-0.5)
        tensors[p + "post_attention_layernorm.weight"] = norm_weight(h)
        tensors[p + "mlp.gate_proj.weight"] = normal(i, h, h**-0.5)
        tensors[p + "mlp.up_proj.weight"] = normal(i, h, h**-0.5)
        tensors[p + "mlp.down_proj.weight"] = normal(h, i, i**-0.5)
    tensors["model.norm.weight"] = norm_weight(h)
    tensors["lm_head.weight"] = normal(shape.vocab_size, h, shape.lm_head_std)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(out / "model.safetensors"), metadata={"format": "pt"})
