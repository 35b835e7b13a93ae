"""The seed engine against transformers on a small random Llama (llama3 rope, GQA)."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest
import torch
from conftest import ROPE_LLAMA3, make_hf_model
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

from vibeserve_ray.candidate import GenerationRequest, sample_token
from vibeserve_ray.engine import create_engine
from vibeserve_ray.engine.layers import onednn_linear
from vibeserve_ray.engine.layers.int8_linear import Int8Linear
from vibeserve_ray.engine.layers.rotary import rope_inv_freq
from vibeserve_ray.engine.models import FAMILIES, llama, load_family

PROMPTS = [[7], [5, 6, 7, 8, 9, 10, 11], list(range(100, 160))]


@pytest.fixture(scope="module")
def engine(model_dir):
    engine = create_engine(str(model_dir), "cpu", {})
    yield engine
    asyncio.run(engine.close())


async def collect(engine, request: GenerationRequest) -> list:
    return [out async for out in engine.generate(request)]


def run(engine, request: GenerationRequest) -> list:
    return asyncio.run(collect(engine, request))


def hf_greedy(model, prompt: list[int], max_tokens: int) -> tuple[list[int], list[float]]:
    with torch.no_grad():
        out = model.generate(
            torch.tensor([prompt]), max_new_tokens=max_tokens, do_sample=False, eos_token_id=None,
            pad_token_id=0, output_logits=True, return_dict_in_generate=True,
        )
    tokens = out.sequences[0, len(prompt):].tolist()
    logprobs = [float(torch.log_softmax(step[0].float(), -1)[t]) for step, t in zip(out.logits, tokens)]
    return tokens, logprobs


def hf_sampled(model, prompt: list[int], max_tokens: int, temperature: float, top_p: float, seed: int) -> list[int]:
    """The contract's sampling rule applied step by step to transformers' logits."""
    ids = list(prompt)
    with torch.no_grad():
        for step in range(max_tokens):
            logits = model(input_ids=torch.tensor([ids])).logits[0, -1]
            ids.append(sample_token(logits, temperature, top_p, seed, step))
    return ids[len(prompt):]


@pytest.mark.parametrize("prompt", PROMPTS, ids=lambda p: f"len{len(p)}")
def test_greedy_tokens_and_logprobs_match_transformers(engine, hf_model, prompt):
    want_tokens, want_logprobs = hf_greedy(hf_model, prompt, 24)
    outs = run(engine, GenerationRequest(prompt, max_tokens=24, want_logprobs=True))
    assert [o.token_id for o in outs] == want_tokens
    assert max(abs(o.logprob - w) for o, w in zip(outs, want_logprobs)) < 1e-4


def test_logprobs_are_omitted_unless_asked(engine):
    assert all(o.logprob is None for o in run(engine, GenerationRequest([1, 2, 3], max_tokens=3)))


@pytest.mark.parametrize("temperature,top_p", [(1.0, 1.0), (0.7, 0.9)])
def test_seeded_sampling_matches_reference_loop(engine, hf_model, temperature, top_p):
    prompt = PROMPTS[1]
    want = hf_sampled(hf_model, prompt, 16, temperature, top_p, seed=1234)
    outs = run(engine, GenerationRequest(prompt, max_tokens=16, temperature=temperature, top_p=top_p, seed=1234))
    assert [o.token_id for o in outs] == want


def test_concurrent_requests_match_solo_runs(engine):
    requests = [
        GenerationRequest(PROMPTS[0], max_tokens=12),
        GenerationRequest(PROMPTS[1], max_tokens=8, temperature=0.8, seed=7),
        GenerationRequest(PROMPTS[2], max_tokens=10),
        GenerationRequest(PROMPTS[1], max_tokens=5, temperature=1.0, top_p=0.5, seed=99),
    ]
    solo = [run(engine, r) for r in requests]

    async def together():
        return await asyncio.gather(*(collect(engine, r) for r in requests))

    assert asyncio.run(together()) == solo


def test_stop_token_ends_stream_after_emitting_it(engine, hf_model):
    tokens, _ = hf_greedy(hf_model, PROMPTS[1], 10)
    stop = tokens[3]
    outs = run(engine, GenerationRequest(PROMPTS[1], max_tokens=10, stop_token_ids=[stop]))
    assert [o.token_id for o in outs] == tokens[: tokens.index(stop) + 1]


def test_abandoned_stream_does_not_block_next_request(engine):
    async def scenario():
        received = 0
        async for _ in engine.generate(GenerationRequest(PROMPTS[0], max_tokens=100_000)):
            received += 1
            if received == 2:
                break
        return await asyncio.wait_for(collect(engine, GenerationRequest(PROMPTS[1], max_tokens=4)), timeout=20)

    assert len(asyncio.run(scenario())) == 4


def test_cancelled_request_does_not_block_next_request(engine):
    async def scenario():
        task = asyncio.create_task(collect(engine, GenerationRequest(PROMPTS[0], max_tokens=100_000)))
        await asyncio.sleep(0.2)
        task.cancel()
        return await asyncio.wait_for(collect(engine, GenerationRequest(PROMPTS[1], max_tokens=4)), timeout=20)

    assert len(asyncio.run(scenario())) == 4


def test_event_loop_stays_responsive_while_generating(engine):
    async def scenario():
        gaps, stop = [], asyncio.Event()

        async def ticker():
            last = time.perf_counter()
            while not stop.is_set():
                await asyncio.sleep(0.005)
                now = time.perf_counter()
                gaps.append(now - last)
                last = now

        tick = asyncio.create_task(ticker())
        await collect(engine, GenerationRequest(PROMPTS[2], max_tokens=200))
        stop.set()
        await tick
        return gaps

    gaps = asyncio.run(scenario())
    assert len(gaps) > 5 and max(gaps) < 0.5


def test_failed_forward_raises_in_generate_and_engine_recovers(engine, monkeypatch):
    def broken(seqs):
        raise RuntimeError("boom")

    with monkeypatch.context() as m:
        m.setattr(engine.runner, "run", broken)
        with pytest.raises(RuntimeError, match="boom"):
            run(engine, GenerationRequest(PROMPTS[0], max_tokens=3))
    assert len(run(engine, GenerationRequest(PROMPTS[0], max_tokens=3))) == 3


@pytest.mark.parametrize("prompt", [[], [1] * 257, [512]], ids=["empty", "too-long", "bad-id"])
def test_invalid_prompt_raises_value_error(engine, prompt):
    with pytest.raises(ValueError):
        run(engine, GenerationRequest(prompt, max_tokens=3))


def test_sharded_tied_checkpoint_matches_transformers(tmp_path):
    model = make_hf_model(seed=1, tie_word_embeddings=True)
    model.save_pretrained(tmp_path, max_shard_size="200KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    engine = create_engine(str(tmp_path), "cpu", {"num_threads": 1})
    try:
        outs = run(engine, GenerationRequest(PROMPTS[1], max_tokens=12))
    finally:
        asyncio.run(engine.close())
    assert [o.token_id for o in outs] == hf_greedy(model, PROMPTS[1], 12)[0]


@pytest.mark.parametrize("rope", [ROPE_LLAMA3, None], ids=["llama3", "default"])
def test_legacy_config_keys_give_transformers_inv_freq(rope):
    """Pre-v5 checkpoints keep rope_theta top-level and scaling in `rope_scaling`."""
    hf = LlamaConfig(hidden_size=128, num_attention_heads=4, rope_theta=500000.0, rope_scaling=rope)
    raw = {**json.loads(hf.to_json_string()), "rope_theta": 500000.0, "rope_scaling": rope}
    raw.pop("rope_parameters")
    want = LlamaRotaryEmbedding(hf).inv_freq
    config = llama.LlamaConfig.from_dict(raw)
    assert torch.equal(rope_inv_freq(config.head_dim, config.rope_theta, config.rope_scaling), want)


@pytest.mark.parametrize(
    "change", [{"rope_parameters": {"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e4}}, {"attention_bias": True}, {"mlp_bias": True}]
)
def test_unsupported_config_is_rejected(change):
    raw = {**json.loads(LlamaConfig(hidden_size=128, num_attention_heads=4).to_json_string()), **change}
    with pytest.raises(ValueError, match="not supported"):
        llama.LlamaConfig.from_dict(raw)


def test_the_family_comes_from_model_type_and_ships_its_design_space(model_dir, tmp_path):
    assert load_family(model_dir)[0] is FAMILIES["llama"]
    assert all(family.space().family == family.name for family in FAMILIES.values())
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "mamba"}))
    with pytest.raises(ValueError, match="model_type='mamba' is not supported"):
        load_family(tmp_path)


@pytest.mark.skipif(not onednn_linear.available(), reason="this torch has no oneDNN")
def test_packed_linear_layers_give_the_greedy_tokens_of_transformers(model_dir, hf_model):
    """linear = onednn: the same float32 products in oneDNN's order, close enough that no greedy token moves."""
    layer = torch.nn.Linear(64, 96, bias=False)
    x = torch.randn(5, 64)
    assert torch.allclose(onednn_linear.OneDNNLinear(layer)(x), layer(x), atol=1e-5)
    with pytest.raises(ValueError, match="bias-free float32 or bfloat16"):
        onednn_linear.pack_linears(torch.nn.Sequential(torch.nn.Linear(4, 4)))
    engine = create_engine(str(model_dir), "cpu", {"design": {"linear": "onednn"}})
    try:
        assert any(isinstance(m, onednn_linear.OneDNNLinear) for m in engine.runner.model.modules())
        for prompt in PROMPTS:
            tokens, _ = hf_greedy(hf_model, prompt, 12)
            assert [o.token_id for o in run(engine, GenerationRequest(prompt, max_tokens=12))] == tokens
    finally:
        asyncio.run(engine.close())


