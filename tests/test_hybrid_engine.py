"""The Olmo-Hybrid family against transformers on a small random OlmoHybrid (RoPE on, more
value heads than key heads): every design point exact alone and under concurrency; prefix
snapshots resume exactly at every block boundary and where a prompt leaves a cached block;
snapshot names carry the checkpoint; the delta rule's forms agree; the family is chosen by
the checkpoint, and `candidate new --family` writes a point of its space."""

from __future__ import annotations

import asyncio
import tomllib

import pytest
import torch
from conftest import run_cli
from transformers import OlmoHybridConfig, OlmoHybridForCausalLM

from vibeserve_ray.candidate import GenerationRequest
from vibeserve_ray.design_space import load_space
from vibeserve_ray.engine.core.llm_engine import LLMEngine
from vibeserve_ray.engine.core.prefix_snapshots import PrefixSnapshots
from vibeserve_ray.engine.layers import gated_delta
from vibeserve_ray.engine.models import FAMILIES, load_family
from vibeserve_ray.engine.models.loader import checkpoint_identity
from vibeserve_ray.engine.space import family_of, space_path
from vibeserve_ray.reference import reference_outputs

BLOCK = 64  # the smallest snapshot interval of the space: prefixes span several blocks at little cost
SEED_DESIGN = load_space(space_path("olmo_hybrid")).defaults()[0]
DESIGNS = {  # the seed, and each design point on top of the one before
    "seed": {},
    "chunked-rule": {"delta_rule": "chunked"},
    "slots": {"kv_cache": "slab", "delta_rule": "chunked"},
    "continuous": {"scheduler": "continuous", "kv_cache": "slab"},
    "snapshots": {"scheduler": "continuous", "kv_cache": "slab", "delta_rule": "chunked", "prefix_cache": "on"},
    "in-place": {"scheduler": "continuous", "kv_cache": "slab", "delta_rule": "chunked", "prefix_cache": "on", "state_update": "inplace"},
}
# small enough that prompts are fed in several chunks, cut between snapshot boundaries, and requests queue for a slot
KNOBS = {"num_threads": 1, "max_num_seqs": 3, "max_num_batched_tokens": 50, "block_size": BLOCK, "max_model_len": 512}


def make_hf_hybrid(seed: int):
    torch.manual_seed(seed)
    config = OlmoHybridConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                              num_key_value_heads=2, linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=16,
                              linear_value_head_dim=32, max_position_embeddings=1024, pad_token_id=0, eos_token_id=1)
    model = OlmoHybridForCausalLM(config).eval()
    with torch.no_grad():  # peaked logits: greedy has no near-ties to trip over
        model.lm_head.weight.mul_(30)
    return model


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)  # the engines below set one (a busy 2-core machine runs small ops faster on one)


@pytest.fixture(scope="module")
def hf_hybrid():
    return make_hf_hybrid(0)


@pytest.fixture(scope="module")
def hybrid_dir(hf_hybrid, tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-hybrid")
    hf_hybrid.save_pretrained(path)
    return path


def prompts(seed: int, *lengths: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(2, 512, (n,), generator=g).tolist() for n in lengths]


def hf_greedy(model, prompt: list[int], max_tokens: int) -> tuple[list[int], list[float]]:
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt]), max_new_tokens=max_tokens, min_new_tokens=max_tokens, do_sample=False,
                             pad_token_id=0, output_logits=True, return_dict_in_generate=True)
    tokens = out.sequences[0, len(prompt):].tolist()
    return tokens, [float(torch.log_softmax(step[0].float(), -1)[t]) for step, t in zip(out.logits, tokens)]


def generate(engine, batch: list[list[int]], max_tokens: int) -> list[tuple[list[int], list[float]]]:
    async def one(prompt):
        outs = [o async for o in engine.generate(GenerationRequest(prompt, max_tokens=max_tokens, want_logprobs=True))]
        return [o.token_id for o in outs], [o.logprob for o in outs]

    async def together():
        return await asyncio.gather(*(one(p) for p in batch))

    return asyncio.run(together())


