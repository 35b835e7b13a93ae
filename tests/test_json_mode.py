"""JSON mode: every answer follows its own schema, and equals the reference's constrained
output in every engine design, batched with other schemas, through the HTTP front too."""

from __future__ import annotations

import asyncio
import json
import random
from pathlib import Path

import jsonschema
import openai
import pytest
import torch
from conftest import run_cli, serving

from vibeserve_ray.bench.json_mode import json_request, make_rows, max_document_bytes
from vibeserve_ray.candidate import GenerationRequest, grammar_compiler, response_grammar
from vibeserve_ray.engine import create_engine
from vibeserve_ray.inner.workload import target_workload
from vibeserve_ray.reference import TransformersReference
from vibeserve_ray.serve.front import OpenAIFront
from vibeserve_ray.target import load_target

TARGET = Path(__file__).resolve().parent.parent / "targets" / "tiny-llama-json"
EOS = [1, 4]  # the tiny model's <|end_of_text|> and <|eot_id|>


def schema_format(schema: dict) -> dict:
    return {"type": "json_schema", "json_schema": {"name": "record", "schema": schema}}


PERSON = {"type": "object", "properties": {"name": {"type": "string", "pattern": "^[a-z]{1,6}$"},
                                           "age": {"type": "integer", "minimum": 0, "maximum": 120}},
          "required": ["name", "age"], "additionalProperties": False}
FLAGS = {"type": "object", "properties": {"ok": {"type": "boolean"}, "tags": {"type": "array", "items": {"enum": ["red", "blue"]}, "maxItems": 2}},
         "required": ["ok", "tags"], "additionalProperties": False}
LEVEL = {"type": "object", "properties": {"level": {"enum": ["low", "high"]}}, "required": ["level"], "additionalProperties": False}


def valid_document(tok, token_ids: list[int], schema: dict) -> bool:
    """True when the answer ended at its grammar's stop token with a document valid under `schema`."""
    if not token_ids or token_ids[-1] not in EOS:
        return False
    jsonschema.validate(json.loads(tok.decode(token_ids[:-1])), schema)
    return True


@pytest.fixture(scope="module")
def tokenizer(tiny_models):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_models[0]))


def test_dataset_is_what_the_generator_makes_and_each_request_has_its_own_schema(tiny_models):
    target = load_target(TARGET)
    committed = (TARGET / "dataset.jsonl").read_text()
    assert "".join(row.to_json() + "\n" for row in make_rows(target.tokenizer_dir(), 0, 64)) == committed
    requests = target_workload(target)
    schemas = [r.response_format["json_schema"]["schema"] for r in requests]
    assert len({json.dumps(s, sort_keys=True) for s in schemas}) == len(requests) == 64
    assert all(r.max_tokens == max_document_bytes(s) + 1 for r, s in zip(requests, schemas))


def test_schemas_are_bounded_so_max_tokens_leaves_room_for_a_whole_document(tiny_models, tokenizer):
    """Random walks through each grammar (random logits, no model): every walk ends with a
    stop token within max_tokens, on a document that parses and validates."""
    import xgrammar as xgr

    compiler = grammar_compiler(tiny_models[0])
    gen = torch.Generator().manual_seed(0)
    for i in range(12):
        _, fmt = json_request(random.Random(f"bounded/{i}"))
        schema = fmt["json_schema"]["schema"]
        matcher = xgr.GrammarMatcher(compiler.compile_grammar(response_grammar(fmt)))
        bitmask, tokens = xgr.allocate_token_bitmask(1, 4096), []
        for _ in range(max_document_bytes(schema) + 1):
            matcher.fill_next_token_bitmask(bitmask)
            logits = torch.randn(1, 4096, generator=gen) * 4
            xgr.apply_token_bitmask_inplace(logits, bitmask)
            token = int(torch.multinomial(torch.softmax(logits[0], -1), 1, generator=gen))
            assert matcher.accept_token(token)
            tokens.append(token)
            if matcher.is_terminated():
                break
        assert valid_document(tokenizer, tokens, schema), f"schema {i} ran past max_tokens"


