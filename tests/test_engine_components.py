"""Every engine component against transformers, alone and together, under concurrency.

The model is the small random Llama of test_engine (peaked logits, so greedy has no
near-ties); each design gets the same mixed batch of greedy and seeded requests at
once, and must produce exactly the tokens of transformers (greedy) or of the contract's
sampling rule on transformers' logits (seeded).
"""

from __future__ import annotations

import asyncio

import pytest
import torch

from test_engine import PROMPTS, collect, hf_greedy, hf_sampled, run
from vibeserve_ray.candidate import GenerationRequest
from vibeserve_ray.engine import create_engine
from vibeserve_ray.engine.config import EngineConfig
from vibeserve_ray.engine.core.batch import padded_rows
from vibeserve_ray.engine.core.block_pool import BlockPool
from vibeserve_ray.engine.core.llm_engine import LLMEngine
from vibeserve_ray.engine.core.sequence import Sequence
from vibeserve_ray.engine.core.speculation import propose
from vibeserve_ray.engine.space import read_space

SHARED = list(range(200, 240))  # a 40-token shared prefix (2.5 blocks of 16)
MIXED = [
    GenerationRequest(PROMPTS[0], max_tokens=12),
    GenerationRequest(PROMPTS[2], max_tokens=20),
    GenerationRequest(SHARED + [5, 6], max_tokens=10),
    GenerationRequest(SHARED + [9], max_tokens=10),
    GenerationRequest(PROMPTS[1], max_tokens=16, temperature=0.8, top_p=0.9, seed=1234),
    GenerationRequest(PROMPTS[1] + [3, 3, 3], max_tokens=9, temperature=1.0, seed=7),
]

DESIGNS = {
    "serial-slab": {"scheduler": "serial", "kv_cache": "slab"},
    "serial-paged-eager": {"scheduler": "serial", "kv_cache": "paged", "attention": "eager"},
    "static-slab": {"scheduler": "static", "kv_cache": "slab"},
    "static-paged": {"scheduler": "static", "kv_cache": "paged"},
    "continuous-slab": {"scheduler": "continuous", "kv_cache": "slab"},
    "continuous-slab-decode-kernel": {"scheduler": "continuous", "kv_cache": "slab", "attention": "decode_kernel"},
    "continuous-paged-prefix": {"scheduler": "continuous", "kv_cache": "paged", "prefix_cache": "on"},
    "continuous-paged-spec-eager": {"scheduler": "continuous", "kv_cache": "paged", "speculation": "prompt_lookup", "attention": "eager"},
    "serial-dynamic-spec": {"speculation": "prompt_lookup"},
    "everything": {"scheduler": "continuous", "kv_cache": "paged", "prefix_cache": "on", "speculation": "prompt_lookup",
                   "attention": "decode_kernel", "linear": "onednn"},  # oneDNN linears: steps at padded row counts
}
# small budgets and blocks so chunked prefill, block boundaries and batching all happen
KNOBS = {"max_num_batched_tokens": 24, "block_size": 8, "num_kv_blocks": 96, "max_num_seqs": 4, "max_model_len": 128, "spec_k": 3,
         "spec_ngram": 1, "batch_wait_ms": 20.0}


@pytest.fixture(scope="module")
def expected(hf_model):
    out = []
    for r in MIXED:
        if r.temperature == 0:
            out.append(hf_greedy(hf_model, r.prompt_token_ids, r.max_tokens)[0])
        else:
            out.append(hf_sampled(hf_model, r.prompt_token_ids, r.max_tokens, r.temperature, r.top_p, r.seed))
    return out


async def _together(engine, requests):
    return await asyncio.gather(*(collect(engine, r) for r in requests))


@pytest.mark.parametrize("name", list(DESIGNS))
def test_design_is_exact_under_concurrency(name, model_dir, expected):
    engine = create_engine(str(model_dir), "cpu", {**KNOBS, "design": DESIGNS[name]})
    try:
        got = asyncio.run(_together(engine, MIXED))
        again = asyncio.run(_together(engine, MIXED))  # second pass: prefix cache hits, reused slots/blocks
    finally:
        asyncio.run(engine.close())
    assert [[o.token_id for o in outs] for outs in got] == expected
    assert [[o.token_id for o in outs] for outs in again] == expected