def engine_of(model_dir, design: dict, **knobs) -> LLMEngine:
    return LLMEngine(str(model_dir), "cpu", {"design": {**SEED_DESIGN, **design}, **KNOBS, **knobs})


@pytest.mark.parametrize("name", DESIGNS)
def test_design_matches_transformers_alone_and_under_concurrency(hybrid_dir, hf_hybrid, name):
    batch = prompts(1, 1, 7, 65, 130, 200)
    want = [hf_greedy(hf_hybrid, p, 12) for p in batch]
    engine = engine_of(hybrid_dir, DESIGNS[name])
    try:
        alone = [generate(engine, [p], 12)[0] for p in batch[:2]]
        together = generate(engine, batch, 12)
    finally:
        asyncio.run(engine.close())
    for (tokens, logprobs), (want_tokens, want_logprobs) in zip(alone + together, want[:2] + want):
        assert tokens == want_tokens
        assert max(abs(a - b) for a, b in zip(logprobs, want_logprobs)) < 1e-4


def test_delta_rule_forms_agree_and_the_in_place_step_keeps_idle_rows():
    g = torch.Generator().manual_seed(0)
    T, hk, hv, dk, dv = 130, 2, 4, 16, 32  # two 64-token chunks and a partial one
    q, k = torch.randn(T, hk, dk, generator=g), torch.randn(T, hk, dk, generator=g)
    v, beta = torch.randn(T, hv, dv, generator=g), torch.rand(T, hv, generator=g) * 2
    decay = -torch.rand(T, hv, generator=g)
    state = torch.randn(hv, dk, dv, generator=g)
    out_c, s_c = gated_delta.chunked_delta_rule(q, k, v, decay, beta, state)
    out_r, s_r = gated_delta.recurrent_delta_scan(q, k, v, decay, beta, state)
    assert torch.allclose(out_c, out_r, atol=1e-4) and torch.allclose(s_c, s_r, atol=1e-4)
    states = torch.randn(3, hv, dk, dv, generator=g)
    out, new = gated_delta.recurrent_delta_rule(q[:3], k[:3], v[:3], decay[:3], beta[:3], states)
    idle = decay[:3].clone()
    idle[1], b = 0.0, beta[:3].clone()
    b[1] = 0.0
    in_place = states.clone()
    out_i = gated_delta.recurrent_delta_rule_(q[:3], k[:3], v[:3], idle, b, in_place)
    assert torch.equal(in_place[1], states[1])  # g = 0, beta = 0: the row rides along unchanged
    assert torch.allclose(in_place[[0, 2]], new[[0, 2]], atol=1e-6) and torch.allclose(out_i[[0, 2]], out[[0, 2]], atol=1e-6)


@pytest.fixture(scope="module")
def shared():
    """A 256-token prefix (4 blocks) and tails that leave it at each boundary or inside a block."""
    return prompts(7, 4 * BLOCK + 40)[0], prompts(8, 30, 30, 30, 30, 30)


def test_snapshots_equal_recomputation_at_every_block_boundary(hybrid_dir, shared):
    prefix, tails = shared
    recompute = engine_of(hybrid_dir, DESIGNS["continuous"])
    snapshots = engine_of(hybrid_dir, DESIGNS["snapshots"])
    try:
        generate(snapshots, [prefix], 4)  # fills the store: boundaries 64 .. 256
        store = snapshots.runner.cache.snapshots
        assert len(store.entries) == 4
        for b, tail in zip(range(BLOCK, 4 * BLOCK + 1, BLOCK), tails):
            prompt = prefix[:b] + tail
            before = store.hit_tokens
            got, want = generate(snapshots, [prompt], 12)[0], generate(recompute, [prompt], 12)[0]
            assert store.hit_tokens - before == b  # resumed at the boundary: only the tail was computed
            assert got[0] == want[0] and max(abs(x - y) for x, y in zip(got[1], want[1])) < 1e-5, b
    finally:
        asyncio.run(snapshots.close())
        asyncio.run(recompute.close())