@pytest.mark.skipif(not onednn_linear.bf16_supported(), reason="this CPU has neither AVX512-BF16 nor AMX")
@pytest.mark.parametrize("design", [{"dtype": "bfloat16"}, {"dtype": "bfloat16", "linear": "onednn"}, {"dtype": "bfloat16", "linear": "int8"}],
                         ids=["bfloat16", "bfloat16-onednn", "int8-weights"])
def test_reduced_precision_on_cpu_serves_the_tokens_float32_would_where_they_are_decisive(model_dir, hf_model, design):
    """bfloat16 weights, activations and KV cache (packed for oneDNN, or int8 weights): not exact,
    but on a model with peaked logits every greedy token is float32's, and logprobs stay close."""
    engine = create_engine(str(model_dir), "cpu", {"design": {"scheduler": "continuous", "kv_cache": "slab", **design}})
    try:
        kinds = {type(m) for m in engine.runner.model.modules()}
        assert (onednn_linear.OneDNNLinear in kinds) == (design.get("linear") == "onednn") and (Int8Linear in kinds) == (design.get("linear") == "int8")
        assert engine.runner.cache.keys[0].dtype == torch.bfloat16
        for prompt in PROMPTS:
            tokens, logprobs = hf_greedy(hf_model, prompt, 12)
            outs = run(engine, GenerationRequest(prompt, max_tokens=12, want_logprobs=True))
            assert [o.token_id for o in outs] == tokens
            assert max(abs(o.logprob - lp) for o, lp in zip(outs, logprobs)) < 0.5
    finally:
        asyncio.run(engine.close())


