"""The API every candidate serves, on the seed engine's own process (every component on)
over real HTTP: its published schema, prompt scoring against the reference, fuzzing
from the schema, and a short soak."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request

import pytest
from conftest import ROOT

from vibeserve_ray.candidate import load_candidate
from vibeserve_ray.runner import Limits, start_candidate
from vibeserve_ray.seed import materialise_seed

EVERYTHING = {"scheduler": "continuous", "kv_cache": "paged", "prefix_cache": "on", "speculation": "prompt_lookup"}


@pytest.fixture(scope="module")
def server(tiny_target, tmp_path_factory):
    """The seed engine at EVERYTHING behind the front, as the evaluator runs it."""
    work = tmp_path_factory.mktemp("api")
    spec = load_candidate(materialise_seed(work / "seed", EVERYTHING, {"max_num_batched_tokens": 64}))
    model = tiny_target.model_dir()
    with start_candidate(spec, model, tiny_target.tokenizer_dir(), tiny_target.name, "cpu", Limits(), work / "engine") as proc:
        yield proc


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as r:
        return json.loads(r.read())


def _post(url: str, body: dict) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read())


def _script(name: str, *args: str, timeout: float) -> tuple[int, dict]:
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / name), *args], capture_output=True, text=True, timeout=timeout)
    print(run.stdout, run.stderr[-6000:])  # the figures and the tool's report, in the test log
    return run.returncode, json.loads(run.stdout)


def test_openapi_json_describes_the_routes_with_our_error_body(server):
    schema = _get(server.base_url + "/openapi.json")
    assert set(schema["paths"]) == {"/health", "/v1/models", "/v1/completions", "/v1/chat/completions"}
    completions = schema["paths"]["/v1/completions"]["post"]
    assert set(completions["responses"]) == {"200", "400", "404", "500"}  # not FastAPI's 422
    assert completions["responses"]["400"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorResponse")
    assert completions["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith("/CompletionResponse")
    request = schema["components"]["schemas"]["CompletionRequest"]
    assert request["additionalProperties"] is False and "echo" in request["properties"]
    assert "HTTPValidationError" not in schema["components"]["schemas"]


@pytest.fixture(scope="module")
def reference(tiny_target):
    from vibeserve_ray.reference import TransformersReference

    return TransformersReference(tiny_target.model_dir())


@pytest.mark.parametrize("max_tokens", [0, 1], ids=["max_tokens_0", "max_tokens_1"])
def test_echo_logprobs_score_the_prompt_as_the_reference_does(server, tiny_target, reference, max_tokens):
    """lm-evaluation-harness's loglikelihood request: echo, logprobs=1, temperature 0."""
    file = tiny_target.path(tiny_target.spec.checker.prompts)
    prompts = [json.loads(line)["prompt"] for line in file.read_text().splitlines() if line.strip()][:6]
    tolerance = tiny_target.spec.checker.logprob_tolerance
    for text in prompts:
        out = _post(server.base_url + "/v1/completions", {"model": tiny_target.name, "prompt": text, "max_tokens": max_tokens, "echo": True,
                                                          "logprobs": 1, "temperature": 0, "return_token_ids": True})
        choice, ids = out["choices"][0], out["prompt_token_ids"]
        lp = choice["logprobs"]
        assert choice["text"].startswith(text) and len(lp["token_logprobs"]) == len(ids) + max_tokens
        assert out["usage"]["completion_tokens"] == max_tokens == len(choice["token_ids"])
        want = reference.score(ids)
        assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
        assert max(abs(g - w) for g, w in zip(lp["token_logprobs"][1:len(ids)], want[1:])) <= tolerance
        for chosen, top in zip(lp["token_logprobs"][1:], lp["top_logprobs"][1:]):  # the chosen token and the most likely one
            assert 1 <= len(top) <= 2 and chosen in top.values() and max(top.values()) >= chosen


def test_fuzzing_from_the_schema_gets_no_server_error_and_no_hang(server):
    code, result = _script("fuzz.py", "--url", server.base_url, "--max-examples", "150", timeout=600)
    assert result["requests"] >= 1000, result
    assert result["server_errors"] == 0 and result["network_errors"] == 0, result
    assert result["by_status"].get("200", 0) >= 200, "fuzzed requests must reach the engine, not only the validator"
    assert code == 0 and result["schemathesis_passed"], result
    assert server.failure() is None


def test_soak_keeps_memory_flat_and_leaves_no_request_in_flight():
    code, result = _script("soak.py", "--duration", "12", "--warmup", "3", timeout=300)
    kinds = result["by_kind"]
    assert kinds["disconnect_mid_stream"].get("dropped") and kinds["abandoned_before_answer"].get("abandoned")
    assert kinds["invalid_utf8"] == {"400": kinds["invalid_utf8"]["400"]} and kinds["score_prompt"].get("200")
    assert result["server_errors"] == 0 and result["hung"] == 0 and result["in_flight_after"] == 0, result
    assert result["rss_mib"]["ratio"] < 1.05, result
    assert code == 0 and result["passed"]


def test_soak_catches_an_engine_that_leaks(tmp_path):
    """The negative control: an engine keeping 2 MiB per request grows past the bound."""
    import shutil

    from conftest import TEST_CANDIDATES

    shutil.copytree(TEST_CANDIDATES / "leaky", tmp_path / "leaky")
    code, result = _script("soak.py", "--candidate", str(tmp_path / "leaky"), "--duration", "10", "--warmup", "2", timeout=300)
    assert code == 1 and not result["passed"] and result["rss_mib"]["ratio"] > 1.05, result
    assert result["server_errors"] == 0 and result["in_flight_after"] == 0
