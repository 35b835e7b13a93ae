"""`vibeserve deploy`: a chosen candidate as a Ray Serve application, or its config file.

One description for both ways: `serve_config` writes what to run as a Serve config (the
dict `--config-only` saves and `serve deploy` accepts), and `deploy` runs that same dict
with `serve.run`, so a config file and a direct deploy cannot drift apart. Configs carry
the name of the API-key variable, never the key.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import yaml

from vibeserve_ray import progress, raycluster
from vibeserve_ray.candidate import load_candidate, resolve_candidate
from vibeserve_ray.errors import BadInput
from vibeserve_ray.serve.deployment import API_KEY_ENV_VAR, DEPLOYMENT_NAME, IMPORT_PATH, build
from vibeserve_ray.target import Target, load_target

CLI = "command line"
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
PACKAGE_ROOT = Path(__file__).resolve().parent.parent


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


def choose(run: str | None, commit: str | None, candidate: str | None, target: str | None) -> Chosen:
    """RUN's best validated candidate (or --commit), or --candidate with --target."""
    if run and candidate:
        raise BadInput(CLI, "--candidate", "give a run directory or --candidate, not both")
    if commit and not run:
        raise BadInput(CLI, "--commit", "needs a run directory")
    if candidate:
        if not target:
            raise BadInput(CLI, "--target", "required with --candidate")
        tgt = load_target(target)
        if candidate == "seed":
            with tempfile.TemporaryDirectory() as tmp:
                knobs = resolve_candidate("seed", Path(tmp)).knobs
            return Chosen("seed", knobs, tgt, "the seed engine")
        spec = load_candidate(candidate)
        return Chosen(str(spec.path), spec.knobs, tgt, str(spec.path))
    if not run:
        raise BadInput(CLI, "run", "give a run directory, or --candidate PATH --target PATH")
    return _from_run(Path(run), commit, target)


def _from_run(run: Path, commit: str | None, target: str | None) -> Chosen:
    import git

    from vibeserve_ray.search.remeasure import served_knobs
    from vibeserve_ray.search.state import RunRepo
    from vibeserve_ray.search.status import run_status

    status = run_status(run)
    if commit is None:
        if status["best"] is None:
            raise BadInput(str(run), "best", "no validated candidate in this run (pass --commit to deploy another)")
        commit = status["best"]["commit"]
    repo = RunRepo(run / "repo")
    try:
        sha = repo.repo.git.rev_parse("--verify", f"{commit}^{{commit}}")
    except git.GitCommandError:
        raise BadInput(str(run / "repo"), "--commit", f"{commit!r} is not a commit of this run") from None
    target = target or status.get("target")
    if not target:
        raise BadInput(str(run / "search.json"), "target", "not recorded; pass --target")
    tgt = load_target(target)
    # Exported once per commit and reused: a tree is immutable, and a running deployment reads it.
    dest = run.resolve() / "deploy" / sha
    if not (dest / "candidate.toml").is_file():
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{sha[:12]}-", dir=dest.parent))
        repo.export(sha, tmp)
        try:
            tmp.rename(dest)
        except OSError:  # another deploy exported it first
            shutil.rmtree(tmp, ignore_errors=True)
    spec = load_candidate(dest)
    verdict = next((e["verdict"] for e in status["leaderboard"] if e["commit"] == sha), "not evaluated")
    label = f"commit {sha[:12]} of {run}" + ("" if verdict == "validated" else f" (NOT validated: {verdict})")
    knobs = served_knobs(run, sha)  # what the search's re-measure found fastest through Serve
    if knobs is None:
        return Chosen(str(spec.path), spec.knobs, tgt, label)
    return Chosen(str(spec.path), knobs, tgt, label + (", knobs as re-measured through Ray Serve" if knobs != spec.knobs else ""))


def with_knobs(chosen: Chosen, items: list[str]) -> Chosen:
    """`chosen` with `NAME=VALUE` knob overrides, each parsed as the type of the value it
    replaces (a candidate's knobs are its own: no design space is needed)."""
    from dataclasses import replace

    from vibeserve_ray.design_space import parse_assignments

    knobs = dict(chosen.knobs)
    for name, text in parse_assignments(items, CLI, "knobs").items():
        if name not in knobs:
            raise BadInput(CLI, f"--knobs {name}", f"unknown knob (the candidate has {', '.join(sorted(knobs))})")
        knobs[name] = _parse_like(knobs[name], text, name)
    return replace(chosen, knobs=knobs)