@pytest.mark.parametrize("leave_at, resume_at", [(BLOCK + 37, BLOCK), (3 * BLOCK + 1, 3 * BLOCK), (5, 0)])
def test_a_prompt_that_leaves_the_prefix_inside_a_cached_block_is_exact(hybrid_dir, hf_hybrid, shared, leave_at, resume_at):
    prefix, tails = shared
    engine = engine_of(hybrid_dir, DESIGNS["in-place"])
    try:
        generate(engine, [prefix], 2)
        store = engine.runner.cache.snapshots
        prompt = prefix[:leave_at] + tails[0]
        before = store.hit_tokens
        got = generate(engine, [prompt, prefix[:leave_at] + tails[1]], 12)[0]
        assert store.hit_tokens - before >= resume_at and (store.hit_tokens - before) % BLOCK == 0
        want = hf_greedy(hf_hybrid, prompt, 12)
        assert got[0] == want[0] and max(abs(x - y) for x, y in zip(got[1], want[1])) < 1e-4
    finally:
        asyncio.run(engine.close())


def test_snapshot_names_carry_the_checkpoint(hybrid_dir, tmp_path):
    tokens = list(range(3 * BLOCK))
    same, other = PrefixSnapshots("weights-a", BLOCK, 8), PrefixSnapshots("weights-b", BLOCK, 8)
    assert same.names(tokens) == PrefixSnapshots("weights-a", BLOCK, 8).names(tokens) and len(same.names(tokens)) == 3
    assert not set(same.names(tokens)) & set(other.names(tokens))
    swapped = tmp_path / "swapped"
    make_hf_hybrid(1).save_pretrained(swapped)
    assert checkpoint_identity(hybrid_dir) != checkpoint_identity(swapped)  # the engine names its snapshots with this


def test_only_the_attention_layers_keep_keys_and_values(hybrid_dir):
    engine = LLMEngine(str(hybrid_dir), "cpu", {"design": DESIGNS["snapshots"], **KNOBS}, step_thread=False)
    cache = engine.runner.cache
    assert len(cache.kv.keys) == 1 == engine.config.num_attention_layers  # 1 of 4 layers is full attention
    assert cache.states.all.recurrent.shape == (3, KNOBS["max_num_seqs"], 4, 16, 32)  # 3 linear layers, a slot each


def test_the_reference_runs_the_hybrid_and_caches_by_checkpoint(hybrid_dir, hf_hybrid, tmp_path):
    batch = prompts(3, 9, 70)
    refs = reference_outputs("transformers", hybrid_dir, "float32", batch, 10, cache_root=tmp_path)
    assert [r.token_ids for r in refs] == [hf_greedy(hf_hybrid, p, 10)[0] for p in batch]
    swapped = tmp_path / "swapped"
    make_hf_hybrid(1).save_pretrained(swapped)
    other = reference_outputs("transformers", swapped, "float32", batch, 10, cache_root=tmp_path)
    assert [r.token_ids for r in other] != [r.token_ids for r in refs]
    assert len(list((tmp_path / "reference").iterdir())) == 4  # one answer per prompt and checkpoint


def test_the_checkpoint_picks_the_family_and_candidate_new_writes_its_seed(hybrid_dir, tmp_path):
    assert family_of(hybrid_dir) == "olmo_hybrid" and load_family(hybrid_dir)[0] is FAMILIES["olmo_hybrid"]
    assert sorted(FAMILIES) == sorted(f.name for f in FAMILIES.values())  # keyed by model_type, which names the family
    result = run_cli("candidate", "new", str(tmp_path / "cand"), "--family", "olmo_hybrid", "--design", "prefix_cache=on",
                     "kv_cache=slab", timeout=60)
    assert result.returncode == 0, result.stderr
    written = tomllib.loads((tmp_path / "cand" / "candidate.toml").read_text())
    assert written["design"] == {**SEED_DESIGN, "prefix_cache": "on", "kv_cache": "slab"}
    refused = run_cli("candidate", "new", str(tmp_path / "spec"), "--family", "olmo_hybrid", "--design", "speculation=prompt_lookup", timeout=60)
    assert refused.returncode == 2 and "design.speculation" in refused.stderr  # a recurrent state cannot roll back a draft