# prompts to score, longer than a prefill chunk and sharing the cached prefix of MIXED
SCORED = [
    GenerationRequest(SHARED + [5, 6], max_tokens=3, want_logprobs=True, top_logprobs=2, prompt_logprobs=True),
    GenerationRequest(PROMPTS[2], max_tokens=1, prompt_logprobs=True),
]


@pytest.fixture(scope="module")
def reference(model_dir):
    from vibeserve_ray.reference import TransformersReference

    return TransformersReference(model_dir)


@pytest.mark.parametrize("name", list(DESIGNS))
def test_prompt_logprobs_equal_the_reference_in_every_design(name, model_dir, hf_model, reference, expected):
    engine = create_engine(str(model_dir), "cpu", {**KNOBS, "design": DESIGNS[name]})
    try:
        asyncio.run(_together(engine, MIXED))  # a prefix cache now holds SHARED: scoring must not skip it
        got = asyncio.run(_together(engine, SCORED + MIXED))
    finally:
        asyncio.run(engine.close())
    assert [[o.token_id for o in outs] for outs in got[len(SCORED):]] == expected  # the requests batched with them are unchanged
    for request, outs in zip(SCORED, got):
        n = len(request.prompt_token_ids)
        prompt, generated = outs[:n], outs[n:]
        assert [o.token_id for o in prompt] == request.prompt_token_ids and prompt[0].logprob is None
        want = reference.score(request.prompt_token_ids)
        assert max(abs(o.logprob - w) for o, w in zip(prompt[1:], want[1:])) < 1e-4
        assert [o.token_id for o in generated] == hf_greedy(hf_model, request.prompt_token_ids, request.max_tokens)[0]
        for o in outs[1:] if request.top_logprobs else ():
            (best, best_lp), (_, second_lp) = o.top_logprobs
            assert best_lp >= second_lp and best_lp >= o.logprob - 1e-6
        assert all(o.top_logprobs is None for o in outs) or request.top_logprobs


def test_prefix_cache_reuses_shared_blocks_and_evicts_lru(model_dir, hf_model):
    engine = create_engine(str(model_dir), "cpu", {**KNOBS, "num_kv_blocks": 12, "max_num_seqs": 1,
                                                  "design": {"scheduler": "continuous", "kv_cache": "paged", "prefix_cache": "on"}})
    pool = engine.runner.cache.pool
    try:
        first = run(engine, GenerationRequest(SHARED + [1], max_tokens=4))
        assert pool.hit_tokens == 0
        second = run(engine, GenerationRequest(SHARED + [2], max_tokens=4))
        assert pool.hit_tokens == 40  # 5 full blocks of 8 shared tokens
        # needs 11 of 12 blocks: evicts 4 of the 5 cached prefix blocks, tail first
        run(engine, GenerationRequest(list(range(300, 380)), max_tokens=4))
        third = run(engine, GenerationRequest(SHARED + [2], max_tokens=4))
        assert pool.hit_tokens == 40 + 8  # only the head block survived
    finally:
        asyncio.run(engine.close())
    assert [o.token_id for o in first] == hf_greedy(hf_model, SHARED + [1], 4)[0]
    assert [o.token_id for o in second] == [o.token_id for o in third] == hf_greedy(hf_model, SHARED + [2], 4)[0]
    assert all(r == 0 for r in pool.ref)


def test_block_pool_refcounts_and_waits_when_full():
    pool = BlockPool(num_blocks=4, block_size=4, prefix_caching=True)
    a = Sequence(GenerationRequest(list(range(9)), max_tokens=3), 0)
    assert pool.allocate(a, 12) and len(a.block_table) == 3
    a.num_cached = 9
    pool.commit(a)  # its two full prompt blocks are named
    shared = a.block_table[:2]
    b = Sequence(GenerationRequest(list(range(9)) + [50], max_tokens=6), 0)
    assert not pool.allocate(b, 16)  # 2 shared + 2 new, but only 1 block is free
    assert b.block_table == [] and pool.ref[shared[0]] == 1
    pool.release(a)
    assert pool.allocate(b, 16) and b.num_cached == 8 and b.block_table[:2] == shared
    assert all(pool.ref[x] == 1 for x in b.block_table) and not pool.free and not pool.lru