def _parse_like(current: Any, text: str, name: str) -> Any:
    try:
        if isinstance(current, bool):
            if text.lower() not in ("true", "false"):
                raise ValueError
            return text.lower() == "true"
        return type(current)(text)
    except ValueError:
        raise BadInput(CLI, f"--knobs {name}", f"{text!r} is not a valid {type(current).__name__}") from None


# --- the Serve config ----------------------------------------------------------------------


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
    runtime_env: dict[str, Any] = {}
    if chosen.candidate != "seed":
        # The replica runs in the candidate's tree; local:// means it is already on every
        # node (this machine, a shared file system or the image); else upload it and put its URI here.
        runtime_env["working_dir"] = "local://" + chosen.candidate
        args["candidate"] = "."
    if opts.api_key_env:
        runtime_env["env_vars"] = {API_KEY_ENV_VAR: opts.api_key_env}
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
    if runtime_env:
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


def application(config: dict):
    """(name, Application) for the config's one application, its options applied in code."""
    app = config["applications"][0]
    options = {k: v for k, v in app["deployments"][0].items() if k != "name"}
    if app.get("runtime_env"):
        options["ray_actor_options"] = {**options.get("ray_actor_options", {}), "runtime_env": app["runtime_env"]}
    return app["name"], build(app["args"], options)


# --- running it ------------------------------------------------------------------------------


def base_url(config: dict) -> str:
    http = config["http_options"]
    return f"http://{http['host']}:{http['port']}"


def deploy(config: dict, *, detach: bool = False, say: Callable[[str], None] = print) -> int:
    """Runs the config's application: 0 once healthy (--detach) or after Ctrl-C; 1 if unhealthy."""
    from ray import serve

    owned = _connect(detach, say)
    name, app = application(config)
    url = base_url(config)
    try:
        serve.start(http_options=config["http_options"])
        progress.task(f"deploy: starting {name!r} (replicas, engine processes, health checks)", None)
        try:
            serve.run(app, name=name, route_prefix="/")
        except RuntimeError as exc:
            say(f"deploy: application {name!r} is unhealthy: {_last_line(exc)}")
            return _stop(owned, name, 1)
        if not _healthy(url.replace("//0.0.0.0:", "//127.0.0.1:") + "/health", 30):
            say(f"deploy: {url}/health does not answer (is Serve on this cluster listening elsewhere? see `serve config`)")
            return _stop(owned, name, 1)
        progress.done()
        print(f"{url}/v1", flush=True)
        if detach:
            say(f"deploy: {name!r} is running on the cluster; `serve status` to watch it, `serve shutdown` to stop it")
            return 0
        say("deploy: serving; Ctrl-C to shut the application down")
        # SIGINT too: a process started in the background (`cmd &`, nohup) inherits it ignored,
        # and Python then leaves it so: Ctrl-C or `kill -INT` would be lost and the app left up.
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, _interrupt)
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        say(f"deploy: shutting {name!r} down")
        return _stop(owned, name, 0)
    finally:
        import ray

        if owned != "caller" and ray.is_initialized():
            ray.shutdown()


def _connect(detach: bool, say: Callable[[str], None]) -> str:
    """Who owns Ray: 'caller' (already connected), 'cluster' (RAY_ADDRESS, or a head started
    for --detach) or 'embedded' (a local Ray that ends with this process). No guessing of a
    running cluster: a stale /tmp/ray record makes Ray wait on a dead one for minutes."""
    import ray

    if ray.is_initialized():
        return "caller"
    # Workers must import vibeserve_ray even when it runs from a source checkout.
    os.environ["PYTHONPATH"] = os.pathsep.join([str(PACKAGE_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    address = os.environ.get("RAY_ADDRESS")
    if not address and detach:
        address = _start_head(say)
    endpoints = raycluster.join(address) if address else raycluster.start_local()
    say(f"deploy: {endpoints.describe()}")
    return "cluster" if address else "embedded"


def _start_head(say: Callable[[str], None]) -> str:
    """A detached app needs a cluster that outlives this process: a local `ray start --head`."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    subprocess.run(["ray", "start", "--head", f"--port={port}", "--disable-usage-stats"], check=True, capture_output=True)
    say(f"deploy: started a Ray head at 127.0.0.1:{port} (stop it with `ray stop`)")
    return f"127.0.0.1:{port}"


def _stop(owned: str, name: str, code: int) -> int:
    from ray import serve

    if owned == "embedded":
        serve.shutdown()
    else:
        serve.delete(name)
    return code


def _healthy(url: str, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    return True
        except OSError:
            pass
        time.sleep(0.5)
    return False


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def _last_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return lines[-1] if lines else type(exc).__name__
