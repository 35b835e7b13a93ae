"""What candidate code may see of the environment: the allow-list, not the host's credentials.

Credentials of many shapes are set in this process's environment; real candidates then
run through the sandbox (and unconfined, where a target allows it) and what they see is
read back from their log and from /proc.
"""

from __future__ import annotations

import json
import sys
import uuid

import psutil
import pytest

from vibeserve_ray import sandbox
from vibeserve_ray.candidate import load_candidate
from vibeserve_ray.inner.judge.scan import ENV_REASON, scan_python
from vibeserve_ray.runner import Limits, start_candidate
from vibeserve_ray.sandbox.env import candidate_env, may_see
from vibeserve_ray.seed import materialise_seed

MARK = uuid.uuid4().hex[:12]
CREDENTIALS = {
    "DATABASE_URL": f"postgres://app:pw-{MARK}-1@db.internal:5432/prod",
    "AWS_ACCESS_KEY_ID": f"AKIA{MARK}2",
    "AWS_SECRET_ACCESS_KEY": f"wJalrXUtnFEMI-{MARK}-3",
    "GOOGLE_APPLICATION_CREDENTIALS": f"/secrets/gcp-{MARK}-4.json",
    "AZURE_CLIENT_SECRET": f"azure-{MARK}-5",
    "GITHUB_PAT": f"ghp_{MARK}6",
    "HF_TOKEN": f"hf_{MARK}7",
    "SLACK_WEBHOOK_URL": f"https://hooks.slack.com/services/T0/B0/{MARK}8",
    "my_password": f"hunter-{MARK}-9",
    "REDIS_URL": f"redis://:pw-{MARK}-10@cache.internal:6379/0",
    "ANTHROPIC_API_KEY": f"sk-ant-{MARK}-11",
    "SSH_AUTH_SOCK": f"/tmp/ssh-{MARK}-12/agent.1",
    "SENTRY_DSN": f"https://{MARK}13@o1.ingest.sentry.io/1",
    "PGPASSWORD": f"pg-{MARK}-14",
    "KUBECONFIG": f"/home/ops/.kube/config-{MARK}-15",
}


@pytest.fixture
def credentials(monkeypatch):
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("OMP_NUM_THREADS", "2")  # allow-listed: passed on as it is
    return CREDENTIALS


def _start(target, candidate, tmp_path, **limits):
    return start_candidate(load_candidate(candidate), target.model_dir(), target.tokenizer_dir(), target.served_name, "cpu",
                           Limits(**{"startup_timeout_s": 120, "memory_mb": 3072, **limits}), tmp_path / "work")


def _assert_only_the_allow_list(seen: dict[str, str], where: str) -> None:
    assert seen, f"{where}: no environment read back"
    outside = sorted(k for k in seen if not may_see(k))
    assert not outside, f"{where} saw variables outside the allow-list: {outside}"
    assert MARK not in json.dumps(seen), f"{where} saw a credential's value"


@pytest.mark.parametrize("policy", ["sandbox", "unconfined"])
def test_a_candidate_sees_only_the_allow_list_and_no_credential(policy, credentials, tiny_target, test_candidate, tmp_path, monkeypatch):
    if policy == "unconfined":  # [limits] sandbox = "best-effort" on a machine without a sandbox
        monkeypatch.setenv(sandbox.FORCE_ENV, "none")
    sandbox.probe.cache_clear()
    try:
        with _start(tiny_target, test_candidate("env_spy"), tmp_path, sandbox="best-effort") as proc:
            log = proc.log_path.read_text()
            assert proc.failure() is None
            assert bool(proc.sandbox_backend) == (policy == "sandbox")
    finally:
        sandbox.probe.cache_clear()
    [line] = [x for x in log.splitlines() if x.startswith("ENV ")]
    seen = json.loads(line.removeprefix("ENV "))
    _assert_only_the_allow_list(seen, "the candidate")
    assert not set(credentials) & set(seen)
    assert MARK not in log, "a credential's value reached the candidate's log"
    assert seen["OMP_NUM_THREADS"] == "2" and seen["PYTHONUNBUFFERED"] == "1"


def test_engine_worker_processes_inherit_only_the_allow_list(credentials, tiny_target, tmp_path):
    """The seed's step loop in worker processes of its own: each one's environment, from /proc."""
    seed = materialise_seed(tmp_path / "seed", design={"scheduler": "continuous", "kv_cache": "slab", "step_loop": "process"},
                            knobs={"engine_workers": 2})
    with _start(tiny_target, seed, tmp_path) as proc:
        tree = [psutil.Process(proc.proc.pid), *psutil.Process(proc.proc.pid).children(recursive=True)]
        environs = {p.pid: (p.cmdline(), p.environ()) for p in tree}
    workers = [pid for pid, (cmd, _) in environs.items() if any(a.endswith("engine_process") for a in cmd)]
    assert len(workers) == 2, [cmd for cmd, _ in environs.values()]
    for pid, (cmd, env) in environs.items():
        _assert_only_the_allow_list(env, " ".join(cmd[:4]))


def test_sandboxed_commands_see_only_the_allow_list_and_what_the_caller_passes(credentials):
    show = [sys.executable, "-c", "import json, os; print(json.dumps(dict(os.environ)))"]
    result = sandbox.run(show, sandbox.View(), policy="best-effort", env={"WORKSPACE_NOTE": "given"})
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    assert seen.pop("WORKSPACE_NOTE") == "given"  # passed explicitly by the caller
    _assert_only_the_allow_list(seen, "a sandboxed command")


def test_the_allow_list_keeps_what_the_engine_needs_and_drops_the_rest():
    host = {"PATH": "/usr/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "CUDA_VISIBLE_DEVICES": "1", "MKL_NUM_THREADS": "4",
            "PYTHONPATH": "/opt/lib", "HOME": "/root", "RAY_ADDRESS": "10.0.0.1:6379", "VIBESERVE_CACHE": "/data", **CREDENTIALS}
    env = candidate_env({"TMPDIR": "/scratch"}, host=host)
    assert {k: env[k] for k in ("PATH", "LANG", "LC_ALL", "CUDA_VISIBLE_DEVICES", "MKL_NUM_THREADS")} == {
        k: host[k] for k in ("PATH", "LANG", "LC_ALL", "CUDA_VISIBLE_DEVICES", "MKL_NUM_THREADS")}
    assert env["PYTHONPATH"].endswith("/opt/lib") and env["PYTHONPATH"] != "/opt/lib"  # the package's root first
    assert env["TMPDIR"] == "/scratch" and env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert not {"HOME", "RAY_ADDRESS", "VIBESERVE_CACHE", *CREDENTIALS} & set(env)


@pytest.mark.parametrize("read,flagged", [
    ('os.environ.get("DATABASE_URL")', True),
    ('os.environ["AWS_SECRET_ACCESS_KEY"]', True),
    ('os.getenv("my_password")', True),
    ('os.getenv("VIBESERVE_CACHE")', True),
    ("os.environ.get(name)", True),  # a computed name could be any
    ('os.environ.get("OMP_NUM_THREADS")', False),
    ('os.environ["CUDA_VISIBLE_DEVICES"]', False),
    ('os.getenv("TMPDIR")', False),
])
def test_the_scan_flags_reading_a_variable_outside_the_allow_list(read, flagged):
    found = scan_python(f"import os\nname = 'X'\nvalue = {read}\n", 0)
    assert ((3, ENV_REASON) in found) == flagged, found