def test_prompt_lookup_drafts_from_prediction_then_prompt():
    seq = Sequence(GenerationRequest([1, 2, 3, 4, 5], max_tokens=10, prediction=[7, 8, 9, 3, 4, 11, 12, 13]), 0)
    seq.token_ids += [3, 4]
    assert propose(seq, "prompt_lookup", 3, 2) == [11, 12, 13]
    seq2 = Sequence(GenerationRequest([1, 2, 3, 4, 5, 6], max_tokens=10), 0)
    seq2.token_ids += [2, 3]
    assert propose(seq2, "prompt_lookup", 2, 2) == [4, 5]
    seq3 = Sequence(GenerationRequest([1, 2, 3, 4, 5, 6], max_tokens=2), 0)
    seq3.token_ids += [2, 3]
    assert propose(seq3, "prompt_lookup", 4, 2) == []  # one token left: nothing to draft


def test_speculation_with_a_correct_prediction_takes_fewer_steps(model_dir, hf_model):
    want = hf_greedy(hf_model, PROMPTS[2], 24)[0]
    engine = create_engine(str(model_dir), "cpu", {"spec_k": 4, "design": {"speculation": "prompt_lookup"}})
    steps = []
    real_run = engine.runner.run
    engine.runner.run = lambda chunks: steps.append(len(chunks)) or real_run(chunks)
    try:
        outs = run(engine, GenerationRequest(PROMPTS[2], max_tokens=24, prediction=want, want_logprobs=True))
        wrong = run(engine, GenerationRequest(PROMPTS[2], max_tokens=24, prediction=[(t + 1) % 512 for t in want]))
    finally:
        asyncio.run(engine.close())
    assert [o.token_id for o in outs] == want == [o.token_id for o in wrong]
    assert all(o.logprob is not None for o in outs)
    assert len(steps) < 24 + 24  # the correct prediction verified several tokens per step


def test_compiled_decode_is_exact(model_dir, hf_model):
    engine = create_engine(str(model_dir), "cpu", {**KNOBS, "design": {"scheduler": "continuous", "kv_cache": "paged", "compile": "on"}})
    try:
        got = asyncio.run(_together(engine, MIXED[:3]))
    finally:
        asyncio.run(engine.close())
    assert [[o.token_id for o in outs] for outs in got] == [hf_greedy(hf_model, r.prompt_token_ids, r.max_tokens)[0] for r in MIXED[:3]]


@pytest.mark.parametrize("kv_cache", ["slab", "paged"])
def test_padded_steps_are_warmed_up_at_load_and_leave_the_cache_as_it_was(model_dir, kv_cache):
    """With oneDNN linears every step runs at a padded row count (batch.padded_rows); the
    engine runs one dummy prompt per count at load and frees it."""
    engine = LLMEngine(str(model_dir), knobs={**KNOBS, "design": {"scheduler": "continuous", "kv_cache": kv_cache, "linear": "onednn"}},
                       step_thread=False)
    assert engine.runner.pad and not LLMEngine(str(model_dir), knobs={**KNOBS, "design": DESIGNS["continuous-slab"]}, step_thread=False).runner.pad
    assert [padded_rows(n) for n in (1, 16, 17, 24, 512, 513, 2048)] == [16, 16, 32, 32, 512, 640, 2048]
    assert engine.runner.warm_up(40) == 3  # 16, 32 and 48 rows
    cache = engine.scheduler.cache
    if kv_cache == "slab":
        assert sorted(cache.free_slots) == list(range(cache.num_slots))
    else:
        assert all(r == 0 for r in cache.pool.ref)


def test_request_too_long_for_the_slab_is_refused(model_dir):
    engine = create_engine(str(model_dir), "cpu", {**KNOBS, "design": {"scheduler": "continuous", "kv_cache": "slab"}})
    try:
        with pytest.raises(ValueError, match="max_model_len"):
            run(engine, GenerationRequest(PROMPTS[2], max_tokens=100))
        assert len(run(engine, GenerationRequest(PROMPTS[0], max_tokens=3))) == 3
    finally:
        asyncio.run(engine.close())


