"""The sandbox: candidate code cannot reach the host, read what is not its own, or outgrow its limits."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import psutil
import pytest

from conftest import run_cli
from vibeserve_ray import sandbox
from vibeserve_ray.candidate import load_candidate
from vibeserve_ray.runner import CandidateFailed, Limits, start_candidate


def _use(monkeypatch, backend: str) -> None:
    monkeypatch.setenv(sandbox.FORCE_ENV, backend)
    sandbox.probe.cache_clear()


@pytest.fixture(autouse=True)
def _fresh_probe():
    sandbox.probe.cache_clear()
    yield
    sandbox.probe.cache_clear()


@pytest.fixture(params=sandbox.BACKENDS)
def backend(request, monkeypatch):
    _use(monkeypatch, request.param)
    cap = sandbox.probe()
    if cap.backend != request.param:
        pytest.skip(f"{request.param} cannot confine here: {cap.missing()}")
    return request.param


def _start(target, path: Path, tmp_path: Path, knobs: dict | None = None, **limits):
    base = {"startup_timeout_s": 90, "request_timeout_s": 10, "memory_mb": 3072}
    return start_candidate(load_candidate(path), target.model_dir(), target.tokenizer_dir(), target.served_name, "cpu",
                           Limits(**{**base, **limits}), tmp_path / "work", knobs)


def _probe_report(proc) -> dict:
    [line] = [x for x in proc.log_path.read_text().splitlines() if x.startswith("PROBE ")]
    return json.loads(line.removeprefix("PROBE "))


def test_candidate_cannot_reach_the_host_read_home_see_keys_or_write_the_model(
        backend, tiny_target, test_candidate, tmp_path, monkeypatch):
    monkeypatch.setenv("PROBE_API_KEY", "sk-should-not-leak")
    home_file = Path.home() / f".vibeserve-sandbox-probe-{uuid.uuid4().hex}"
    home_file.write_text("a secret in the home directory")
    listener = socket.create_server(("127.0.0.1", 0))
    knobs = {"host_port": listener.getsockname()[1], "home_file": str(home_file),
             "target_file": str(tiny_target.path(tiny_target.spec.checker.prompts))}
    try:
        with _start(tiny_target, test_candidate("sandbox_probe"), tmp_path, knobs) as proc:
            report = _probe_report(proc)
            assert proc.sandbox_backend == backend and not proc.sandbox_warning
    finally:
        home_file.unlink()
        listener.close()
    for key in ("host_loopback", "outside", "home_file", "target_file", "write_model", "write_candidate"):
        assert report[key].startswith("refused"), (key, report[key])
    assert report["write_tmp"].startswith("done")  # a private /tmp of its own
    assert report["api_keys"] == []
    assert not (tiny_target.model_dir() / "probe.txt").exists()


def test_unconfined_run_is_refused_when_required_and_warned_when_best_effort(tiny_target, test_candidate, tmp_path, monkeypatch):
    _use(monkeypatch, "none")
    with pytest.raises(CandidateFailed) as info:
        _start(tiny_target, test_candidate("echo"), tmp_path)
    failure = info.value.failure
    assert failure.phase == "sandbox" and "\n" not in failure.reason
    assert "bubblewrap" in failure.reason and "best-effort" in failure.reason
    assert sandbox.ensure("best-effort") == sandbox.UNCONFINED
    box = sandbox.confine(["true"], {}, sandbox.View(), sandbox.Rlimits(), "best-effort", tmp_path / "stage")
    assert box.argv == ["true"] and box.warning == sandbox.UNCONFINED


def test_private_tmp_does_not_outlive_the_process(backend, tmp_path):
    write = [sys.executable, "-c", "import pathlib; pathlib.Path('/tmp/left-behind').write_text('x')"]
    read = [sys.executable, "-c", "import pathlib; print(pathlib.Path('/tmp/left-behind').exists())"]
    assert sandbox.run(write, sandbox.View()).returncode == 0
    assert sandbox.run(read, sandbox.View()).stdout.strip() == "False"


def test_agent_commands_write_only_their_workspace(backend, tmp_path):
    workspace = tmp_path / "ws"
    workspace.mkdir()
    package = Path(sandbox.__file__).resolve().parent
    script = (f"import pathlib; pathlib.Path('{workspace}/out.txt').write_text('ok')\n"
              f"pathlib.Path('{tmp_path}/beside.txt').write_text('private')\n"
              f"try:\n    pathlib.Path('{package}/escape.txt').write_text('x')\nexcept OSError as e:\n    print('refused', e.errno)")
    result = sandbox.run([sys.executable, "-c", script], sandbox.View(writable=(workspace,)))
    assert result.returncode == 0, result.stderr
    assert (workspace / "out.txt").read_text() == "ok"
    assert not (tmp_path / "beside.txt").exists()  # went to its private /tmp
    assert not (package / "escape.txt").exists() and "refused" in result.stdout


def test_output_flood_dies_at_the_output_limit(backend, tiny_target, test_candidate, tmp_path):
    with pytest.raises(CandidateFailed) as info:
        _start(tiny_target, test_candidate("output_flood"), tmp_path, output_mb=1)
    assert "its output reached the 1 MiB limit" in info.value.failure.reason, info.value.failure
    assert (tmp_path / "work" / "server.log").stat().st_size <= 1 << 20


def test_disk_flood_fills_only_its_private_tmp(backend, tiny_target, test_candidate, tmp_path):
    with pytest.raises(CandidateFailed) as info:
        _start(tiny_target, test_candidate("disk_flood"), tmp_path, disk_mb=16)
    assert "No space left on device" in info.value.failure.log_tail, info.value.failure
    assert not Path("/tmp/vibeserve-disk-flood").exists()


FORK_UNTIL_REFUSED = """
import os
n, error = 0, ""
try:
    for _ in range(4096):
        if os.fork() == 0:
            os._exit(0)  # a zombie until reaped: it counts, and holds no memory
        n += 1
