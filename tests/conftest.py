"""Shared fixtures: the generated tiny checkpoints, the tiny target, candidate dirs."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

# Ray 2.60's local ray.init() turns token auth on and writes ~/.ray/auth_token; a later
# `ray start --head` then requires the token, which `ray status` does not send. The tests
# start many local clusters: keep them all on one mode (subprocesses inherit this).
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

ROOT = Path(__file__).resolve().parent.parent
TINY_TARGET = ROOT / "targets" / "tiny-llama-cpu"  # a tolerance contract at the bfloat16 tier
EXACT_TARGET = ROOT / "targets" / "tiny-llama-cpu-exact"  # the same, bit-exact to the float32 reference
TEST_CANDIDATES = Path(__file__).resolve().parent / "candidates"


@pytest.fixture(scope="session")
def tiny_models() -> tuple[Path, Path]:
    """Both checkpoints of the tiny target (made once, then cached)."""
    from vibeserve_ray.tinymodel import make_tiny

    return make_tiny(0), make_tiny(1)


@pytest.fixture(scope="session")
def tiny_target(tiny_models):
    from vibeserve_ray.target import load_target

    return load_target(TINY_TARGET)


@pytest.fixture(scope="session")
def watched_search(tmp_path_factory, tiny_models):
    """One small real search (the seed and one candidate, one Optuna trial each, a tuning
    pass of two trials on the best, then the side-by-side re-measure), watched while it
    runs: tests of the search, the tuning pass, the dashboard and the report share it,
    since a real search is the slowest thing the suite does."""
    from search_helpers import small_target, watch_search

    tmp = tmp_path_factory.mktemp("watched")
    # concurrency 4: the judge's load-honesty gate sends 1 + 3 x concurrency requests, and the seed serves one at a time
    target = small_target(tmp, islands=1, population=1, rounds=1, trials=1, num_requests=16, concurrency=4, finalist_trials=2)
    return watch_search(target, tmp / "run", ROOT)


@pytest.fixture
def test_candidate(tmp_path):
    """Copies a candidate from tests/candidates into tmp_path (so its runs leave no files in the repo)."""

    def make(name: str) -> Path:
        dest = tmp_path / name
        shutil.copytree(TEST_CANDIDATES / name, dest)
        return dest

    return make


@contextlib.contextmanager
def serving(front):
    """The HTTP front of `front` served by uvicorn on a free 127.0.0.1 port, in a thread; yields its base URL."""
    import socket
    import threading
    import time

    import uvicorn

    from vibeserve_ray.serve.app import build_app

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(build_app(front), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def run_cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """Runs `vibeserve ARGS` as a user would, in a fresh process."""
    return subprocess.run([sys.executable, "-m", "vibeserve_ray.cli", *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT)


ROPE_LLAMA3 = {
    "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 64
}
def edit(old: str, new: str):
    """An edit of a shipped file's text (for bad-input cases) that fails loudly if the
    file no longer holds `old` exactly once."""

    def apply(text: str) -> str:
        assert text.count(old) == 1, f"the file no longer holds {old!r} exactly once"
        return text.replace(old, new)

    return apply


def make_hf_model(seed: int = 0, **overrides):
    """A small random HF Llama (2 layers) for the engine's unit tests."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=512, hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, rope_theta=500000.0, rope_scaling=dict(ROPE_LLAMA3), **overrides,
    )
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():  # peaked logits: greedy has no near-ties to trip over
        model.lm_head.weight.mul_(50)
    return model


@pytest.fixture(scope="module")
def hf_model():
    """Module-scoped: each test module gets its own model and checkpoint directory."""
    return make_hf_model()


@pytest.fixture(scope="module")
def model_dir(hf_model, tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-llama")
    hf_model.save_pretrained(path)
    return path