# several schemas in one batch, an unconstrained request beside them, one cut at max_tokens, one sampled
REQUESTS = [
    GenerationRequest([0, 50, 300, 900, 77], 40, stop_token_ids=EOS, response_format=schema_format(PERSON)),
    GenerationRequest([0, 60, 61, 62, 63, 64, 65, 66, 67, 68, 69, 70], 40, stop_token_ids=EOS, response_format=schema_format(FLAGS)),
    GenerationRequest([0, 91, 92], 40, stop_token_ids=EOS, response_format=schema_format(LEVEL)),
    GenerationRequest([0, 50, 300, 901, 78, 79], 8, stop_token_ids=EOS, response_format=schema_format(PERSON)),  # cut at max_tokens
    GenerationRequest([0, 12, 13, 14], 12, stop_token_ids=[]),  # unconstrained
    GenerationRequest([0, 200, 201], 40, temperature=0.8, top_p=0.95, seed=7, stop_token_ids=EOS, response_format=schema_format(FLAGS)),
    GenerationRequest([0, 33, 34, 35], 16, stop_token_ids=EOS, response_format={"type": "json_object"}),
]
DESIGNS = {
    "seed": {},
    "static-slab-jump-forward": {"scheduler": "static", "kv_cache": "slab", "speculation": "jump_forward"},
    "continuous-slab-jump-forward": {"scheduler": "continuous", "kv_cache": "slab", "speculation": "jump_forward"},
    "continuous-paged-prefix-prompt-lookup": {"scheduler": "continuous", "kv_cache": "paged", "prefix_cache": "on",
                                              "speculation": "prompt_lookup"},
    "process-continuous-jump-forward": {"scheduler": "continuous", "kv_cache": "slab", "speculation": "jump_forward", "step_loop": "process"},
}
# small budgets and blocks so chunked prefill, block boundaries and batching all happen
KNOBS = {"max_num_batched_tokens": 8, "block_size": 4, "num_kv_blocks": 256, "max_num_seqs": 4, "max_model_len": 128, "spec_k": 3,
         "spec_ngram": 1, "batch_wait_ms": 20.0, "num_threads": 1, "engine_workers": 2}


@pytest.fixture(scope="module")
def expected(tiny_models):
    ref = TransformersReference(tiny_models[0])
    return [ref.generate(r.prompt_token_ids, r.max_tokens, r.temperature, r.top_p, r.seed, response_format=r.response_format).token_ids
            for r in REQUESTS]


def test_reference_answers_are_valid_documents_or_cut_at_max_tokens(expected, tokenizer):
    for r, want in zip(REQUESTS, expected):
        fmt = r.response_format
        if fmt and fmt["type"] == "json_schema" and len(want) < r.max_tokens:
            assert valid_document(tokenizer, want, fmt["json_schema"]["schema"])
    assert len(expected[3]) == 8 and not valid_document(tokenizer, expected[3], PERSON)  # cut short
    assert valid_document(tokenizer, expected[0], PERSON) and valid_document(tokenizer, expected[1], FLAGS)


@pytest.mark.parametrize("name", list(DESIGNS))
def test_design_gives_the_constrained_reference_answers_under_load(name, tiny_models, expected):
    # predictions that are partly right: prompt-lookup drafts the grammar refuses must never get through
    requests = [r if r.response_format is None else GenerationRequest(**{**r.__dict__, "prediction": want[:3] + [4000] + want[4:]})
                for r, want in zip(REQUESTS, expected)]
    engine = create_engine(str(tiny_models[0]), "cpu", {**KNOBS, "design": DESIGNS[name]})

    async def together():
        async def one(r):
            return [t.token_id async for t in engine.generate(r)]
        return await asyncio.gather(*(one(r) for r in requests))

    try:
        got = asyncio.run(together())
    finally:
        asyncio.run(engine.close())
    assert got == expected


def test_jump_forward_drafts_the_tokens_the_grammar_forces(tiny_models, expected):
    engine = create_engine(str(tiny_models[0]), "cpu", {**KNOBS, "spec_k": 4, "design": {"speculation": "jump_forward"}})
    steps = []
    real_run = engine.runner.run
    engine.runner.run = lambda chunks: steps.append(sum(len(c.draft) for c in chunks)) or real_run(chunks)

    async def one():
        return [t.token_id async for t in engine.generate(REQUESTS[1])]

    try:
        got = asyncio.run(one())
    finally:
        asyncio.run(engine.close())
    assert got == expected[1]
    assert sum(steps) > 0 and len(steps) < len(got)  # drafts were verified, several tokens per step


