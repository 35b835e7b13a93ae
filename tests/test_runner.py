"""The candidate runner: untrusted candidates end in structured failures, never hangs."""

from __future__ import annotations

import asyncio
import os
import time

import aiohttp
import psutil
import pytest

from vibeserve_ray.candidate import load_candidate
from vibeserve_ray.runner import CandidateFailed, Limits, start_candidate


def _start(target, path, tmp_path, **limits):
    return start_candidate(load_candidate(path), target.model_dir(), target.tokenizer_dir(), target.served_name, "cpu",
                           Limits(**{"startup_timeout_s": 60, "request_timeout_s": 5, "memory_mb": 2048, **limits}), tmp_path / "work")


def _gone(pid: int) -> bool:
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return True
    return not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


async def _complete(base_url: str, model: str, timeout: float) -> dict:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as s:
        async with s.post(base_url + "/v1/completions", json={"model": model, "prompt": [5, 6, 7], "max_tokens": 4}) as r:
            return await r.json()


def test_candidate_raising_at_import_is_a_startup_failure(tiny_target, test_candidate, tmp_path):
    t0 = time.monotonic()
    with pytest.raises(CandidateFailed) as info:
        _start(tiny_target, test_candidate("import_error"), tmp_path)
    failure = info.value.failure
    assert failure.phase == "startup"
    assert "broken at import" in failure.log_tail
    assert time.monotonic() - t0 < 60


def test_startup_timeout_kills_a_slow_candidate(tiny_target, test_candidate, tmp_path):
    with pytest.raises(CandidateFailed) as info:
        _start(tiny_target, test_candidate("echo"), tmp_path, startup_timeout_s=0.5)
    assert info.value.failure.phase == "startup"
    assert "not healthy within" in info.value.failure.reason


def test_hung_candidate_times_out_and_leaves_no_process(tiny_target, test_candidate, tmp_path):
    proc = _start(tiny_target, test_candidate("hang"), tmp_path, request_timeout_s=2)
    pid = proc.proc.pid
    with proc:
        t0 = time.monotonic()
        with pytest.raises(asyncio.TimeoutError):
            asyncio.run(_complete(proc.base_url, proc.served_name, proc.limits.request_timeout_s))
        assert time.monotonic() - t0 < 10
        failure = proc.explain("check", "request timed out")
        assert failure.phase == "check"
    assert _gone(pid)


def test_memory_hog_is_killed_at_its_limit(tiny_target, test_candidate, tmp_path):
    proc = _start(tiny_target, test_candidate("memory_hog"), tmp_path, memory_mb=1500, request_timeout_s=30)
    pid = proc.proc.pid
    with proc:
        t0 = time.monotonic()
        with pytest.raises((aiohttp.ClientError, asyncio.TimeoutError)):
            asyncio.run(_complete(proc.base_url, proc.served_name, 30))
        failure = proc.explain("check", "request failed")
        assert failure.phase == "memory", failure
        assert "1500 MiB" in failure.reason
        assert time.monotonic() - t0 < 30
    assert _gone(pid)
