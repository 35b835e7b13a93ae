"""The shared OpenAI-compatible front, over real HTTP, with the real `openai` client."""

from __future__ import annotations

import json
import urllib.request

import openai
import pytest

from vibeserve_ray.candidate import import_entrypoint, load_candidate
from vibeserve_ray.serve.front import OpenAIFront


@pytest.fixture(scope="module")
def echo_server(tiny_target, tmp_path_factory):
    """The echo candidate behind the front, served by uvicorn on 127.0.0.1 in a thread."""
    import shutil

    from conftest import TEST_CANDIDATES, serving

    path = tmp_path_factory.mktemp("echo")
    shutil.copytree(TEST_CANDIDATES / "echo", path, dirs_exist_ok=True)
    engine = import_entrypoint(load_candidate(path))(str(tiny_target.model_dir()), "cpu", {"delay_s": 0.002})
    front = OpenAIFront(engine, tiny_target.tokenizer_dir(), "tiny")
    with serving(front) as url:
        yield url, front


def _client(url: str, key: str = "none") -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=20)


def _post(url: str, path: str, body: bytes, headers: dict | None = None) -> tuple[int, dict]:
    req = urllib.request.Request(url + path, data=body, headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=20) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_models_and_health(echo_server):
    url, _ = echo_server
    assert [m.id for m in _client(url).models.list().data] == ["tiny"]
    with urllib.request.urlopen(url + "/health", timeout=5) as r:
        assert r.status == 200


def test_completion_returns_tokens_text_and_usage(echo_server):
    url, front = echo_server
    ids = front.tokenizer.encode("ka to ri ne sa mo")
    out = _client(url).completions.create(model="tiny", prompt=ids, max_tokens=5, temperature=0, logprobs=0, extra_body={"return_token_ids": True, "ignore_eos": True})
    choice = out.choices[0]
    assert choice.model_extra["token_ids"] == (ids * 5)[:5]
    assert choice.text == front.tokenizer.decode((ids * 5)[:5], skip_special_tokens=True)
    assert choice.logprobs.token_logprobs == [-0.5] * 5
    assert choice.finish_reason == "length"
    assert out.usage.prompt_tokens == len(ids) and out.usage.completion_tokens == 5


def test_streaming_completion_sends_chunks_done_and_usage(echo_server):
    url, _ = echo_server
    stream = _client(url).completions.create(model="tiny", prompt="the a of to", max_tokens=6, stream=True, stream_options={"include_usage": True},
                                             extra_body={"ignore_eos": True})
    chunks = list(stream)
    assert sum(1 for c in chunks if c.choices) == 6
    assert chunks[-1].usage.completion_tokens == 6 and not chunks[-1].choices


def test_stop_string_truncates_text(echo_server):
    url, front = echo_server
    ids = front.tokenizer.encode("alpha beta gamma", add_special_tokens=False)
    out = _client(url).completions.create(model="tiny", prompt=ids, max_tokens=12, stop=[" gamma"], extra_body={"ignore_eos": True})
    assert out.choices[0].text == "alpha beta"
    assert out.choices[0].finish_reason == "stop"


def test_eos_ends_generation_unless_ignored(echo_server):
    url, front = echo_server
    eos = front.eos_token_ids[0]
    ids = [front.tokenizer.encode("x y", add_special_tokens=False)[0], eos]
    out = _client(url).completions.create(model="tiny", prompt=ids, max_tokens=8, extra_body={"return_token_ids": True})
    assert out.choices[0].model_extra["token_ids"] == ids and out.choices[0].finish_reason == "stop"
    out = _client(url).completions.create(model="tiny", prompt=ids, max_tokens=8, extra_body={"return_token_ids": True, "ignore_eos": True})
    assert len(out.choices[0].model_extra["token_ids"]) == 8


def test_streaming_chat_uses_chat_template_and_streams_incrementally(echo_server):
    url, _ = echo_server
    stream = _client(url).chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=4, stream=True,
                                                  extra_body={"ignore_eos": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason == "length"
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text.startswith("<|begin_of_text|>") is False  # special tokens are not shown
    full = _client(url).chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=4, extra_body={"ignore_eos": True})
    assert full.choices[0].message.content == text
    assert full.usage.prompt_tokens > 5  # the template wrapped the message


@pytest.mark.parametrize(
    "body,status",
    [
        (b"{not json", 400),
        (json.dumps({"model": "tiny", "prompt": "x", "max_tokens": "many"}).encode(), 400),
        (json.dumps({"model": "tiny", "prompt": "x", "max_tokens": 0}).encode(), 400),
        (json.dumps({"model": "tiny", "prompt": "x", "max_tokens": -3}).encode(), 400),
        (json.dumps({"model": "tiny", "prompt": "x", "max_tokens": 100000}).encode(), 400),
        (json.dumps({"model": "tiny", "prompt": [99999999], "max_tokens": 2}).encode(), 400),
        (json.dumps({"model": "tiny", "prompt": "x", "temperature": -1}).encode(), 400),
        (json.dumps({"model": "tiny", "prompt": "x", "n": 2}).encode(), 400),
        (json.dumps({"model": "nope", "prompt": "x"}).encode(), 404),
        (json.dumps({"prompt": "x"}).encode(), 400),
        (b'{"model": "tiny", "prompt": "\xff\xfe"}', 400),
        (b"[1, 2]", 400),
    ],
)
def test_bad_requests_get_openai_shaped_4xx(echo_server, body, status):
    url, _ = echo_server
    code, data = _post(url, "/v1/completions", body)
    assert code == status
    assert set(data["error"]) >= {"message", "type", "code"} and data["error"]["message"]
    assert _post(url, "/v1/completions", json.dumps({"model": "tiny", "prompt": "x", "max_tokens": 1}).encode())[0] == 200