except OSError as exc:
    error = exc.strerror
print(n, error)
"""


def test_forks_past_the_process_limit_are_refused(backend):
    if not sandbox.probe().process_limit:
        pytest.skip("root, and no writable pids cgroup: nothing limits the process count here")
    result = sandbox.run([sys.executable, "-c", FORK_UNTIL_REFUSED], sandbox.View(), sandbox.Rlimits(processes=64))
    forked, error = result.stdout.split(" ", 1)
    assert int(forked) < 64 and "Resource temporarily unavailable" in error, result


def test_fork_bomb_is_killed_recorded_and_leaves_no_process(backend, tiny_target, test_candidate, tmp_path):
    before = {p.pid for p in psutil.process_iter()}
    with pytest.raises(CandidateFailed) as info:
        _start(tiny_target, test_candidate("fork_bomb"), tmp_path, processes=48, startup_timeout_s=60)
    failure = info.value.failure
    if sandbox.probe().pids_cgroup:
        assert failure.phase == "processes" and "48 processes" in failure.reason, failure
    else:  # held at the rlimit until the memory watchdog or the start-up timeout ends it
        assert failure.phase in ("memory", "startup"), failure
    left = [p for p in psutil.process_iter(["cmdline"]) if p.pid not in before and "fork_bomb" in " ".join(p.info["cmdline"] or [])]
    assert not left


def test_doctor_says_what_the_sandbox_does(backend):
    result = run_cli("doctor", timeout=120)
    assert result.returncode == 0, result.stderr
    assert f"sandbox: {backend}" in result.stdout and "network" in result.stdout


def test_doctor_exits_1_when_nothing_confines():
    result = subprocess.run([sys.executable, "-m", "vibeserve_ray.cli", "doctor"], capture_output=True, text=True, timeout=120,
                            env={**os.environ, sandbox.FORCE_ENV: "none"})
    assert result.returncode == 1 and "sandbox: NONE" in result.stdout


def _cli(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vibeserve_ray.cli", *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **env})


def test_check_refuses_to_run_unconfined_naming_the_field_and_exit_2(tmp_path):
    result = _cli("check", "targets/tiny-llama-cpu", env={sandbox.FORCE_ENV: "none"})
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "limits.sandbox" in result.stderr and "bubblewrap" in result.stderr


def test_best_effort_runs_unconfined_and_says_so_in_the_result(tmp_path, test_candidate):
    from search_helpers import small_target

    target = small_target(tmp_path)
    text = (target / "target.toml").read_text().replace("[limits]\n", '[limits]\nsandbox = "best-effort"\n')
    (target / "target.toml").write_text(text)
    out = tmp_path / "verdict.json"
    result = _cli("check", str(target), "--candidate", str(test_candidate("echo")), "--json", str(out), env={sandbox.FORCE_ENV: "none"})
    assert result.returncode == 1, result.stderr  # echo is no model: FAIL, but it ran
    assert f"WARNING: {sandbox.UNCONFINED}" in result.stdout
    assert json.loads(out.read_text())["sandbox_warning"] == sandbox.UNCONFINED