@pytest.mark.parametrize("design,match", [
    ({"scheduler": "continuous"}, "kv_cache"),
    ({"prefix_cache": "on", "kv_cache": "slab"}, "paged"),
    ({"attention": "flashinfer"}, "design.attention = 'flashinfer' runs only on cuda"),
    ({"scheduler": "round-robin"}, "design.scheduler"),
])
def test_unsupported_design_fails_at_start_with_the_choice_named(model_dir, design, match):
    with pytest.raises(ValueError, match=match):
        create_engine(str(model_dir), "cpu", {"design": design})


def test_engine_reads_its_design_from_the_candidate_toml(tmp_path):
    from vibeserve_ray.seed import materialise_seed

    cand = materialise_seed(tmp_path / "c", design={"scheduler": "continuous", "kv_cache": "paged"})
    import subprocess
    import sys

    code = ("import sys; sys.path.insert(0, sys.argv[1]); from engine.config import EngineConfig; from engine.space import read_space; "
            "c = EngineConfig.resolve({}, read_space('llama'), 'cpu'); print(c.scheduler, c.kv_cache)")
    out = subprocess.run([sys.executable, "-c", code, str(cand)], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["continuous", "paged"]
    assert EngineConfig.resolve({}, read_space("llama"), "cpu").scheduler == "serial"  # the package itself: the seed


def test_engine_takes_options_defaults_and_rules_from_its_own_space_file(tmp_path):
    """A candidate's engine reads the copy of the space it carries: an edit there is all it takes."""
    import subprocess
    import sys

    from vibeserve_ray.seed import materialise_seed

    cand = materialise_seed(tmp_path / "c")
    space = cand / "engine" / "models" / "llama.toml"
    text = space.read_text()
    for old, new in [('options = ["sdpa", "eager", "flashinfer", "decode_kernel"]', 'options = ["sdpa", "flashinfer"]\nrequires.sdpa = { compile = ["off"] }'),
                     ("high = 64\ndefault = 16", "high = 64\ndefault = 3")]:
        assert old in text
        text = text.replace(old, new)
    space.write_text(text)
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from engine.config import EngineConfig; from engine.space import read_space\n"
            "def resolve(design):\n"
            "    try: return EngineConfig.resolve({'design': design}, read_space('llama'), 'cpu').max_num_seqs\n"
            "    except ValueError as e: return str(e)\n"
            "for d in ({}, {'attention': 'eager'}, {'compile': 'on'}): print(resolve(d))")
    out = subprocess.run([sys.executable, "-c", code, str(cand)], capture_output=True, text=True, check=True).stdout.splitlines()
    assert out == ["3", "design.attention = 'eager': expected one of sdpa, flashinfer",
                   "design.attention = 'sdpa' requires compile in [off], got 'on'"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_flashinfer_backend_matches_sdpa_on_gpu(model_dir, hf_model):
    pytest.importorskip("flashinfer")
    engine = create_engine(str(model_dir), "cuda", {**KNOBS, "design": {"scheduler": "continuous", "kv_cache": "paged", "attention": "flashinfer"}})
    try:
        got = asyncio.run(_together(engine, MIXED[:3]))
    finally:
        asyncio.run(engine.close())
    assert [[o.token_id for o in outs] for outs in got] == [hf_greedy(hf_model, r.prompt_token_ids, r.max_tokens)[0] for r in MIXED[:3]]


def test_process_step_loop_with_two_workers_is_exact_and_survives_a_lost_worker(model_dir, expected):
    """`step_loop = process`: requests shared out to two engine processes give the tokens of
    the thread loop; a worker killed mid-stream fails its requests instead of hanging them."""
    import os
    import signal

    engine = create_engine(str(model_dir), "cpu", {**KNOBS, "engine_workers": 2, "num_threads": 1,
                                                   "design": {**DESIGNS["continuous-slab"], "step_loop": "process"}})
    try:
        got = asyncio.run(_together(engine, MIXED))
        assert [[o.token_id for o in outs] for outs in got] == expected
        assert all(w.proc.poll() is None for w in engine.workers)

        async def lose_a_worker():
            stream = engine.generate(GenerationRequest(PROMPTS[0], max_tokens=100))
            await stream.__anext__()
            busy = next(w for w in engine.workers if w.active)
            os.kill(busy.proc.pid, signal.SIGKILL)
            with pytest.raises(RuntimeError, match="engine worker"):
                async for _ in stream:
                    pass

        asyncio.run(asyncio.wait_for(lose_a_worker(), 60))
    finally:
        asyncio.run(engine.close())