def test_bfloat16_is_refused_on_a_cpu_that_would_emulate_it(model_dir, monkeypatch):
    monkeypatch.setattr(onednn_linear, "FAST_BF16_FLAGS", ("a_flag_no_cpu_has",))  # the CPU as /proc/cpuinfo would describe one without
    if not onednn_linear.available() or not torch.ops.mkldnn._is_mkldnn_bf16_supported() or not Path("/proc/cpuinfo").is_file():
        pytest.skip("no oneDNN bfloat16 or no /proc/cpuinfo to read the CPU from")
    with pytest.raises(ValueError, match="design.dtype = 'bfloat16' needs a CPU with AVX512-BF16 or AMX"):
        create_engine(str(model_dir), "cpu", {"design": {"dtype": "bfloat16"}})


def test_an_engine_without_a_compiled_design_starts_without_importing_torch_dynamo(tiny_models):
    """torch._dynamo takes ~1.1 s to import, paid by every candidate start that imports it:
    building the model on the meta device (random inits, rotary frequencies) must not."""
    import subprocess
    import sys

    code = ("import sys; from vibeserve_ray.engine.core.llm_engine import LLMEngine; "
            f"LLMEngine({str(tiny_models[0])!r}, knobs={{'design': {{'scheduler': 'continuous', 'kv_cache': 'slab'}}}}, step_thread=False); "
            "print('torch._dynamo' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "False"
