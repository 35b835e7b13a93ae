"""The generated checkpoint: deterministic, Llama-3-shaped, loadable the way real ones are."""

from __future__ import annotations

import hashlib
import json

import torch
from conftest import run_cli

from vibeserve_ray.tinymodel import make_tiny


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_same_seed_same_files_other_seed_other_weights(tmp_path, tiny_models):
    again = make_tiny(0, tmp_path / "again", quiet=True)
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert _digest(again / name) == _digest(tiny_models[0] / name), name
    assert _digest(tiny_models[0] / "model.safetensors") != _digest(tiny_models[1] / "model.safetensors")
    assert _digest(tiny_models[0] / "tokenizer.json") == _digest(tiny_models[1] / "tokenizer.json")


def test_loads_through_transformers_auto_classes(tiny_models):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.from_pretrained(tiny_models[0])
    assert config.model_type == "llama"
    model = AutoModelForCausalLM.from_pretrained(tiny_models[0])
    params = sum(p.numel() for p in model.parameters())
    assert 10e6 <= params <= 50e6
    tok = AutoTokenizer.from_pretrained(tiny_models[0])
    assert len(tok) == config.vocab_size
    ids = tok("ka to ri")["input_ids"]
    assert ids[0] == tok.bos_token_id  # Llama-3 style: BOS added by the tokenizer
    chat = tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False)
    assert chat.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")
    with torch.inference_mode():
        logits = model(torch.tensor([ids])).logits[0, -1]
    top2 = torch.topk(torch.log_softmax(logits, -1), 2).values
    assert float(top2[0] - top2[1]) > 0  # a defined greedy choice
    assert json.loads((tiny_models[0] / "config.json").read_text())["rope_scaling"]["rope_type"] == "llama3"


def test_make_tiny_cli_prints_the_directory(tmp_path):
    result = run_cli("model", "make-tiny", "--seed", "3", "--dir", str(tmp_path / "m"), timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(tmp_path / "m")
    assert (tmp_path / "m" / "model.safetensors").is_file()
    assert "[1/3]" in result.stderr  # progress is shown


def test_the_hybrid_generator_is_deterministic_and_loads_as_olmo_hybrid(tmp_path):
    from transformers import AutoModelForCausalLM

    from vibeserve_ray.generators import GENERATORS
    from vibeserve_ray.target import ModelSpec
    from vibeserve_ray.tinyhybrid import make_tiny_hybrid

    assert set(ModelSpec.model_fields["generator"].annotation.__args__[0].__args__) == set(GENERATORS)  # target.toml names what exists
    result = run_cli("model", "make-tiny", "--generator", "tiny-olmo-hybrid", "--seed", "0", "--dir", str(tmp_path / "h"), timeout=300)
    assert result.returncode == 0, result.stderr
    cached = make_tiny_hybrid(0, quiet=True)
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert _digest(tmp_path / "h" / name) == _digest(cached / name), name
    assert _digest(cached / "model.safetensors") != _digest(make_tiny_hybrid(1, quiet=True) / "model.safetensors")
    model = AutoModelForCausalLM.from_pretrained(cached)
    assert type(model).__name__ == "OlmoHybridForCausalLM" and model.config.layer_types.count("full_attention") == 2
    assert 30e6 <= sum(p.numel() for p in model.parameters()) <= 35e6
