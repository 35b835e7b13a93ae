"""The Serve config (ServeDeploySchema) that runs a chosen candidate with the serving options.

One description for both ways of deploying: `--config-only` saves this dict for `serve
deploy`, and `launch.run` runs the same dict, so a config file and a direct deploy cannot
drift apart. Configs carry the name of the API-key variable, never the key.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from vibeserve_ray.deploy.args import API_KEY_ENV_VAR, DEPLOYMENT_NAME, IMPORT_PATH
from vibeserve_ray.errors import BadInput
from vibeserve_ray.target import Target

CLI = "command line"
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Each replica process's environment (in the application's runtime_env, so Serve on any
# cluster applies it), measured with benchmarks/serve_overhead.py (the best tiny-model
# design on 2 cores, CPU-s per 1,000 tokens served, medians of 3 interleaved rounds):
REPLICA_ENV = {
    # Serve runs user code on an event loop in a thread of its own by default, and every
    # message of a streamed response then crosses from that loop to the one serving HTTP;
    # on one loop the replica took 0.16 against 0.21 (py-spy: 0.11 cores against 0.22).
    # The replica never blocks its loop (its engine starts and stops in threads).
    "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0",
    # Serve's own logs and access log go to the replica's log file only, written in batches
    # of 1,000 records (an error at once), not line by line and again through stderr to Ray's
    # log monitor and the driver's console: with the above, 0.14, and Ray's other
    # processes 0.08 against 0.13; without them, the same loop made the first token later.
    "RAY_SERVE_LOG_TO_STDERR": "0",
    "RAY_SERVE_REQUEST_PATH_LOG_BUFFER_SIZE": "1000",
}


@dataclass(frozen=True)
class ServeOptions:
    """How to serve: address, auth and the Serve knobs; None takes the target's default."""

    host: str = "127.0.0.1"
    port: int = 8000
    api_key_env: str | None = None
    max_ongoing_requests: int | None = None
    max_queued_requests: int | None = None
    min_replicas: int | None = None
    max_replicas: int | None = None
    stream_interval_ms: float | None = None

    def validate(self) -> None:
        if not 0 < self.port < 65536:
            raise BadInput(CLI, "--port", f"{self.port} is not a TCP port")
        if self.api_key_env is not None and not ENV_NAME.match(self.api_key_env):
            raise BadInput(CLI, "--api-key-env", f"{self.api_key_env!r} is not an environment variable name")
        if self.max_ongoing_requests is not None and self.max_ongoing_requests < 1:
            raise BadInput(CLI, "--max-ongoing-requests", "must be at least 1")
        if self.max_queued_requests is not None and self.max_queued_requests < -1:
            raise BadInput(CLI, "--max-queued-requests", "must be -1 (unbounded) or more")
        if self.min_replicas is not None and self.min_replicas < 0:
            raise BadInput(CLI, "--min-replicas", "must be at least 0")
        if self.max_replicas is not None and self.max_replicas < max(1, self.min_replicas or 0):
            raise BadInput(CLI, "--max-replicas", "must be at least 1 and at least --min-replicas")
        if self.stream_interval_ms is not None and not 0 <= self.stream_interval_ms <= 1000:
            raise BadInput(CLI, "--stream-interval-ms", "must be between 0 and 1000")


@dataclass(frozen=True)
class Chosen:
    """What to deploy: a candidate directory (or `seed`), its knobs, and its target."""

    candidate: str
    knobs: dict[str, Any]
    target: Target
    label: str


def serve_config(chosen: Chosen, opts: ServeOptions) -> dict:
    """The Serve config (ServeDeploySchema) that runs `chosen` with `opts`."""
    opts.validate()
    t, hw, bench = chosen.target, chosen.target.spec.hardware, chosen.target.spec.benchmark
    args: dict[str, Any] = {"candidate": chosen.candidate, "served_name": t.served_name, "device": hw.device}
    # The engine process gets the limits it was evaluated under.
    args |= {"memory_mb": t.spec.limits.memory_mb, "startup_timeout_s": t.spec.limits.startup_timeout_s, "sandbox": t.spec.limits.sandbox}
    if opts.stream_interval_ms is not None:
        args["stream_interval_ms"] = opts.stream_interval_ms
    m = t.spec.model
    if m.generator:
        args |= {"generator": m.generator, "generator_seed": m.seed}
    else:
        args["model_path"] = str(t.model_dir())
        if m.tokenizer:
            args["tokenizer_path"] = str(t.tokenizer_dir())
    runtime_env: dict[str, Any] = {"env_vars": dict(REPLICA_ENV)}
    if chosen.candidate != "seed":
        # The replica runs in the candidate's tree; local:// means it is already on every
        # node (this machine, a shared file system or the image); else upload it and put its URI here.
        runtime_env["working_dir"] = "local://" + chosen.candidate
        args["candidate"] = "."
    if opts.api_key_env:
        runtime_env["env_vars"][API_KEY_ENV_VAR] = opts.api_key_env
    ongoing = opts.max_ongoing_requests or bench.concurrency  # the concurrency it was measured at
    queued = opts.max_queued_requests if opts.max_queued_requests is not None else 2 * ongoing
    actor: dict[str, Any] = {"num_cpus": hw.num_cpus, "num_gpus": hw.num_gpus}
    if hw.accelerator_type:
        actor["accelerator_type"] = hw.accelerator_type
    deployment: dict[str, Any] = {"name": DEPLOYMENT_NAME}
    if opts.min_replicas is not None or opts.max_replicas is not None:
        low = opts.min_replicas if opts.min_replicas is not None else 1
        deployment["autoscaling_config"] = {"min_replicas": low, "max_replicas": opts.max_replicas or max(low, 1),
                                            "target_ongoing_requests": max(1, ongoing * 3 // 4)}
    else:
        deployment["num_replicas"] = 1
    deployment |= {
        "max_ongoing_requests": ongoing,
        "max_queued_requests": queued,
        # 503 is OpenAI's "overloaded, retry later"; clients back off on Retry-After.
        "backpressure_config": {"status_code": 503, "retry_after_s": 1},
        "ray_actor_options": actor,
        "user_config": {"knobs": dict(sorted(chosen.knobs.items()))},
    }
    app = {"name": t.served_name, "route_prefix": "/", "import_path": IMPORT_PATH}
    app["runtime_env"] = runtime_env
    app |= {"args": args, "deployments": [deployment]}
    return {"http_options": {"host": opts.host, "port": opts.port}, "applications": [app]}


def config_yaml(config: dict) -> str:
    header = "# Written by `vibeserve deploy --config-only`; run it with `serve deploy FILE` on a Ray cluster.\n"
    return header + yaml.safe_dump(config, sort_keys=False)


def write_config(config: dict, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(config_yaml(config))
    return path


def base_url(config: dict) -> str:
    http = config["http_options"]
    return f"http://{http['host']}:{http['port']}"