@pytest.mark.parametrize("path,extra,param", [
    ("/v1/completions", {"logit_bias": {"5": 10}}, "logit_bias"),
    ("/v1/completions", {"presence_penalty": 0.5}, "presence_penalty"),
    ("/v1/completions", {"best_of": 3}, "best_of"),
    ("/v1/completions", {"suffix": " end"}, "suffix"),
    ("/v1/completions", {"top_k": 5}, "top_k"),
    ("/v1/completions", {"response_format": {"type": "json_object"}}, "response_format"),
    ("/v1/completions", {"max_tokens": 0}, "max_tokens"),
    ("/v1/chat/completions", {"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
    ("/v1/chat/completions", {"tool_choice": "required"}, "tool_choice"),
    ("/v1/chat/completions", {"functions": [{"name": "f"}]}, "functions"),
    ("/v1/chat/completions", {"frequency_penalty": -1}, "frequency_penalty"),
    ("/v1/chat/completions", {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}}, "response_format"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
     "messages.0.content.0.type"),
    # what this test engine lacks (the seed engine has both): refused, not answered with made-up numbers
    ("/v1/completions", {"logprobs": 2}, "logprobs"),
    ("/v1/completions", {"echo": True, "logprobs": 0}, "echo"),
    ("/v1/chat/completions", {"logprobs": True, "top_logprobs": 3}, "top_logprobs"),
])
def test_unsupported_parameters_are_refused_with_a_400_naming_them(echo_server, path, extra, param):
    url, _ = echo_server
    base = {"model": "tiny", "prompt": "x"} if path == "/v1/completions" else {"model": "tiny", "messages": [{"role": "user", "content": "x"}]}
    code, data = _post(url, path, json.dumps(base | extra).encode())
    assert code == 400 and data["error"]["param"] == param, data
    ok = base | {"max_tokens": 1, "user": "someone", "n": 1, "logit_bias": {}, "presence_penalty": 0, "response_format": {"type": "text"}}
    assert _post(url, path, json.dumps(ok).encode())[0] == 200  # neutral values and metadata are fine


def test_unknown_routes_and_methods_get_openai_shaped_errors(echo_server):
    url, _ = echo_server
    for method, path, status in [("GET", "/v1/nothing", 404), ("GET", "/v1/completions", 405)]:
        try:
            urllib.request.urlopen(urllib.request.Request(url + path, method=method), timeout=10)
        except urllib.error.HTTPError as e:
            assert e.code == status and json.loads(e.read())["error"]["code"] == status
        else:
            raise AssertionError(f"{method} {path} succeeded")


def test_echo_with_max_tokens_0_returns_only_the_prompt(echo_server):
    url, front = echo_server
    out = _client(url).completions.create(model="tiny", prompt="alpha beta", max_tokens=0, echo=True)
    assert out.choices[0].text == "alpha beta" and out.usage.completion_tokens == 0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_streamed_text_equals_the_whole_output_decoded(tiny_target, seed):
    """Incremental detokenising, a token at a time (special tokens, stray bytes and all),
    adds up to decoding the whole output at once, with or without the Python wrapper."""
    import random

    from transformers import AutoTokenizer

    from vibeserve_ray.serve.front import _Detokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_target.tokenizer_dir()))
    ids = random.Random(seed).choices(range(len(tok)), k=80)
    for tokenizer in (tok, type("Slow", (), {"decode": tok.decode})()):
        detok = _Detokenizer(tokenizer, [])
        text = "".join(detok.push([t], final=i == len(ids) - 1)[0] for i, t in enumerate(ids))
        assert text == tok.decode(ids, skip_special_tokens=True)


@pytest.mark.parametrize("generator", ["tiny-llama", "tiny-olmo-hybrid"])
def test_load_tokenizer_gives_what_autotokenizer_gives_without_its_class_lookup(generator):
    """A plain tokenizer.json loads as PreTrainedTokenizerFast directly (a second off each
    candidate start): the same tokens, chat template, special ids and text as AutoTokenizer."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    from vibeserve_ray.candidate import load_tokenizer
    from vibeserve_ray.generators import make_checkpoint

    model = make_checkpoint(generator, 0)
    ours, auto = load_tokenizer(model), AutoTokenizer.from_pretrained(str(model))
    assert isinstance(ours, PreTrainedTokenizerFast)
    text = "Hello, world: the café at 12:30 \u2014 naïve résumé"
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": text}]
    assert ours(text).input_ids == auto(text).input_ids
    assert ours.apply_chat_template(messages, add_generation_prompt=True) == auto.apply_chat_template(messages, add_generation_prompt=True)
    assert (ours.eos_token_id, ours.bos_token_id, ours.all_special_ids, len(ours)) == (auto.eos_token_id, auto.bos_token_id, auto.all_special_ids, len(auto))
    ids = auto(text).input_ids
    assert ours.decode(ids) == auto.decode(ids)
