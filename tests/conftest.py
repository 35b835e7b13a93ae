"""Shared fixtures: the generated tiny checkpoints, the tiny target, candidate dirs."""

from __future__ import annotations

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
TINY_TARGET = ROOT / "targets" / "tiny-llama-cpu"
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


@pytest.fixture
def test_candidate(tmp_path):
    """Copies a candidate from tests/candidates into tmp_path (so its runs leave no files in the repo)."""

    def make(name: str) -> Path:
        dest = tmp_path / name
        shutil.copytree(TEST_CANDIDATES / name, dest)
        return dest

    return make


def run_cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """Runs `vibeserve ARGS` as a user would, in a fresh process."""
    return subprocess.run([sys.executable, "-m", "vibeserve_ray.cli", *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT)
