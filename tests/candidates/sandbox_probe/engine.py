"""Tries, from inside create_engine, what a candidate must not be able to do, and prints
one `PROBE {json}` line in its log saying what happened (then serves like `echo`).
Forking past the process limit is tried by tests/candidates/fork_bomb."""

import glob
import json
import os
import socket
from pathlib import Path

from vibeserve_ray.candidate import TokenOut


def attempt(action):
    try:
        return "done: " + str(action())
    except Exception as exc:  # noqa: BLE001 - the refusal is what we report
        return f"refused: {type(exc).__name__}: {exc}"


def connect(host, port):
    with socket.create_connection((host, port), timeout=2):
        return f"connected to {host}:{port}"


def api_keys_seen():
    """Names of *_API_KEY variables in this process's environment or any /proc/*/environ it can read."""
    names = {k for k in os.environ if k.endswith("_API_KEY")}
    for path in glob.glob("/proc/[0-9]*/environ"):
        try:
            names |= {e.split(b"=")[0].decode() for e in open(path, "rb").read().split(b"\0") if b"_API_KEY=" in e}
        except OSError:
            pass
    return sorted(names)


def create_engine(model_dir, device, knobs):
    here = Path(__file__).resolve().parent
    report = {
        "host_loopback": attempt(lambda: connect("127.0.0.1", int(knobs["host_port"]))),
        "outside": attempt(lambda: connect("1.1.1.1", 53)),
        "home_file": attempt(lambda: Path(knobs["home_file"]).read_text()),
        "target_file": attempt(lambda: Path(knobs["target_file"]).read_text()[:20]),
        "write_model": attempt(lambda: (Path(model_dir) / "probe.txt").write_text("x")),
        "write_candidate": attempt(lambda: (here / "probe.txt").write_text("x")),
        "write_tmp": attempt(lambda: Path("/tmp/probe.txt").write_text("x")),
        "api_keys": api_keys_seen(),
        "uid": os.getuid(),
    }
    print("PROBE " + json.dumps(report), flush=True)
    return ProbeEngine()


class ProbeEngine:
    async def generate(self, request):
        for i in range(request.max_tokens):
            yield TokenOut(request.prompt_token_ids[i % len(request.prompt_token_ids)])

    async def close(self):
        pass
