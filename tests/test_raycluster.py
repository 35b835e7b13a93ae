"""Joining a head by address where Ray's token authentication is on by default.

Ray >= 2.60 starts a head with token auth whenever ~/.ray/auth_token exists (any local
`ray.init` writes one), but a driver joining by explicit address does not send it
unless told: `vibeserve deploy --detach` and `search --address` on the same machine
were refused. The conftest disables auth for every other test; this one restores the
default a user has, in a HOME of its own."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

from search_helpers import RayHead

PROBE = "import sys, ray; from vibeserve_ray import raycluster; raycluster.join(sys.argv[1]); print(int(ray.cluster_resources()['CPU']))"
PLAIN = "import sys, ray; ray.init(address=sys.argv[1]); print(int(ray.cluster_resources()['CPU']))"


def test_join_sends_the_local_token_to_a_head_that_requires_it(tmp_path):
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text(uuid.uuid4().hex)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")} | {"HOME": str(tmp_path)}
    head = RayHead(num_cpus=1, env=env, status_env=env | {"RAY_AUTH_MODE": "token"})
    try:
        # a refused driver retries its GCS connection once a second, 20 times by default: 2 say the same
        plain = subprocess.run([sys.executable, "-c", PLAIN, head.address], env=env | {"RAY_gcs_server_port_wait_time_s": "2"},
                               capture_output=True, text=True, timeout=120)
        assert plain.returncode != 0 and "auth" in plain.stderr.lower(), "the head does not require the token: this test shows nothing"
        joined = subprocess.run([sys.executable, "-c", PROBE, head.address], env=env, capture_output=True, text=True, timeout=120)
        assert joined.returncode == 0, joined.stderr[-2000:]
        assert joined.stdout.strip().splitlines()[-1] == "1"
    finally:
        head.stop()


def test_a_ray_started_here_gets_the_serving_environment_and_its_own_haproxy_ports(monkeypatch):
    from vibeserve_ray import raycluster

    for name in (*raycluster.RAY_ENV, *raycluster.HAPROXY_PORTS, raycluster.CHOSEN_ENV):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RAY_worker_niceness", "15")  # the user's choice stays
    monkeypatch.setenv("RAY_SERVE_HAPROXY_STATS_PORT", "18404")
    raycluster.set_ray_env()
    assert os.environ["RAY_SERVE_ENABLE_HA_PROXY"] == "1" and os.environ["RAY_worker_niceness"] == "15"
    first = {name: os.environ[name] for name in raycluster.HAPROXY_PORTS}
    raycluster.set_ray_env()  # the next Ray this process starts: fresh ports, the user's kept
    second = {name: os.environ[name] for name in raycluster.HAPROXY_PORTS}
    assert first["RAY_SERVE_HAPROXY_STATS_PORT"] == second["RAY_SERVE_HAPROXY_STATS_PORT"] == "18404"
    assert first != second and all(0 < int(port) < 65536 for port in (*first.values(), *second.values()))
    # a process started from here (the CLI a test runs, `ray start`) chooses its own again, the user's kept
    child = subprocess.run([sys.executable, "-c", "import os; from vibeserve_ray import raycluster as r; r.set_ray_env(); "
                            "print(*(os.environ[n] for n in r.HAPROXY_PORTS))"], capture_output=True, text=True, check=True)
    third = dict(zip(raycluster.HAPROXY_PORTS, child.stdout.split()))
    assert third["RAY_SERVE_HAPROXY_STATS_PORT"] == "18404"
    assert all(third[n] != second[n] for n in raycluster.HAPROXY_PORTS if n != "RAY_SERVE_HAPROXY_STATS_PORT")