@pytest.fixture(scope="module")
def json_server(tiny_models):
    """The seed engine behind the front, served by uvicorn on 127.0.0.1 in a thread."""
    engine = create_engine(str(tiny_models[0]), "cpu", {"num_threads": 1})
    with serving(OpenAIFront(engine, tiny_models[0], "tiny")) as url:
        yield openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=60)
    asyncio.run(engine.close())


def test_front_answers_json_mode_on_chat_and_completions(json_server, expected, tokenizer):
    chat = json_server.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Who is it?"}], max_tokens=40,
                                               temperature=0, response_format=schema_format(PERSON))
    jsonschema.validate(json.loads(chat.choices[0].message.content), PERSON)
    assert chat.choices[0].finish_reason == "stop"
    done = json_server.completions.create(model="tiny", prompt=REQUESTS[0].prompt_token_ids, max_tokens=40, temperature=0,
                                          extra_body={"response_format": schema_format(PERSON), "return_token_ids": True})
    choice = done.choices[0]
    assert choice.token_ids == expected[0] and choice.finish_reason == "stop"
    jsonschema.validate(json.loads(choice.text), PERSON)


@pytest.mark.parametrize("fmt, says", [
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nonsense"}}}, "nonsense"),
    ({"type": "json_schema", "json_schema": {"name": "x"}}, "json_schema.schema"),
    ({"type": "yaml"}, "type"),
    ({"type": "json_schema", "json_schema": {"schema": PERSON}}, "name"),  # required, as in OpenAI's API
])
def test_front_refuses_a_format_it_cannot_follow_naming_the_parameter(json_server, fmt, says):
    with pytest.raises(openai.BadRequestError) as err:
        json_server.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=4, response_format=fmt)
    assert err.value.body["param"].startswith("response_format") and says in err.value.body["message"]


@pytest.fixture(scope="module")
def small_json_target(tmp_path_factory) -> Path:
    """The JSON target with 6 of its held-out prompts (the checker's reference is the cost)."""
    import shutil

    dest = tmp_path_factory.mktemp("json-target") / "tiny-llama-json"
    shutil.copytree(TARGET, dest)
    prompts = dest / "checker" / "prompts.jsonl"
    lines = prompts.read_text().splitlines()
    prompts.write_text("\n".join(lines[:5] + lines[-1:]) + "\n")  # the last is the plain json_object one
    return dest


def test_check_and_bench_of_the_json_target_compare_with_the_constrained_reference(tmp_path, tiny_models, small_json_target):
    cand = tmp_path / "cand"
    made = run_cli("candidate", "new", str(cand), "--design", "scheduler=continuous", "kv_cache=slab", "speculation=jump_forward")
    assert made.returncode == 0, made.stderr
    check = run_cli("check", str(small_json_target), "--candidate", str(cand))
    assert check.returncode == 0 and "PASS: 18 sequences" in check.stdout, check.stdout + check.stderr[-2000:]
    out = tmp_path / "bench.json"
    bench = run_cli("bench", str(small_json_target), "--candidate", str(cand), "--num-requests", "6", "--out", str(out))
    assert bench.returncode == 0, bench.stdout + bench.stderr[-2000:]
    data = json.loads(out.read_text())
    assert data["exact_responses"] == "6/6" and data["failed"] == 0
    assert data["total_output_tokens"] < sum(r.max_tokens for r in target_workload(load_target(TARGET), 6))  # grammars ended them


def test_check_fails_an_engine_that_ignores_response_format(tmp_path, tiny_models, small_json_target):
    cand = tmp_path / "unmasked"
    assert run_cli("candidate", "new", str(cand)).returncode == 0
    engine = cand / "engine" / "core" / "llm_engine.py"
    engine.write_text(engine.read_text().replace("if request.response_format is not None:", "if False:"))
    check = run_cli("check", str(small_json_target), "--candidate", str(cand))
    assert check.returncode == 1 and "FAIL" in check.stdout and "sequential greedy" in check.stdout, check.stdout
